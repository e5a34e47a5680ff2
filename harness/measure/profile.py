"""A full-size case profiled once: audit, static VRAM against the NF4 minimum, training steps by batch size."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.checks import checkpointing, inputs
from harness.checks.audit import audit
from harness.model import load, pipeline
from harness.util.env import gpu_fingerprint, gpu_workers, library_versions
from harness.util.units import parse_bytes

from . import memory, probe


@dataclass
class Profile:
    """What one case measured on the GPU, and the record a baseline stores."""

    case: pipeline.Case
    checkpoint: Path
    violations: list[str]
    trainable_params: int
    expected_trainable_params: int
    gradient_checkpointing: bool
    figures: dict[str, Any] = field(default_factory=dict)
    steps: list[probe.StepResult] = field(default_factory=list)

    def record(self) -> dict:
        """Return the baseline record: case, recipe, GPU, versions, figures and how many processes shared the GPU."""
        import dataclasses

        return {"case": self.case.id, "gpu": gpu_fingerprint(), "workers": gpu_workers(), "versions": library_versions(),
                "recipe": dataclasses.asdict(self.case.recipe), "figures": self.figures,
                "steps": [s.as_dict() for s in self.steps]}


def step_figures(step: probe.StepResult, static_allocated: int, offset: int = 0) -> dict[str, Any]:
    """Return a step's figures keyed by batch size: status; when it ran, peak, breakdown, time and throughput.

    offset is what the process held on the GPU before the model loaded (CUDA workspaces of earlier runs):
    it is taken off every absolute figure, so a case measures the same wherever it runs in a session.
    """
    n = step.batch_size
    figures: dict[str, Any] = {f"status_bs{n}": step.status}
    if step.status != "ok":
        return figures
    figures.update({
        f"peak_allocated_bs{n}_bytes": step.peak_allocated_bytes - offset,
        f"peak_reserved_bs{n}_bytes": step.peak_reserved_bytes - offset,
        f"activations_bs{n}_bytes": step.peak_allocated_bytes - step.after_step_allocated_bytes,
        f"optimizer_and_adapters_bs{n}_bytes": step.after_step_allocated_bytes - offset - static_allocated,
        f"step_time_bs{n}_ms": step.step_time_ms,
        f"warmup_step_time_bs{n}_ms": step.warmup_time_ms,
        f"tokens_per_s_bs{n}": step.tokens_per_s,
        f"host_rss_bs{n}_bytes": step.host_rss_bytes,
        f"checkpointed_calls_bs{n}": step.checkpointed_calls,
    })
    return figures


def step_budget(recipe, session_budget: int | None) -> int | None:
    """Return the GPU budget a recipe's steps run under: the smaller of its own and the session's."""
    own = parse_bytes(recipe.training.gpu_budget) if recipe.training.gpu_budget else None
    given = [b for b in (own, session_budget) if b is not None]
    return min(given) if given else None


def profile_case(case: pipeline.Case, batch_sizes, cache_dir: Path, device: str = "cuda",
                 training: bool = True, budget: int | None = None) -> Profile:
    """Return the profile of a case: load on the GPU as its recipe says, audit, measure static and step memory.

    training=False runs the steps in eval mode (a comparison variant demonstrating the checkpointing trap).
    budget is the session's GPU cap (--gpu-budget); a recipe's training.gpu_budget tightens it for its steps.
    """
    recipe = case.recipe
    with pipeline.reading(case, cache_dir, device=device) as folder:
        probe.warm_up()
        plugs = probe.plug_holes()  # what earlier cases left: this case's figures as if it ran first
        before = probe.static_memory()  # cuBLAS workspaces, what earlier cases left and the plugs: not this model's
        start = time.perf_counter()
        model = load.load_model(folder, case.family, recipe, device=device)
        load_time_s = time.perf_counter() - start
        processor = load.load_processor(folder, case.family)
    static_base = probe.memory_since(before)
    minimum = memory.inventory_bytes(model, recipe.quantization.double_quant)
    upcast = memory.upcast_bytes(model)
    prepared = {}
    # static VRAM is read once the base is prepared (peft's k-bit preparation upcasts in place), before LoRA
    model, _, expected = pipeline.adapt(case, model, on_prepared=lambda _: prepared.update(probe.memory_since(before)))
    base = model.get_base_model()
    static = prepared
    with_adapters = probe.memory_since(before)
    report = audit(model, case.family, recipe, case.id)
    figures = {
        "static_allocated_bytes": static["allocated_bytes"],
        "static_reserved_bytes": static["reserved_bytes"],
        "loaded_allocated_bytes": static_base["allocated_bytes"],
        "minimum_bytes": minimum["total"],
        "static_over_minimum": static_base["allocated_bytes"] / minimum["total"],
        "fp32_upcast_bytes": upcast,
        "adapter_bytes": with_adapters["allocated_bytes"] - static["allocated_bytes"],
        "load_time_s": load_time_s,
        "process_baseline_allocated_bytes": before["allocated_bytes"] - plugs.bytes,
        "process_holes_bytes": plugs.bytes,
        "checkpointing_layers": len(checkpointing.enabled_layers(model)),
    }
    steps = []
    figures["step_budget_bytes"] = step_budget(recipe, budget)
    try:
        probe.apply_budget(figures["step_budget_bytes"])
        for size in batch_sizes:
            image = recipe.training.image_size
            batch = inputs.sized_batch(case.family, processor, size, image, recipe.training.seq_len, device)
            step = probe.measure_step(model, batch, recipe, training=training)
            del batch
            steps.append(step)
            figures.update(step_figures(step, static["allocated_bytes"], before["allocated_bytes"]))
    finally:
        probe.apply_budget(budget)
    result = Profile(case, folder, report.violations(recipe), report.trainable_params, expected,
                     bool(base.is_gradient_checkpointing), figures, steps)
    del model, base
    plugs.clear()
    probe.release()
    return result
