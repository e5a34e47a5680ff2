"""The regression gate: the harness's checks run in a reference and a candidate environment, then compared.
It may import every stage below it (measure for profiles and baselines, checks, the model path, util).

    envs      the two environments: an interpreter, or a venv built from requirement specs (cached)
    collect   runs inside each environment (python -m harness.gate.collect): facts per recipe to JSON
    facts     the checks of one case, through the harness's own audit, lora, train, inputs, generate, adapters
    compare   two fact files -> verdict rows (pass / changed / fail / skipped), a pure function
    verdict   the rows, both sides' versions and notes -> verdict.md and verdict.json, written atomically
    command   `qlora-harness gate`: the above in order; exit 0 pass, 1 regression, 2 bad input
"""
