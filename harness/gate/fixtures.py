"""Adapter fixtures in the layouts older releases wrote: `python -m harness.gate.fixtures --out harness/data/adapters`,
run in the older environment (e.g. the gate's layered venv for peft==0.17.1 transformers==4.57.1).

Each generating family's tiny model gets a rank-2 LoRA on its default recipe's targets, with every tensor drawn at
random (lora_B too, so a dropped adapter shows), saved with save_pretrained under <family>/<writer>/, with
written_by.json naming the versions. A few tens of KiB each: they are committed, and the gate and the smoke tier
check that the installed releases load every tensor of them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

RANK = 2


def write_fixture(family_name: str, out: Path, cache_dir: Path) -> Path:
    """Write one family's fixture adapter under out; return its folder."""
    import importlib.metadata as md

    import torch
    from peft import LoraConfig, get_peft_model

    from harness.model import lora, pipeline
    from harness.recipe import default_recipe
    from harness.util.atomic import write_json

    recipe = default_recipe(family_name)
    c = pipeline.case(family_name, "tiny", recipe)
    _, base = pipeline.load_base(c, cache_dir)
    modules = sorted({t.rpartition(".")[2] for t in lora.lora_targets(base, c.family, recipe)})
    versions = {k: md.version(k) for k in ("transformers", "peft", "bitsandbytes", "torch")}
    model = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=modules, lora_dropout=0.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if lora.is_lora_name(name):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    folder = Path(out) / family_name / f"peft-{versions['peft']}-transformers-{versions['transformers']}"
    model.save_pretrained(folder)
    write_json(folder / "written_by.json", versions)
    return folder


def main(argv: list[str] | None = None) -> int:
    """Write the fixtures of every generating family; return the exit status."""
    from harness.families import FAMILIES
    from harness.model.synth import default_cache_dir

    p = argparse.ArgumentParser(prog="python -m harness.gate.fixtures", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the fixtures folder, e.g. harness/data/adapters")
    args = p.parse_args(argv)
    for name, spec in FAMILIES.items():
        if spec.generates:
            print(write_fixture(name, Path(args.out), default_cache_dir()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
