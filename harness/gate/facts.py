"""The facts one case yields in one environment: the harness's checks, each with its value and its own verdict.

A fact is plain data: {"check", "kind", "value", "shown", "ok", "problems", "must_match"}. Kinds:
  check     judged in its own environment by a harness check (ok, problems); the other side's value is compared too
  logits    numbers compared with the other environment's within a tolerance
  tokens    greedy token ids with what each step chose from; differing tokens fail unless the reference's top-2
            margin at the first difference is below the logits difference (a near-tie)
  answers   a trained checkpoint's answers, compared exactly (no near-ties there)
  memory    GPU bytes, compared as baselines are (harness.measure.baselines)
  status    a GPU step's ok / oom, compared exactly
  figure    a recorded GPU figure (times, host memory), reported, not gated
  skipped   not measured here, with the reason
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from harness.checks import adapters, checkpointing, inputs, train
from harness.checks.audit import audit
from harness.families import DUAL_ENCODER, VLM
from harness.measure.baselines import GATED_PREFIXES
from harness.model import load, lora, pipeline
from harness.model.generate import greedy_scored, logits

CHECK, LOGITS, TOKENS, MEMORY, STATUS, FIGURE, SKIPPED = "check", "logits", "tokens", "memory", "status", "figure", "skipped"
ANSWERS = "answers"
TRAINED_COUNT = 16  # held-out scenes per task asked of a trained checkpoint
TRAINED_REQUIRED = 14 / 16  # its accuracy per task, in this environment (every task answers 48/48 at 4-bit here)
LOGITS_LIMIT = 65536  # logits stored whole up to this many numbers; beyond, the last position only (full sizes)
NEW_TOKENS = 8
STEP_BATCH_SIZES = (1, 2)  # GPU training steps measured per case


def fact(check: str, kind: str, value, shown: str, problems=(), must_match: bool = False) -> dict:
    """Return one fact; a check-kind fact is ok when it has no problems."""
    return {"check": check, "kind": kind, "value": value, "shown": shown,
            "ok": (not problems) if kind == CHECK else None, "problems": list(problems), "must_match": must_match}


def _weights(summary: dict) -> str:
    q, h, f = summary["linear4bit"], summary["linear16"], summary["linear32"]
    if q and not (h or f):
        return f"4-bit ({q} Linear4bit)"
    if not q:
        return f"16-bit ({h} Linear)" if not f else f"unquantized ({h} 16-bit, {f} float32 Linear)"
    return f"mixed ({q} Linear4bit, {h} 16-bit, {f} float32 Linear)"


def _training(summary: dict) -> str:
    if summary["lora_modules"]:
        return f"LoRA on {summary['lora_modules']} modules, {summary['trainable_params']:,} trainable"
    return "frozen" if not summary["trainable_params"] else f"{summary['trainable_params']:,} trainable without LoRA"


def audit_facts(h: pipeline.Harnessed) -> list[dict]:
    """Return the audit as facts: each role the recipe has expectations for, nothing trainable outside the roles,
    the trainable count against the LoRA targets, and the trainable set."""
    recipe, name = h.case.recipe, h.case.id
    report = audit(h.model, h.case.family, recipe, name)
    out = []
    for role, exp in recipe.expect.items():
        one = dataclasses.replace(recipe, expect={role: exp})
        problems = [p for p in report.violations(one) if not p.startswith(f"{name}: ")]  # the model-wide sentence below
        summary = report.roles[role].summary() if role in report.roles else {}
        shown = f"{_weights(summary)}, {_training(summary)}" if summary else "no such role"
        out.append(fact(f"role {role} ({exp.weights}, {exp.train})", CHECK, summary, shown, problems))
    outside = report.unassigned_trainable
    out.append(fact("nothing trains outside the roles", CHECK, len(outside), f"{len(outside)} parameters",
                    [p for p in report.violations(dataclasses.replace(recipe, expect={})) if p.startswith(f"{name}: ")]))
    problems = []
    if not report.trainable_params == report.lora_params == h.expected_trainable:
        problems.append(f"trainable params of {name}: expected {h.expected_trainable:,} (r·(in+out) over "
                        f"{len(h.targets)} LoRA targets), found {report.trainable_params:,} of which "
                        f"{report.lora_params:,} LoRA")
    out.append(fact("trainable params", CHECK, report.trainable_params, f"{report.trainable_params:,}", problems,
                    must_match=True))
    names = sorted(n for n, p in h.model.named_parameters() if p.requires_grad)
    out.append(fact("trainable set", CHECK, names, f"{len(names)} tensors"))
    return out


def zero_init_fact(c: pipeline.Case, before, after) -> dict:
    """Return whether injecting zero-initialised LoRA into the base left its logits (before, after) unchanged."""
    import torch

    diff = float((after.float() - before.float()).abs().max())
    problems = [] if torch.equal(after, before) else [
        f"zero-initialised LoRA of {c.id}: expected the base model's logits unchanged, found max |Δ| {diff:.4g}"]
    return fact("zero-init LoRA leaves logits unchanged", CHECK, diff, "identical" if not problems else f"max |Δ| {diff:.4g}",
                problems)


def encode(tensor) -> str:
    """Return a tensor's values as base64 of little-endian float32: exact, and a tenth of the size of JSON numbers."""
    import base64

    return base64.b64encode(tensor.detach().float().cpu().numpy().astype("<f4").tobytes()).decode()


