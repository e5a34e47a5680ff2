"""The estimate's honest test: configurations the GPU records do not hold, estimated and committed before they run.

`python -m harness.measure.held_out` writes results/held-out/estimates.json: each configuration's estimate by part,
the tokens a sample counted by the processor, the commit and the SHA-256 of harness/measure/estimate.py that made
them. `pytest -m gpu tests/gpu/test_held_out.py` then measures each one (one training step after a warm-up, as
every GPU record) and writes its record beside them, under results/held-out/<gpu>/; `qlora-harness report` shows the
committed estimate against the measured peak for these rows apart from the records the estimate was built on.
The smaller models only (Qwen2.5-0.5B, Qwen2-VL-2B, Qwen2.5-VL-3B, CLIP ViT-B/16), one batch size each.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness.util.atomic import write_text

from . import estimate

ROOT = Path(__file__).resolve().parents[2]
ESTIMATES_PATH = ROOT / "results" / "held-out" / "estimates.json"
ESTIMATE_SOURCE = Path(estimate.__file__).resolve()


@dataclass(frozen=True)
class HeldOut:
    """One configuration: a family size, its default recipe with sections replaced, and the batch size measured."""

    name: str
    family: str
    size: str
    changes: dict = field(default_factory=dict)
    batch_size: int = 1

    def recipe(self):
        from harness.recipe import default_recipe

        return default_recipe(self.family).replace(**self.changes) if self.changes else default_recipe(self.family)

    def case(self):
        from harness.model import pipeline

        return pipeline.case(self.family, self.size, self.recipe(), variant=f"held-out-{self.name}")


_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = (
    HeldOut("seq1024", "qwen2.5", "0.5b", {"training": {"seq_len": 1024}}, 2),
    HeldOut("all-linear-r64", "qwen2.5", "0.5b", {"lora": {"r": 64, "alpha": 128, "target_modules": _ALL_LINEAR}}, 2),
    HeldOut("no-gc-seq256", "qwen2.5", "0.5b", {"training": {"gradient_checkpointing": False, "seq_len": 256}}, 2),
    HeldOut("adamw8bit-no-dropout", "qwen2.5", "0.5b",
            {"lora": {"dropout": 0.0}, "training": {"optimizer": "adamw_8bit", "seq_len": 384}}, 4),
    HeldOut("dora", "qwen2.5", "0.5b", {"lora": {"use_dora": True}}, 2),
    HeldOut("image224-bs8", "qwen2-vl", "2b", {"training": {"image_size": 224}}, 8),
    HeldOut("image672", "qwen2-vl", "2b", {"training": {"image_size": 672, "seq_len": 700}}, 2),
    HeldOut("no-gc-image336", "qwen2-vl", "2b", {"training": {"gradient_checkpointing": False, "image_size": 336}}, 2),
    HeldOut("r8-q-v", "qwen2-vl", "2b", {"lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}}, 4),
    HeldOut("image896", "qwen2.5-vl", "3b", {"training": {"image_size": 896, "seq_len": 1100}}, 1),
    HeldOut("mlp-r16", "qwen2.5-vl", "3b",
            {"lora": {"r": 16, "alpha": 32, "target_modules": ["gate_proj", "up_proj", "down_proj"]}}, 2),
    HeldOut("paged8bit-seq1024", "qwen2.5-vl", "3b", {"training": {"optimizer": "paged_adamw_8bit", "seq_len": 1024}},
            2),
    HeldOut("gc-bs64", "clip", "vit-b-16", {"training": {"gradient_checkpointing": True}}, 64),
    HeldOut("text-only-r8-bs48", "clip", "vit-b-16", {"lora": {"r": 8, "alpha": 16,
                                                               "target_roles": ["language_backbone"]}}, 48),
    HeldOut("dora-bs32", "clip", "vit-b-16", {"lora": {"use_dora": True}}, 32),
)


def get(name: str) -> HeldOut:
    """Return a held-out configuration by name; raise naming the known ones."""
    found = {c.name: c for c in CONFIGS}
    if name not in found:
        from harness.util.errors import unknown

        raise unknown("held-out configuration", name, found)
    return found[name]


def estimate_one(config: HeldOut) -> dict:
    """Return a configuration's estimate (by part, bytes) with the tokens a sample and the settings it assumed."""
    from harness.families import get_family
    from harness.model.synth import make_config

    from .fit import _processor, tokens_per_sample

    family, recipe = get_family(config.family), config.recipe()
    cfg = make_config(family, config.size)
    counts = estimate.meta_counts(family, config.size, recipe, config=cfg)
    t = recipe.training
    tokens = tokens_per_sample(family, cfg, _processor(family, cfg, None), t.image_size, t.seq_len,
                               config.batch_size)
    e = estimate.estimate(family, cfg, recipe, counts["weights_bytes"], counts["trainable_params"], config.batch_size,
                          tokens, tokens if family.kind == "dual-encoder" else None,
                          image_size=t.image_size if family.has_images else None,
                          checkpointable_roles=counts["checkpointable_roles"])
    return {"name": config.name, "case": config.case().id, "family": config.family, "size": config.size,
            "batch_size": config.batch_size, "changes": config.changes, "tokens_per_sample": tokens,
            "estimate": e.as_dict()}


def estimate_code() -> dict:
    """Return what identifies the estimate code: its file's SHA-256 and the last commit that touched it."""
    digest = hashlib.sha256(ESTIMATE_SOURCE.read_bytes()).hexdigest()
    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%H", "--", str(ESTIMATE_SOURCE)], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", str(ESTIMATE_SOURCE)], cwd=ROOT,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {"path": "harness/measure/estimate.py", "sha256": digest, "commit": commit, "uncommitted_changes": dirty}


def write_estimates(path: Path = ESTIMATES_PATH) -> Path:
    """Write every configuration's estimate to path (JSON) with the estimate code's identity; return the path."""
    import transformers

    data = {"what": "memory estimates of configurations not in the GPU records, written before they were measured",
            "estimate_code": estimate_code(), "transformers": transformers.__version__,
            "configs": [estimate_one(c) for c in CONFIGS]}
    write_text(Path(path), json.dumps(data, indent=2) + "\n")
    return Path(path)


def read_estimates(path: Path = ESTIMATES_PATH) -> dict:
    """Return the committed estimates by case id ({} when the file is absent)."""
    path = Path(path)
    if not path.exists():
        return {}
    return {c["case"]: c for c in json.loads(path.read_text())["configs"]}


if __name__ == "__main__":
    print(write_estimates())
