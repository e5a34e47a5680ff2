"""The gate's training-path facts: the supervised example a collator builds (or TRL's SFTTrainer, where the recipe says
the user trains with it), and the loss trajectory of K identical optimizer steps, with the judges of their kinds.

Kinds added here (compare.compare_fact hands them to judge()):
  exact    a sequence that must be equal on both sides (input ids, label mask, position ids): the first difference named
  series   numbers per step (a loss, a loss trajectory) within a relative tolerance: the step where they part named
  tensor   a tensor (pixel values, logits after training) within the gate's share-of-std tolerance

The trajectory tolerance was set from measurement (tiny sizes, CPU, the same synthetic checkpoint, 6 AdamW steps at
lr 1e-3 on the supervised example): two runs of one environment agree bit for bit (gap 0); transformers 4.57.1 /
peft 0.17.1 / bitsandbytes 0.49.2 against 5.24.0 / 0.21.2 / 0.50.2 part by at most 2.0e-4 of the loss (qwen2-vl,
step 4; qwen2.5-vl 5e-5, qwen2.5 1.1e-4); a LoRA scaling doubled parts by 9e-3 at step 1 and more after. The
tolerance, 2e-3, sits ten times above the honest gap and four times below the smallest break measured.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from harness.checks import dynamics, examples
from harness.model import load, lora, pipeline
from harness.model.generate import logits

from .facts import CHECK, SKIPPED, decode, encode, fact

EXACT, SERIES, TENSOR = "exact", "series", "tensor"
KINDS = (EXACT, SERIES, TENSOR)
TRAJECTORY_TOLERANCE = 2e-3  # relative loss gap per step; see the module docstring for the measurement
LOSS_TOLERANCE = 2e-3  # the example's loss before training, relative: as the trajectory's first step
TRL_MISSING = "needs trl: pip install 'qlora-harness[trl]'"


def _exact(check: str, value: list, shown: str) -> dict:
    return fact(check, EXACT, value, shown)


def _series(check: str, values: list[float], tolerance: float, unit: str = "step") -> dict:
    shown = ", ".join(f"{v:.4f}" for v in values)
    return fact(check, SERIES, {"values": values, "tolerance": tolerance, "unit": unit}, shown)


def _tensor(check: str, tensor) -> dict:
    t = tensor.detach().float().cpu()
    return fact(check, TENSOR, {"shape": list(t.shape), "float32_base64": encode(t)}, f"shape {tuple(t.shape)}")


def example_facts(c: pipeline.Case, model, processor, device: str, prefix: str = "training example") -> list[dict]:
    """Return the facts of the supervised example on a model whose LoRA is still zero: its labels judged here, its
    ids, label mask, pixel values, grids, the model's position ids and its loss, for the other side to compare."""
    import torch

    family, name = c.family, c.id
    example = examples.supervised_example(family, processor)
    batch = example.batch.to(device)
    example.batch = batch
    tok = examples.tokenizer_of(processor)
    problems = examples.label_problems(example, tok, model.config, name)
    labels = batch["labels"][0]
    mask = (labels != examples.IGNORE).int().tolist()
    facts = [fact(f"{prefix} labels the reply only", CHECK, {"prompt_tokens": example.prompt_length},
                  f"{sum(mask)} of {len(mask)} tokens labelled, {examples.labelled_text(example, tok)!r}", problems)]
    unused = examples.unused_inputs(model, batch)
    keys = sorted(batch.keys())
    facts.append(fact(f"{prefix} inputs reach the model", CHECK, keys, ", ".join(keys), [
        f"{prefix} of {name}: the processor returns {unused}, which no forward of {type(model.get_base_model()).__name__} "
        "takes by name: they fall into **kwargs and never reach the model"] if unused else []))
    facts.append(_exact(f"{prefix} input ids", batch["input_ids"][0].tolist(), f"{batch['input_ids'].shape[1]} tokens"))
    facts.append(_exact(f"{prefix} label mask", mask, f"{sum(mask)} of {len(mask)} labelled"))
    if "pixel_values" in batch:
        facts.append(_tensor(f"{prefix} pixel values", batch["pixel_values"]))
    for key in sorted(k for k in batch if k.endswith("_grid_thw")):
        facts.append(_exact(f"{prefix} {key}", batch[key].tolist(), " ".join(map(str, batch[key].tolist()))))
    model.eval()
    positions = examples.position_ids(model, family, batch)
    facts.append(_exact(f"{prefix} position ids", positions.tolist() if positions is not None else None,
                        f"shape {tuple(positions.shape)}, max {int(positions.max())}" if positions is not None else "none"))
    with torch.no_grad():
        loss = float(model(**batch).loss)
    facts.append(_series(f"{prefix} loss", [loss], LOSS_TOLERANCE, unit="example"))
    return facts