def decode(text: str, shape):
    """Return the numpy array encode() wrote (flat when shape holds 'last')."""
    import base64

    import numpy as np

    values = np.frombuffer(base64.b64decode(text), dtype="<f4")
    return values.reshape([int(n) for n in shape]) if all(isinstance(n, int) for n in shape) else values


def generation_facts(c: pipeline.Case, model, out, batch) -> list[dict]:
    """Return the logits (out) of the model on the example batch and, for generators, its greedy tokens."""
    out = out.float()
    shape = list(out.shape)
    if out.numel() > LOGITS_LIMIT:
        out, shape = out[..., -1, :], shape[:-2] + ["last"] + shape[-1:]
    facts = [fact("logits", LOGITS, {"shape": shape, "float32_base64": encode(out)}, f"shape {tuple(shape)}")]
    if c.family.generates:
        tokens, values, ids, argmax = greedy_scored(model, batch, max_new_tokens=NEW_TOKENS)
        rows = tokens.tolist()
        facts.append(fact("greedy tokens", TOKENS, {"tokens": rows, "top_values": values.tolist(), "top_ids": ids.tolist()},
                          " ".join(str(t) for t in rows[0])))
        off = [(b, p) for b, row in enumerate(argmax.tolist()) for p, ok in enumerate(row) if not ok]
        problems = [f"greedy decoding of {c.id}: generate(do_sample=False) should pick each step's best-scoring token, "
                    f"found {len(off)} of {argmax.numel()} new tokens that are not (first: sample {off[0][0]}, new token "
                    f"{off[0][1]}): generation samples or reorders instead of decoding greedily"] if off else []
        facts.append(fact("greedy decoding picks the argmax", CHECK, len(off),
                          "every token the argmax" if not off else f"{len(off)} tokens not the argmax", problems))
    return facts


def placeholder_facts(c: pipeline.Case, model, processor, device: str) -> list[dict]:
    """Return the placeholder checks of a VLM: counts match the family's contract; a missing placeholder is refused."""
    from harness.util.errors import HarnessError

    family, config, name = c.family, model.config, c.id
    size = family.tiny_image_size
    batch = inputs.example_batch(family, processor, image_sizes=[(size, size), (2 * size, size)]).to(device)
    found, expected = inputs.image_token_counts(family, batch, config)
    problems = [] if found == expected else [
        f"image placeholders of {name}: expected {expected} per sample (the family's image token count), found {found}"]
    facts = [fact("placeholders match image features", CHECK, {"found": found, "expected": expected},
                  f"{'+'.join(map(str, found))} for {'+'.join(map(str, expected))}", problems)]
    broken = inputs.without_one_placeholder(family, inputs.example_batch(family, processor), config).to(device)
    refused = {}
    try:
        inputs.check_placeholders(family, broken, config)
        refused["harness"] = "accepted"
    except HarnessError:
        refused["harness"] = "refused"
    try:
        logits(model, broken)
        refused["model"] = "accepted"
    except Exception as e:  # noqa: BLE001 - which error the model raises is the fact
        refused["model"] = f"refused ({type(e).__name__})" if "image" in str(e).lower() else f"failed ({type(e).__name__}: {e})"
    # a cross-attention model has no feature per placeholder to count: only the harness can refuse there
    must_refuse = ("harness", "model") if family.inputs.model_refuses_mismatch else ("harness",)
    problems = [f"placeholder mismatch in {name}: expected {who} to refuse a prompt missing one image placeholder, "
                f"found {what}" for who, what in refused.items() if who in must_refuse and not what.startswith("refused")]
    facts.append(fact("placeholder mismatch refused", CHECK, refused, f"harness {refused['harness']}, model {refused['model']}",
                      problems))
    return facts


