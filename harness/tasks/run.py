"""`qlora-harness run RECIPE`: one seed experiment, tiny on CPU or full size on a GPU, saved as one results JSON.

Each arm (a model size under a variant of the recipe) is one record in the shape of a GPU profile record (case,
recipe, figures) plus what the experiment adds: trainable counts, the memory estimate, a loss curve, accuracy,
generation, merge. On a GPU the figures are harness.measure.profile's; on CPU there is no VRAM: the record holds what CPU
measures (step time, tokens/s, host memory) and names every GPU-only figure under `absent`, never a made-up value.
The file is rewritten after every arm, so a run cut short keeps what it finished.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from harness.checks import inputs, train
from harness.measure import estimate, variants
from harness.measure.layout import sample_layout
from harness.model import pipeline
from harness.recipe import load_recipe
from harness.util import env
from harness.util.atomic import write_json
from harness.util.errors import HarnessError

from . import experiments, learn, seed_tasks

TINY_SEQ_LEN = 96  # tokens per sample at tiny size (the full-size recipes ask up to 2048)
GPU_ONLY = ("static_allocated_bytes", "adapter_bytes", "minimum_bytes")
GPU_ONLY_PER_BATCH = ("peak_allocated_bs{n}_bytes", "activations_bs{n}_bytes", "optimizer_and_adapters_bs{n}_bytes")
NO_GPU = "no CUDA GPU: VRAM is measured on a GPU only"
FEW_SHOT_PROMPT = "a photo of a shape at the {}"


def stderr(message: str) -> None:
    """Print a progress line to stderr."""
    print(message, file=sys.stderr, flush=True)


def run_experiment(exp: experiments.Experiment, size: str, out_dir: Path, cache_dir: Path,
                   device: str | None = None, progress: Callable[[str], None] = stderr,
                   model_sizes: list[str] | None = None, recipe_path: Path | None = None) -> Path:
    """Run every arm of an experiment at a size ('tiny' or 'full'); return the results JSON written in out_dir.

    model_sizes, if given, runs only those of the experiment's model sizes (a long ablation split over sessions);
    the file name then carries them, so each part keeps its own results. recipe_path, if given, is the recipe file
    run instead of the experiment's own (an edited copy); it must be of the experiment's family.
    """
    experiments.check_size(size)
    chosen = list(exp.sizes[size])
    if model_sizes:
        wrong = [m for m in model_sizes if m not in chosen]
        if wrong:
            raise HarnessError(f"{exp.name} at {size} size runs model sizes {', '.join(chosen)}; "
                               f"found {', '.join(wrong)}: pick among those")
        chosen = [m for m in chosen if m in model_sizes]
    device = device or ("cuda" if env.has_cuda() else "cpu")
    if size == "full" and device != "cuda":
        raise HarnessError(f"{exp.name} at full size needs a CUDA GPU, found none; run --size tiny on CPU")
    base = load_recipe(recipe_path or exp.recipe_path)
    family = load_recipe(exp.recipe_path).family
    if base.family != family:
        raise HarnessError(f"{recipe_path}: {exp.name} runs family {family}, the recipe is of {base.family}; "
                           f"start from recipes/{exp.recipe}")
    settings = {k: getattr(exp, k)[size] for k in ("batch_sizes", "steps", "grad_accum", "warmup_steps")}
    result = {"experiment": exp.name, "title": exp.title, "recipe": str(recipe_path) if recipe_path else f"recipes/{exp.recipe}", "kind": exp.kind,
              "size": size, "device": device, "gpu": env.gpu_fingerprint() if device == "cuda" else None,
              "versions": env.library_versions(),
              "settings": {**settings, "schedule": exp.schedule, "tasks": list(exp.tasks), "grid": exp.grid},
              "complete": False, "records": []}
    suffix = "" if chosen == list(exp.sizes[size]) else "--" + "-".join(chosen)
    path = Path(out_dir) / f"{exp.name}{suffix}.json"
    arms = [(s, v) for s in chosen for v in exp.variants]
    for i, (model_size, variant) in enumerate(arms, 1):
        progress(f"[{exp.name}] arm {i}/{len(arms)}: {base.family}-{model_size} {variant.name}")
        start = time.perf_counter()
        record = run_arm(exp, base, model_size, variant, size, device, cache_dir, Path(out_dir), progress)
        record["wall_s"] = time.perf_counter() - start
        progress(f"[{exp.name}] arm {i}/{len(arms)}: {record['status']} in {record['wall_s']:.1f} s")
        result["records"].append(record)
        write_json(path, result)
    result["complete"] = True
    write_json(path, result)
    return path


def run_arm(exp, base, model_size: str, variant, size: str, device: str, cache_dir: Path, out_dir: Path,
            progress) -> dict:
    """Return the record of one arm; an arm that fails is recorded with its error and the run goes on."""
    recipe = variants.derive(base, variant)
    case = pipeline.case(base.family, model_size, recipe, variant=variant.name)
    record = {"case": case.id, "variant": variant.name, "label": variant.label, "model_size": model_size,
              "family": base.family, "backend": variant.backend, "recipe": dataclasses.asdict(recipe),
              "figures": {}, "absent": {}, "status": "ok"}
    try:
        if variant.backend == "unsloth":
            _unsloth(record, case, exp.batch_sizes[size], cache_dir, device, out_dir)
        else:
            _peft(record, exp, case, variant, size, device, cache_dir, out_dir, progress)
    except Exception:  # noqa: BLE001 - one failing arm is a result to report, not the end of the run
        record.update(status="error", error=traceback.format_exc()[-3000:])
    finally:
        from harness.measure import probe

        probe.release()
    return record


def _unsloth(record: dict, case, batch_sizes, cache_dir: Path, device: str, out_dir: Path) -> None:
    from harness.measure import unsloth_backend

    reason = unsloth_backend.unavailable()
    if reason:
        record.update(status="skipped", reason=reason)
        return
    folder = pipeline.checkpoint_of(case, cache_dir, device=device)
    out = out_dir / ".unsloth" / f"{case.id}.json"
    u = unsloth_backend.run_isolated(case.family.name, case.size, folder, list(batch_sizes), out)
    record.update({k: u[k] for k in ("figures", "steps", "violations", "trainable_params",
                                     "expected_trainable_params", "generation", "versions") if k in u})
    record["note"] = "Unsloth runs the family's default recipe (harness.measure.unsloth_backend), in a child process"
    if "error" in u:
        record.update(status="error", error=u["error"][-3000:])


def _sizes(case, size: str) -> tuple[int, int]:
    t = case.recipe.training
    if size == "full":
        return t.image_size, t.seq_len
    return case.family.tiny_image_size, min(t.seq_len, TINY_SEQ_LEN)


def _peft(record, exp, case, variant, size, device, cache_dir, out_dir, progress) -> None:
    from harness.checks.audit import audit

    family, recipe = case.family, case.recipe
    batch_sizes = exp.batch_sizes[size]
    image, seq = _sizes(case, size)
    tokens_by_batch = {}
    if device == "cuda":
        from harness.measure.profile import profile_case

        profile = profile_case(case, batch_sizes, cache_dir, training=variant.training)
        record["figures"].update(profile.figures)
        record["steps"] = [s.as_dict() for s in profile.steps]
        record["violations"] = profile.violations
        tokens_by_batch = {s.batch_size: s.tokens for s in profile.steps if s.tokens}
    else:
        record["absent"] = {name: NO_GPU for name in GPU_ONLY}
        record["absent"].update({p.format(n=n): NO_GPU for n in batch_sizes for p in GPU_ONLY_PER_BATCH})
    h = pipeline.harness(case, cache_dir, device)
    model = h.model
    learn.keep_4bit_layout(model)  # experiments evaluate between training steps
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts = estimate.meta_counts(family, case.size, recipe)
    record.update(trainable_params=trainable, expected_trainable_params=h.expected_trainable,
                  total_params=counts["total_params"],
                  trainable_percent=100 * trainable / (counts["total_params"] + trainable))
    if device != "cuda":
        record["violations"] = audit(model, family, recipe, case.id).violations(recipe)
    _train_and_evaluate(record, exp, h, size, image, seq, device, out_dir, progress)
    if device != "cuda":
        tokens_by_batch = _cpu_steps(record["figures"], h, batch_sizes, image, seq, variant.training)
    record["estimates"] = {}
    sample = sample_layout(family, counts["config"], h.processor, image, seq) if family.has_images else None
    for n in batch_sizes:
        per_sample = (tokens_by_batch.get(n) or n * seq) // n
        text = per_sample if family.kind == "dual-encoder" else None
        e = estimate.estimate(family, counts["config"], recipe, counts["weights_bytes"], counts["trainable_params"],
                              n, per_sample, text, image_size=image, layout=sample,
                              checkpointable_roles=counts["checkpointable_roles"])
        record["estimates"][str(n)] = e.as_dict()
    del h, model


def _cpu_steps(figures: dict, h, batch_sizes, image: int, seq: int, training: bool) -> dict:
    """Time one training step per batch size after a warm-up step, on CPU; return tokens per batch size."""
    from harness.measure.probe import host_rss_bytes

    tokens = {}
    for n in batch_sizes:
        batch = inputs.sized_batch(h.case.family, h.processor, n, image, seq)
        optimizer = train.make_optimizer(h.model, h.case.recipe)
        train.train_step(h.model, batch, optimizer, training)
        start = time.perf_counter()
        train.train_step(h.model, batch, optimizer, training)
        ms = 1000 * (time.perf_counter() - start)
        count = int(batch["attention_mask"].sum()) if "attention_mask" in batch else None
        tokens[n] = count
        figures.update({f"status_bs{n}": "ok", f"step_time_bs{n}_ms": ms, f"host_rss_bs{n}_bytes": host_rss_bytes(),
                        f"tokens_per_s_bs{n}": None if not count else 1000 * count / ms})
    return tokens


def _train_and_evaluate(record, exp, h, size, image, seq, device, out_dir, progress) -> None:
    """Run what the experiment measures beyond memory: loss curve, few-shot accuracy, grounding, generation, merge."""
    steps = exp.steps[size]
    family, recipe = h.case.family, h.case.recipe
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    if exp.kind == "few-shot":
        scenes = {"image_size": image, "grid": exp.grid, "span": 1}
        shots = 4
        task = exp.tasks[0]
        result = learn.few_shot_clip(h.model, h.processor, recipe, task, FEW_SHOT_PROMPT, scenes, shots, steps)
        record["few_shot"] = {"task": task, "shots_per_class": shots, "zero_shot_accuracy": result.before,
                              "few_shot_accuracy": result.after}
        record["losses"] = result.losses
    elif steps:
        batch_size = exp.batch_sizes[size][0]
        accum = exp.grad_accum[size]
        batches = seed_tasks.training_batches(family, h.processor, exp.tasks, steps * accum, batch_size, image, seq,
                                              exp.grid)
        optimizer = train.make_optimizer(h.model, recipe)
        scheduler = seed_tasks.schedule(optimizer, exp.schedule, exp.warmup_steps[size], steps)
        record["losses"] = learn.fit(h.model, batches, optimizer, scheduler,
                                     lambda i, loss: progress(f"  step {i + 1}/{steps}: loss {loss:.4f}"), accum)
        record["training"] = {"steps": steps, "batch_size": batch_size, "grad_accum": accum,
                              "schedule": exp.schedule, "warmup_steps": exp.warmup_steps[size]}
    if device == "cuda":
        import torch

        record["figures"]["training_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
    if exp.generate:
        record["generation"] = seed_tasks.generation(h.model, family, h.processor, image, device)
    grounded = [t for t in exp.tasks if t in seed_tasks.GROUNDING_TASKS]
    if grounded:
        record["grounding"] = seed_tasks.grounding_eval(h.model, family, h.processor, grounded, image, exp.grid,
                                                        6 if size == "tiny" else 24)
    if exp.merge:
        folder = out_dir / "merged" / h.case.id if size == "tiny" else None  # a 7B merge is 15 GB: compared, not saved
        record["merge"] = seed_tasks.merge_check(h.model, family, h.processor, image, folder)