def dynamics_facts(h: pipeline.Harnessed, device: str, on_trained=None) -> list[dict]:
    """Return the loss trajectory of K steps on the supervised example and the trained model's logits after them;
    h trains in place (its adapter is then non-zero). on_trained(h), if given, runs between the steps and the first
    inference forward, which on CPU repacks bitsandbytes' 4-bit weights (a merge reads them exactly before it)."""
    example = examples.supervised_example(h.case.family, h.processor)
    batch = example.batch.to(device)
    losses = dynamics.trajectory(h.model, batch)
    facts = on_trained(h) if on_trained is not None else []
    h.model.eval()
    out = logits(h.model, {k: v for k, v in batch.items() if k != "labels"})
    return [_series(f"loss trajectory ({dynamics.STEPS} steps, lr {dynamics.LEARNING_RATE:g})", losses, TRAJECTORY_TOLERANCE),
            _tensor(f"logits after {dynamics.STEPS} steps", out)] + facts


def sft_base(c: pipeline.Case, cache_dir: Path, device: str):
    """Return (model with zero-init LoRA, processor) for the example facts: the base's outputs, LoRA in place."""
    import torch

    folder, base = pipeline.load_base(c, cache_dir, device)
    torch.manual_seed(0)
    return lora.apply_lora(base, c.family, c.recipe), load.load_processor(folder, c.family, c.recipe.trust_remote_code)


def case_facts(c: pipeline.Case, cache_dir: Path, device: str = "cpu", on_trained=None) -> list[dict]:
    """Return the example facts, TRL's where the recipe trains with it, and the dynamics (nothing for families that
    do not generate); on_trained(h) gets the harness the dynamics trained and returns facts (the artifacts' save)."""
    import torch

    if not c.family.generates:
        return []
    model, processor = sft_base(c, cache_dir, device)
    facts = example_facts(c, model, processor, device)
    del model
    if c.recipe.training.trainer == "trl":
        facts += trl_facts(c, cache_dir, device)
    torch.manual_seed(dynamics.SEED)  # LoRA A's init: the same on both sides
    h = pipeline.harness(c, cache_dir, device)
    return facts + dynamics_facts(h, device, on_trained)


