"""Measurements: module inventories and the NF4 minimum (`memory`), GPU memory and step probes (`probe`), a case's
full profile (`profile`), the arithmetic memory estimate (`estimate`), timing helpers (`timing`), stored baselines
and their comparison (`baselines`), the comparison variants as data (`variants`), the GPU tier's tables (`matrix`)
and the Unsloth backend, which audits and profiles in a child process of its own (`unsloth_backend`). It may
import checks, the model path and below."""