def training_facts(h: pipeline.Harnessed, batch) -> list[dict]:
    """Return what one training step touched (frozen bytes, loss) and which trainable parameters then get gradients."""
    import math

    name = h.case.id
    frozen = train.frozen_snapshot(h.model)
    loss = train.train_step(h.model, batch, train.make_optimizer(h.model, h.case.recipe))
    changed = train.changed_frozen(h.model, frozen)
    problems = []
    if not math.isfinite(loss):
        problems.append(f"training step of {name}: expected a finite loss, found {loss}")
    if changed:
        problems.append(f"training step of {name}: expected every frozen byte unchanged, found {len(changed)} "
                        f"frozen parameters changed: {changed[:3]}")
    facts = [fact("step leaves frozen weights", CHECK, len(changed),
                  "frozen bytes unchanged" if not changed else f"{len(changed)} frozen changed", problems)]
    # LoRA B starts at zero, so A's gradient is zero until one step has moved B: the backward follows the step.
    with checkpointing.counting(h.model) as counted:
        train.backward(h.model, batch)
    wanted = h.case.recipe.training.gradient_checkpointing
    problem = counted.problem(wanted)
    facts.append(fact(f"gradient checkpointing {'acts' if wanted else 'stays off'}", CHECK,
                      {"enabled_layers": counted.enabled_layers, "checkpointed_calls": counted.checkpointed_calls},
                      f"{counted.checkpointed_calls} checkpointed layer calls, {counted.enabled_layers} layers enabled",
                      [f"gradient checkpointing of {name}: {problem}"] if problem else []))
    trainable = sum(1 for p in h.model.parameters() if p.requires_grad)
    missing = train.without_gradient(h.model)
    problems = [f"gradients of {name}: expected every trainable parameter to get a gradient after a step, found "
                f"{len(missing)} of {trainable} without: {missing[:3]}"] if missing else []
    facts.append(fact("every LoRA parameter gets a gradient", CHECK, {"trainable": trainable, "without": len(missing)},
                      f"{trainable - len(missing)} of {trainable} tensors", problems))
    return facts


def round_trip_fact(h: pipeline.Harnessed, batch, cache_dir: Path, device: str) -> dict:
    """Return what saving the trained adapter and reloading it onto a fresh base kept."""
    with tempfile.TemporaryDirectory(prefix="qlora-gate-adapter-") as folder:
        trip = adapters.round_trip(h, batch, Path(folder), cache_dir, device)
    value = {"saved_keys": trip.saved_keys, "lora_params": trip.lora_params, "unexpected": len(trip.unexpected_keys),
             "missing": len(trip.missing_lora_keys), "same_outputs": trip.same_outputs}
    shown = f"{trip.saved_keys} keys saved, {trip.lora_params - len(trip.missing_lora_keys)} reloaded, " + (
        "outputs identical" if trip.same_outputs else "outputs differ")
    return fact("adapter round-trip", CHECK, value, shown, trip.problems(h.case.id))


