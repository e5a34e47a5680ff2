"""A full-size case profiled once: audit, static VRAM against the NF4 minimum, training steps by batch size."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import inputs, load, memory, pipeline, probe
from .audit import audit
from .env import gpu_fingerprint, library_versions


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
        """Return the baseline record: case, recipe, GPU, versions and figures."""
        import dataclasses

        return {"case": self.case.id, "gpu": gpu_fingerprint(), "versions": library_versions(),
                "recipe": dataclasses.asdict(self.case.recipe), "figures": self.figures,
                "steps": [s.as_dict() for s in self.steps]}


def profile_case(case: pipeline.Case, batch_sizes, cache_dir: Path, device: str = "cuda") -> Profile:
    """Return the profile of a case: load in 4-bit on the GPU, audit, measure static and step memory."""
    recipe = case.recipe
    folder = pipeline.checkpoint_of(case, cache_dir, device=device)
    probe.release()
    start = time.perf_counter()
    model = load.load_model(folder, case.family, recipe, device=device)
    load_time_s = time.perf_counter() - start
    static = probe.static_memory()
    minimum = memory.inventory_bytes(model, recipe.quantization.double_quant)
    model, _, expected = pipeline.adapt(case, model)
    base = model.get_base_model()
    with_adapters = probe.static_memory()
    report = audit(model, case.family, recipe, case.id)
    processor = load.load_processor(folder, case.family)
    figures = {
        "static_allocated_bytes": static["allocated_bytes"],
        "static_reserved_bytes": static["reserved_bytes"],
        "minimum_bytes": minimum["total"],
        "static_over_minimum": static["allocated_bytes"] / minimum["total"],
        "adapter_bytes": with_adapters["allocated_bytes"] - static["allocated_bytes"],
        "load_time_s": load_time_s,
    }
    steps = []
    for size in batch_sizes:
        image = recipe.training.image_size
        batch = inputs.sized_batch(case.family, processor, size, image, recipe.training.seq_len, device)
        step = probe.measure_step(model, batch, recipe)
        del batch
        steps.append(step)
        figures[f"status_bs{size}"] = step.status
        if step.status == "ok":
            figures[f"peak_allocated_bs{size}_bytes"] = step.peak_allocated_bytes
            figures[f"peak_reserved_bs{size}_bytes"] = step.peak_reserved_bytes
            figures[f"activations_bs{size}_bytes"] = step.peak_allocated_bytes - step.after_step_allocated_bytes
            figures[f"optimizer_and_adapters_bs{size}_bytes"] = step.after_step_allocated_bytes - static["allocated_bytes"]
            figures[f"step_time_bs{size}_ms"] = step.step_time_ms
            figures[f"host_rss_bs{size}_bytes"] = step.host_rss_bytes
    result = Profile(case, folder, report.violations(recipe), report.trainable_params, expected,
                     bool(base.is_gradient_checkpointing), figures, steps)
    del model, base
    probe.release()
    return result
