"""The Unsloth backend, run in a process of its own: `python -m harness.measure.unsloth_backend --family ... --out FILE`.

Unsloth patches transformers when imported, so it never runs inside the pytest process that profiles the
peft backend: this module is the child's whole program. It loads the same local checkpoint through
FastVisionModel / FastLanguageModel in 4-bit, puts LoRA on the language backbone's attention only, and
applies the harness's own audits (4-bit per role, LoRA-only trainable with the exact count, a gradient
for every LoRA parameter, deterministic generation) before it measures steps by batch size. The first
step at each new shape compiles: its time is reported apart (warmup_step_time), never in the step time.
Host memory is recorded too: Unsloth's checkpointing offloads activations to it.

A case runs as two children at once (PARTS), each loading the checkpoint and adding LoRA: "steps" audits the
model, measures static VRAM and the steps, as a user's run goes (load, LoRA, train), then checks every LoRA
parameter's gradient; "generation" generates twice. Only the steps child compiles training steps, and the two
take about as long as the longer of them rather than the sum. A child may start before its checkpoint is built
(--wait-for-checkpoint): it imports Unsloth meanwhile, then waits for the folder and holds it while it reads.
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
PARTS = ("steps", "generation")


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


def profile(family_name: str, size: str, folder: Path, batch_sizes: list[int], part: str = "all",
            before_load=None) -> dict:
    """Return the Unsloth record of a case (part "all"), or of one of its PARTS: "steps" (audit, static VRAM, steps
    by batch size with compile time apart, then every LoRA parameter's gradient) or "generation"."""
    started = time.perf_counter()
    import torch
    import unsloth  # noqa: F401 - first, so that its patches apply before transformers is used

    import_s = time.perf_counter() - started
    if before_load is not None:  # e.g. wait for the checkpoint, now that Unsloth is imported
        before_load()

    from harness.checks import inputs, train
    from harness.checks.audit import audit
    from harness.model import load, lora, pipeline
    from harness.model.generate import greedy
    from harness.recipe import default_recipe
    from harness.util import env

    from . import memory, probe, variants
    from .profile import step_figures

    steps, generation = part in ("steps", "all"), part in ("generation", "all")
    recipe = variants.derive(default_recipe(family_name), variants.get_variant(VARIANT))
    case = pipeline.case(family_name, size, recipe, checkpoint=folder, variant=VARIANT)
    family, fast = case.family, _fast_class(case.family)
    record = {"case": case.id, "gpu": env.gpu_fingerprint(), "versions": env.library_versions(), "part": part,
              "workers": env.gpu_workers(), "recipe": {"name": recipe.name, "backend": recipe.backend},
              "figures": {}, "steps": []}
    figures = record["figures"]
    figures["import_time_s"] = import_s  # where the child's time goes: recorded for the phase line, never gated
    figures["checkpoint_wait_time_s"] = time.perf_counter() - started - import_s
    lap = _stopwatch(figures)

    probe.warm_up()
    before = probe.static_memory()
    start = time.perf_counter()
    model, _ = _load(fast, folder, recipe)
    figures["load_time_s"] = time.perf_counter() - start
    static = probe.memory_since(before)
    lap("warm_up_and_load_time_s")
    if steps:
        figures.update({"static_allocated_bytes": static["allocated_bytes"],
                        "static_reserved_bytes": static["reserved_bytes"],
                        "minimum_bytes": memory.inventory_bytes(model, recipe.quantization.double_quant)["total"]})
        targets = lora.lora_targets(model, family, recipe)
        record["expected_trainable_params"] = lora.expected_trainable_params(model, targets, recipe)
    model = _add_lora(fast, model, family, recipe)
    lap("lora_time_s")
    processor = load.load_processor(folder, family)
    t = recipe.training

    if steps:
        report = audit(model, family, recipe, case.id)  # module inspection only: no GPU memory
        record["violations"] = report.violations(recipe)
        record["trainable_params"] = report.trainable_params
        for n in batch_sizes:
            batch = inputs.sized_batch(family, processor, n, t.image_size, t.seq_len, "cuda")
            step = probe.measure_step(model, batch, recipe)
            del batch
            record["steps"].append(step.as_dict())
            figures.update(step_figures(step, static["allocated_bytes"], before["allocated_bytes"]))
            figures.pop(f"checkpointed_calls_bs{n}", None)  # Unsloth checkpoints its own way: not transformers' hook
        lap("steps_time_s")
        # LoRA B starts at zero, so A's gradient is zero until a step has moved B: the steps have; now look
        batch = inputs.sized_batch(family, processor, 1, t.image_size, t.seq_len, "cuda")
        train.backward(model, batch)
        record["without_gradient"] = train.without_gradient(model)
        model.zero_grad(set_to_none=True)
        del batch
        lap("gradient_check_time_s")

    if generation:
        fast.for_inference(model)
        prompt = inputs.example_batch(family, processor).to("cuda")
        first, second = greedy(model, prompt), greedy(model, prompt)
        record["generation"] = {"tokens": first.tolist(), "deterministic": bool(torch.equal(first, second))}
        fast.for_training(model)
        lap("generation_time_s")
    figures["total_time_s"] = time.perf_counter() - started
    figures["peak_host_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return record


def wait_for_checkpoint(folder: Path, abort: Path, timeout_s: float = 1200, poll_s: float = 1.0) -> int:
    """In a child started before its checkpoint was built: wait for the folder to be complete, then hold it against
    eviction for the life of this process (harness.model.disk); raise if the build failed (`abort` names why)."""
    from harness.model import disk, synth
    from harness.util.errors import HarnessError

    deadline = time.monotonic() + timeout_s
    while True:
        if abort.is_file():
            raise HarnessError(f"the checkpoint {folder.name} was not built: {abort.read_text()}")
        if synth.is_complete(folder):
            lock = disk.hold(folder)
            if lock is not None and synth.is_complete(folder):
                return lock
        if time.monotonic() > deadline:
            raise HarnessError(f"the checkpoint {folder} was not built within {timeout_s:.0f} s")
        time.sleep(poll_s)


def merge(parts: dict[str, dict]) -> dict:
    """Return a case's record from its PARTS' records: the steps child's, with the generation child's generation
    and its times under generation_child_*. A part that failed makes the record an error naming it."""
    failed = [f"{name} child:\n{rec['error']}" for name, rec in parts.items() if "error" in rec]
    if failed:
        return {"case": next(iter(parts.values()))["case"], "error": "\n".join(failed),
                "log_tail": "\n".join(rec.get("log_tail", "") for rec in parts.values())}
    steps, generation = parts["steps"], parts["generation"]
    record = {**steps, "generation": generation["generation"], "part": "all"}
    record["figures"] = {**steps["figures"], **{f"generation_child_{k}": v for k, v in generation["figures"].items()
                                                if k.endswith("_time_s")}}
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


def command(family: str, size: str, checkpoint: Path, batch_sizes, part: str, out: Path,
            abort: Path | None = None) -> list[str]:
    """Return the command line of one child: python -m harness.measure.unsloth_backend ...; with `abort`, the child
    waits for the checkpoint to be built (and gives up if the file abort appears)."""
    return [sys.executable, "-m", "harness.measure.unsloth_backend", "--family", family, "--size", size,
            "--checkpoint", str(checkpoint), "--batch-sizes", *map(str, batch_sizes), "--part", part,
            "--out", str(out), *(["--wait-for-checkpoint", "--abort-if", str(abort)] if abort else [])]


def child_env() -> dict:
    """Return the children's environment: this one, with harness importable as it is here (checkout or site-packages)."""
    import harness

    root = str(Path(harness.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def abort_file(stem: Path) -> Path:
    """Return the file that tells a waiting child its checkpoint will not come (its text says why)."""
    return Path(stem).with_name(Path(stem).name + ".abort")


def start(family: str, size: str, checkpoint: Path, batch_sizes, folder: Path, built: bool = True,
          nice: dict[str, int] | None = None) -> dict[str, Path]:
    """Start the children of a case (one per part) in the background; return each part's job stem under folder.

    built=False: the checkpoint is still to be built; each child imports Unsloth, then waits for it and holds it
    (abort_file(stem) stops the wait). Otherwise the caller holds the checkpoint until the children are done.
    nice: by part, how much lower than this process's CPU priority the child runs (harness.util.priority).
    """
    from harness.util import jobs

    stems = {}
    for part in PARTS:
        stem = Path(folder) / f"unsloth-{family}-{size}-{part}"
        abort_file(stem).unlink(missing_ok=True)
        cmd = command(family, size, checkpoint, batch_sizes, part, jobs.files(stem)[0],
                      None if built else abort_file(stem))
        jobs.spawn(cmd, stem, env=child_env(), nice=(nice or {}).get(part, 0))
        (stem.parent / f"{stem.name}.started").write_text(str(time.time()))
        stems[part] = stem
    return stems


def collect(family: str, size: str, stems: dict[str, Path], timeout_s: float = 1800) -> dict:
    """Wait for a case's children (started by any process of the run) and return its merged record."""
    from harness.util import jobs

    parts = {}
    for part, stem in stems.items():
        record_file, log, _ = jobs.files(stem)
        rec = jobs.wait(stem, f"the Unsloth {part} child of {family}-{size}", timeout_s=timeout_s)
        started = stem.parent / f"{stem.name}.started"
        if isinstance(rec.get("figures"), dict) and started.is_file():  # interpreter start and imports included
            rec["figures"]["child_wall_time_s"] = record_file.stat().st_mtime - float(started.read_text())
        rec["log_tail"] = jobs.tail(log)
        parts[part] = rec
    return merge(parts)


def run_isolated(family: str, size: str, checkpoint: Path, batch_sizes, out: Path, timeout_s: int = 1800) -> dict:
    """Run the Unsloth profile of a case in its child processes and return its record; raise if none comes back."""
    out = Path(out)
    stems = start(family, size, checkpoint, batch_sizes, out.parent / out.stem)
    return collect(family, size, stems, timeout_s)


def main(argv: list[str] | None = None) -> int:
    """Profile one case with Unsloth and write its record (or the error that stopped it) as JSON."""
    parser = argparse.ArgumentParser(prog="python -m harness.measure.unsloth_backend")
    parser.add_argument("--family", required=True)
    parser.add_argument("--size", required=True)
    parser.add_argument("--checkpoint", required=True, type=Path, help="the local checkpoint folder to load")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--part", choices=("all", *PARTS), default="all")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--wait-for-checkpoint", action="store_true",
                        help="the checkpoint is being built: import Unsloth, then wait for it and hold it")
    parser.add_argument("--abort-if", type=Path, help="with --wait-for-checkpoint: stop waiting if this file appears")
    args = parser.parse_args(argv)
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")  # no network: Unsloth otherwise pings the hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from harness.util import jobs
    from harness.util.atomic import write_json

    jobs.beat()  # started in the background by a test run: say it is alive, stop if the run is gone
    try:
        held = []
        wait = (lambda: held.append(wait_for_checkpoint(args.checkpoint, args.abort_if or Path(os.devnull))))
        record = profile(args.family, args.size, args.checkpoint, args.batch_sizes, args.part,
                         before_load=wait if args.wait_for_checkpoint else None)
    except Exception:  # noqa: BLE001 - the parent reports it; a record always gets written
        record = {"case": f"{args.family}-{args.size}--{VARIANT}", "error": traceback.format_exc()}
    write_json(args.out, record)
    return 0 if "error" not in record else 1


if __name__ == "__main__":
    sys.exit(main())