def trained_facts(c: pipeline.Case, device: str) -> list[dict]:
    """Return a trained tiny checkpoint's answers on held-out scenes, loaded with the case's recipe, and whether it
    still answers them (the shipped checkpoints of fixtures/train_tiny.py: no near-ties, so any other answer is a
    change of the model or its decoding)."""
    from harness.tasks import learn, shapes

    name = f"{c.family.name}-shapes"
    if c.size != "tiny" or not (learn.FIXTURES / name / learn.TRAINED_META).is_file():
        why = "trained checkpoints are tiny" if c.size != "tiny" else f"no trained checkpoint for {c.family.name}"
        return [fact("trained checkpoint answers", SKIPPED, None, f"skipped: {why}")]
    folder, record = learn.trained_checkpoint(name)
    model = load.load_model(folder, c.family, c.recipe, device=device)
    processor = load.load_processor(folder, c.family)
    scenes = learn.eval_scenes(record, TRAINED_COUNT)
    if c.family.kind == DUAL_ENCODER:
        classes = shapes.caption_classes()
        predicted = learn.clip_predictions(model, processor, [s.image() for s in scenes],
                                           [shapes.caption(*k) for k in classes], family=c.family)
        answers = {"caption": [shapes.caption(*classes[i]) for i in predicted]}
        right = {"caption": sum(classes[i] == (s.colour, s.shape) for i, s in zip(predicted, scenes)) / len(scenes)}
    else:
        answers, right = {}, {}
        for task in record["tasks"]:
            samples = shapes.ask(scenes, task)
            answers[task] = learn.generate_answers(model, c.family, processor, samples)
            right[task] = learn.accuracy(samples, answers[task])
    shown = ", ".join(f"{t} {round(a * len(scenes))}/{len(scenes)}" for t, a in right.items())
    short = {t: a for t, a in right.items() if a < TRAINED_REQUIRED}
    problems = [f"trained checkpoint {name} under {c.id}: expected at least {TRAINED_REQUIRED:.0%} right per task "
                f"({shown}), found {', '.join(short)} below"] if short else []
    return [fact("trained checkpoint answers its tasks", CHECK, right, shown, problems),
            fact("trained checkpoint answers", ANSWERS, answers, shown)]


def memory_facts(c: pipeline.Case, cache_dir: Path) -> list[dict]:
    """Return the GPU profile of a case as facts: static and peak VRAM, OOM status per batch size, times."""
    from harness.measure.profile import profile_case

    figures = profile_case(c, STEP_BATCH_SIZES, cache_dir, device="cuda").figures
    out = []
    for name, value in figures.items():
        kind = STATUS if name.startswith("status_") else MEMORY if name.startswith(GATED_PREFIXES) else FIGURE
        out.append(fact(f"gpu {name}", kind, value, _figure(name, value)))
    return out


def _figure(name: str, value) -> str:
    if isinstance(value, (int, float)) and name.endswith("_bytes"):
        return f"{value / 2**30:.3f} GiB"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def case_facts(c: pipeline.Case, cache_dir: Path, device: str = "cpu", memory_skip: str | None = "no CUDA GPU",
               on_fact=None) -> list[dict]:
    """Return every fact of a case, in the order a verdict lists them; GPU memory unless memory_skip says why not.

    on_fact, if given, is called with each fact as soon as it is known (progress), in the order they are found.
    """
    import torch

    family = c.family
    told = on_fact or (lambda f: None)

    def found(new: list[dict]) -> list[dict]:
        for f in new:
            told(f)
        return new

    def eval_batch(processor):
        count = 3 if family.kind == DUAL_ENCODER else 1
        return inputs.example_batch(family, processor, count=count).to(device)

    torch.manual_seed(0)  # LoRA A and dropout draw from it: runs repeat within an environment
    # Two loads, as the smoke tier has: one only reads (on CPU, bitsandbytes repacks 4-bit weights at the first
    # inference forward, after which the model cannot train), one trains first and is read after.
    folder, base = pipeline.load_base(c, cache_dir, device)
    processor = load.load_processor(folder, family)
    batch = eval_batch(processor)
    before = logits(base, batch)
    adapted = lora.apply_lora(base, family, c.recipe)
    after = logits(adapted, batch)
    facts = found([zero_init_fact(c, before, after)] + generation_facts(c, adapted, after, batch))
    if family.kind == VLM:
        facts += found(placeholder_facts(c, adapted, processor, device))
    del base, adapted
    h = pipeline.harness(c, cache_dir, device)
    facts = found(audit_facts(h)) + facts
    facts += found(training_facts(h, inputs.example_batch(family, processor, count=2, train=True).to(device)))
    facts += found([round_trip_fact(h, batch, cache_dir, device)])
    del h
    facts += found(trained_facts(c, device))
    if memory_skip is None:
        facts += found(memory_facts(c, cache_dir))
    else:
        facts += found([fact("gpu memory and time", SKIPPED, None, f"skipped: {memory_skip}")])
    return facts
