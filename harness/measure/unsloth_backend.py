"""The Unsloth backend, run in a process of its own: `python -m harness.measure.unsloth_backend --family ... --out FILE`.

Unsloth patches transformers when imported, so it never runs inside the pytest process that profiles the
peft backend: this module is the child's whole program. It loads the same local checkpoint through
FastVisionModel / FastLanguageModel in 4-bit, puts LoRA on the language backbone's attention only, and
applies the harness's own audits (4-bit per role, LoRA-only trainable with the exact count, a gradient
for every LoRA parameter, deterministic generation) before it measures steps by batch size. The first
step at each new shape compiles: its time is reported apart (warmup_step_time), never in the step time.
Host memory is recorded too: Unsloth's checkpointing offloads activations to it.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import traceback
from pathlib import Path

VARIANT = "unsloth"


def _fast_class(family):
    from unsloth import FastLanguageModel, FastVisionModel

    return FastVisionModel if family.kind == "vlm" else FastLanguageModel


def _load(fast, folder: Path, recipe):
    import torch

    return fast.from_pretrained(
        model_name=str(folder), load_in_4bit=recipe.quantization.load_in_4bit,
        dtype=getattr(torch, recipe.quantization.compute_dtype), use_gradient_checkpointing="unsloth",
        max_seq_length=max(2048, recipe.training.seq_len), local_files_only=True, fix_tokenizer=False,
        full_finetuning=False, trust_remote_code=False)


def _add_lora(fast, model, family, recipe):
    lo = recipe.lora
    common = dict(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, bias="none", random_state=0,
                  use_rslora=lo.use_rslora, use_gradient_checkpointing="unsloth")
    if family.kind == "vlm":  # the language backbone's attention: q/k/v/o, as the peft recipe targets
        return fast.get_peft_model(model, finetune_vision_layers=False, finetune_language_layers=True,
                                   finetune_attention_modules=True, finetune_mlp_modules=False, **common)
    return fast.get_peft_model(model, target_modules=list(lo.target_modules), **common)


def _stopwatch(figures: dict):
    """Return lap(name): store the seconds since the previous lap (or since now) in figures[name]."""
    last = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        figures[name], last[0] = now - last[0], now

    return lap


def profile(family_name: str, size: str, folder: Path, batch_sizes: list[int]) -> dict:
    """Return the Unsloth record of a case: audits, static VRAM, steps by batch size (compile time apart)."""
    started = time.perf_counter()
    import torch
    import unsloth  # noqa: F401 - first, so that its patches apply before transformers is used

    import_s = time.perf_counter() - started

    from harness.checks import inputs, train
    from harness.checks.audit import audit
    from harness.model import load, lora, pipeline
    from harness.model.generate import greedy
    from harness.recipe import default_recipe
    from harness.util import env

    from . import memory, probe, variants
    from .profile import step_figures

    recipe = variants.derive(default_recipe(family_name), variants.get_variant(VARIANT))
    case = pipeline.case(family_name, size, recipe, checkpoint=folder, variant=VARIANT)
    family, fast = case.family, _fast_class(case.family)
    record = {"case": case.id, "gpu": env.gpu_fingerprint(), "versions": env.library_versions(),
              "recipe": {"name": recipe.name, "backend": recipe.backend}, "figures": {}, "steps": []}
    figures = record["figures"]
    figures["import_time_s"] = import_s  # where the child's time goes: recorded for the phase line, never gated
    lap = _stopwatch(figures)

    probe.warm_up()
    before = probe.static_memory()
    start = time.perf_counter()
    model, _ = _load(fast, folder, recipe)
    figures["load_time_s"] = time.perf_counter() - start
    static = probe.memory_since(before)
    figures.update({"static_allocated_bytes": static["allocated_bytes"],
                    "static_reserved_bytes": static["reserved_bytes"],
                    "minimum_bytes": memory.inventory_bytes(model, recipe.quantization.double_quant)["total"]})
    lap("warm_up_and_load_time_s")
    targets = lora.lora_targets(model, family, recipe)
    record["expected_trainable_params"] = lora.expected_trainable_params(model, targets, recipe)
    model = _add_lora(fast, model, family, recipe)
    lap("lora_time_s")
    report = audit(model, family, recipe, case.id)
    record["violations"] = report.violations(recipe)
    record["trainable_params"] = report.trainable_params

    processor = load.load_processor(folder, family)
    t = recipe.training
    batch = inputs.sized_batch(family, processor, 1, t.image_size, t.seq_len, "cuda")
    # LoRA B starts at zero, so A's gradient is zero until one step has moved B: step, then look
    optimizer = train.make_optimizer(model, recipe)
    train.train_step(model, batch, optimizer)
    train.backward(model, batch)
    record["without_gradient"] = train.without_gradient(model)
    model.zero_grad(set_to_none=True)
    del optimizer, batch
    lap("gradient_check_time_s")

    fast.for_inference(model)
    prompt = inputs.example_batch(family, processor).to("cuda")
    first, second = greedy(model, prompt), greedy(model, prompt)
    record["generation"] = {"tokens": first.tolist(), "deterministic": bool(torch.equal(first, second))}
    fast.for_training(model)
    lap("generation_time_s")

    for n in batch_sizes:
        batch = inputs.sized_batch(family, processor, n, t.image_size, t.seq_len, "cuda")
        step = probe.measure_step(model, batch, recipe)
        del batch
        record["steps"].append(step.as_dict())
        figures.update(step_figures(step, static["allocated_bytes"], before["allocated_bytes"]))
        figures.pop(f"checkpointed_calls_bs{n}", None)  # Unsloth checkpoints its own way: transformers' hook never sees it
    lap("steps_time_s")
    figures["total_time_s"] = time.perf_counter() - started
    figures["peak_host_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return record


def unavailable() -> str | None:
    """Return why the Unsloth backend cannot run here (no CUDA GPU, unsloth missing), or None if it can.

    Checked without importing unsloth: its import patches transformers in the calling process.
    """
    import importlib.util

    from harness.util.env import has_cuda

    if not has_cuda():
        return "needs a CUDA GPU (Unsloth runs on CUDA only)"
    if importlib.util.find_spec("unsloth") is None:
        return "needs unsloth: pip install 'qlora-harness[unsloth]'"
    return None


def run_isolated(family: str, size: str, checkpoint: Path, batch_sizes, out: Path, timeout_s: int = 1800) -> dict:
    """Run the Unsloth profile of a case in a child process and return its record; raise if none comes back."""
    import json
    import subprocess

    from harness.util.errors import HarnessError

    cmd = [sys.executable, "-m", "harness.measure.unsloth_backend", "--family", family, "--size", size,
           "--checkpoint", str(checkpoint), "--batch-sizes", *map(str, batch_sizes), "--out", str(out)]
    import harness

    root = str(Path(harness.__file__).resolve().parent.parent)  # where harness imports from: checkout or site-packages
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    wall_s = time.perf_counter() - started
    if not out.is_file():
        raise HarnessError(f"the Unsloth child process for {family}-{size} exited {done.returncode} without a record; "
                           f"its output ends:\n{(done.stdout + done.stderr)[-3000:]}")
    record = json.loads(out.read_text())
    if isinstance(record.get("figures"), dict):
        record["figures"]["child_wall_time_s"] = wall_s  # interpreter start and imports included
    record["log_tail"] = (done.stdout + done.stderr)[-3000:]
    return record


def main(argv: list[str] | None = None) -> int:
    """Profile one case with Unsloth and write its record (or the error that stopped it) as JSON."""
    parser = argparse.ArgumentParser(prog="python -m harness.measure.unsloth_backend")
    parser.add_argument("--family", required=True)
    parser.add_argument("--size", required=True)
    parser.add_argument("--checkpoint", required=True, type=Path, help="the local checkpoint folder to load")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # no network: Unsloth otherwise pings the hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from harness.util.atomic import write_json

    try:
        record = profile(args.family, args.size, args.checkpoint, args.batch_sizes)
    except Exception:  # noqa: BLE001 - the parent reports it; a record always gets written
        record = {"case": f"{args.family}-{args.size}--{VARIANT}", "error": traceback.format_exc()}
    write_json(args.out, record)
    return 0 if "error" not in record else 1


if __name__ == "__main__":
    sys.exit(main())