def trl_unavailable() -> str | None:
    """Return why TRL's data path cannot run here (trl or datasets not installed, or installed but not importing,
    e.g. a datasets newer than the huggingface_hub an older transformers pins), or None."""
    import importlib

    for name in ("trl", "datasets"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            if isinstance(e, ModuleNotFoundError) and e.name == name:
                return TRL_MISSING
            return (f"{name} is installed but does not import here ({type(e).__name__}: {e}); install a {name} "
                    f"release that matches this environment's libraries")
    return None


def trl_facts(c: pipeline.Case, cache_dir: Path, device: str) -> list[dict]:
    """Return the facts of the example through TRL's own SFTTrainer: its collated batch (labels judged here, ids and
    mask for the other side) and the loss of one of its training steps."""
    why = trl_unavailable()
    if why:
        return [fact("TRL SFTTrainer step", SKIPPED, None, f"skipped: {why}")]
    import torch

    from harness.checks import sft_trl

    torch.manual_seed(dynamics.SEED)
    h = pipeline.harness(c, cache_dir, device)
    with tempfile.TemporaryDirectory(prefix="qlora-gate-trl-") as tmp:
        run = sft_trl.one_step(h, Path(tmp), device)
    tok = examples.tokenizer_of(h.processor)
    problems = examples.label_problems(run.example, tok, h.model.config, h.case.id)
    labels = run.example.batch["labels"][0]
    mask = (labels != examples.IGNORE).int().tolist()
    return [fact("TRL SFTTrainer example labels the reply only", CHECK, {"keys": sorted(run.example.batch.keys())},
                 f"{sum(mask)} of {len(mask)} tokens labelled, {examples.labelled_text(run.example, tok)!r}", problems),
            _exact("TRL SFTTrainer input ids", run.example.batch["input_ids"][0].tolist(),
                   f"{run.example.batch['input_ids'].shape[1]} tokens"),
            _exact("TRL SFTTrainer label mask", mask, f"{sum(mask)} of {len(mask)} labelled"),
            _series("TRL SFTTrainer step loss", [run.loss], TRAJECTORY_TOLERANCE, unit="step") if run.loss is not None
            else fact("TRL SFTTrainer step loss", SKIPPED, None, f"skipped: {run.skipped}")]


def _first_difference(old, new, path=()):
    """Return (index path, old value, new value) of the first place two nested lists differ, or None."""
    if isinstance(old, list) and isinstance(new, list):
        for i, (a, b) in enumerate(zip(old, new)):
            found = _first_difference(a, b, path + (i,))
            if found:
                return found
        return None if len(old) == len(new) else (path + (min(len(old), len(new)),), f"length {len(old)}", f"length {len(new)}")
    return None if old == new else (path, old, new)


def judge(check: str, case: str, ref: dict, cand: dict, tolerance: float) -> tuple[bool, str, str, str]:
    """Return (kept, reference shown, candidate shown, message) of a fact of one of this module's kinds: kept is
    False when the candidate's value leaves the reference's (compare makes that row a failure)."""
    kind, old, new = ref["kind"], ref["value"], cand["value"]
    if kind == EXACT:
        found = _first_difference(old, new)
        if found is None:
            return True, ref["shown"], cand["shown"], ""
        where, a, b = found
        return False, ref["shown"], cand["shown"], (f"{check} of {case} differ at {list(where)}: {a} in the reference, {b} "
                                                   "in the candidate")
    if kind == SERIES:
        step = dynamics.parting_step(old["values"], new["values"], old["tolerance"])
        if step is None:
            gap = max(dynamics.relative_gaps(old["values"], new["values"]), default=0.0)
            return True, ref["shown"], cand["shown"] + (f" (max gap {gap:.2g})" if gap else ""), ""
        r = old["values"][step] if step < len(old["values"]) else None
        n = new["values"][step] if step < len(new["values"]) else None
        at = f"at {old['unit']} {step}" if old["unit"] == "step" else "on the example"
        cause = ""
        if old["unit"] == "step":
            cause = (" (step 0 is the base model's loss: a change there is the loss itself, e.g. its normalisation; "
                     "a later one is what the updates do: LoRA scaling, gradient flow, the optimizer)")
        return False, ref["shown"], cand["shown"], (
            f"{check} of {case}: the trajectories part {at}: reference {r}, candidate {n} (tolerance "
            f"{old['tolerance']:g} relative, set from measurement){cause}")
    # TENSOR
    if old["shape"] != new["shape"]:
        return False, f"shape {tuple(old['shape'])}", f"shape {tuple(new['shape'])}", (
            f"{check} of {case}: shape {tuple(old['shape'])} in the reference, {tuple(new['shape'])} in the candidate")
    a, b = decode(old["float32_base64"], old["shape"]), decode(new["float32_base64"], new["shape"])
    spread = float(a.std()) or 1.0
    diff = float(abs(b.astype("f8") - a.astype("f8")).max()) if a.size else 0.0
    shown_ref, shown_cand = f"shape {tuple(old['shape'])}, std {spread:.4g}", (
        "identical" if diff == 0 else f"max |Δ| {diff:.4g} ({diff / spread:.2%} of std)")
    if diff > tolerance * spread:
        return False, shown_ref, shown_cand, (f"{check} of {case}: max |Δ| {diff:.4g} is {diff / spread:.1%} of the "
                                             f"reference's standard deviation {spread:.4g} (tolerance {tolerance:.1%})")
    return True, shown_ref, shown_cand, ""
