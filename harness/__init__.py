"""qlora-harness: validation and benchmarks for QLoRA (bitsandbytes 4-bit + LoRA) on VLMs and LLMs.

The package is laid out by pipeline stage; a module may import from its own stage and the stages below it,
never from one above (tests/tool/test_layering.py holds every module to this):

    recipe (YAML) + family spec + checkpoint -> model: load, adapt -> checks: audit, inputs, train/generate
        -> measure: probes, estimate, baselines -> tasks: behaviour tasks, seed experiments
        -> gate: two environments compared -> report -> cli, doctor and the pytest plugin
"""

# Bottom to top. Each entry is a module or a package of harness; everything under a package is of its layer.
LAYERS = (
    ("util",),                     # errors, atomic writes, redaction, environment facts, units
    ("families",),                 # the family specs: data
    ("recipe", "literal"),        # recipes: data, validated against the families; literal library calls
    ("model",),                    # build synthetic checkpoints, load in 4-bit, adapt with LoRA, merge, generate
    ("checks",),                   # audit, inputs and placeholders, a training step, checkpointing, adapter round-trip
    ("measure",),                  # memory and time probes, the estimate, baselines, variants, the GPU matrix
    ("tasks",),                    # behaviour tasks, training loops, the seed experiments and their runner
    ("gate",),                     # the regression gate across two environments
    ("report",),                   # reports and plots from run records
    ("cli", "doctor", "plugin", "load"),  # entry points; `load` only re-exports the README's harness.load names
)
