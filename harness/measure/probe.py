"""GPU memory and time of a loaded model: static VRAM, one training step's peak, OOM captured, budgets emulated."""
from __future__ import annotations

import functools
import gc
import time
from dataclasses import asdict, dataclass

from harness.checks.train import make_optimizer, train_step
from harness.util.errors import HarnessError
from harness.util.units import GiB


@dataclass
class StepResult:
    """One steady-state training step (forward, backward, optimizer step) at a batch size: ok or oom, and its memory.

    The step measured follows a warm-up step, as in a real run: the optimizer state already exists, and
    first-call costs (allocator growth, kernel autotuning, compilation) are reported apart, in warmup_time_ms.
    """

    batch_size: int
    status: str  # "ok" or "oom"
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    after_step_allocated_bytes: int | None = None  # static + adapters + their gradients + optimizer state
    step_time_ms: float | None = None
    warmup_time_ms: float | None = None
    tokens: int | None = None
    host_rss_bytes: int | None = None
    training_mode: bool = True
    checkpointing_layers: int = 0  # layers with gradient checkpointing switched on
    checkpointed_calls: int = 0  # layer calls that ran checkpointed in the measured forward
    error: str = ""

    @property
    def tokens_per_s(self) -> float | None:
        return None if not (self.tokens and self.step_time_ms) else 1000 * self.tokens / self.step_time_ms

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def apply_budget(budget_bytes: int | None, device: int = 0) -> None:
    """Cap what this process may allocate on the GPU (None lifts the cap), so a big GPU answers 'does it fit N GiB'."""
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    if budget_bytes is not None and budget_bytes > total:
        raise HarnessError(f"GPU budget {budget_bytes / GiB:.1f} GiB exceeds the GPU's {total / GiB:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(1.0 if budget_bytes is None else budget_bytes / total, device)


def release() -> None:
    """Return freed tensors to the GPU: collect garbage and empty the caching allocator."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@functools.cache
def warm_up() -> None:
    """Create cuBLAS's workspaces once per process (a bf16 and an fp32 GEMM, forward and backward).

    They stay allocated for the life of the process; made before the first measurement, they are part of the
    baseline every case is measured from, instead of being charged to whichever case happens to run first.
    """
    import torch

    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(256, 256, device="cuda", dtype=dtype, requires_grad=True)
        (a @ a).float().sum().backward()
    torch.cuda.synchronize()


def holes(snapshot: list[dict], device: int, stream: int) -> list[int]:
    """Return the sizes of the free blocks, largest first, that the caching allocator keeps inside its large-pool
    segments still holding a live block on this device and stream (torch.cuda.memory_snapshot()): what earlier work
    left behind and empty_cache cannot give back (a wholly free segment it does give back).

    Only the large pool (blocks over 1 MiB) counts a block taken from a hole differently from one taken from a new
    segment; the small pool splits off any remainder of 512 bytes or more, so where a small block lands changes no
    figure. (A small-pool hole could not be plugged anyway: a request over 1 MiB goes to the large pool.)"""
    return sorted((block["size"] for segment in snapshot
                   if segment["device"] == device and segment["stream"] == stream and segment["allocated_size"] > 0
                   and segment.get("segment_type") == "large"
                   for block in segment["blocks"] if block["state"] == "inactive"), reverse=True)


class Plugged(list):
    """The tensors filling a process's holes (plug_holes); free them (clear()) when the case is done."""

    @property
    def bytes(self) -> int:
        return sum(t.numel() for t in self)


def plug_holes() -> Plugged:
    """Fill every hole the process's earlier cases left in the caching allocator (holes()) with a tensor of its size,
    and return them: until they are freed, what a case allocates comes from new segments, split as in a fresh
    process, whatever ran here before. Without it a figure depends on the process's history: a block taken from a
    hole is counted whole when what is left of the hole is too small to split off (1 MiB or less), so a case
    measured after others can read up to a MiB more per allocation than the same case measured first, or alone.
    Each plug is a hole's exact size, so the allocator's best fit puts it in that hole (or one of the same size).
    The holes are reserved memory either way; plugging them changes no reserved figure and no budget."""
    import torch

    release()
    device, stream = torch.cuda.current_device(), torch.cuda.current_stream().cuda_stream
    return Plugged(torch.empty(size, dtype=torch.uint8, device="cuda")
                   for size in holes(torch.cuda.memory_snapshot(), device, stream))


def static_memory() -> dict:
    """Return the GPU memory held now: allocated and reserved bytes."""
    import torch

    torch.cuda.synchronize()
    return {"allocated_bytes": torch.cuda.memory_allocated(), "reserved_bytes": torch.cuda.memory_reserved()}


def memory_since(before: dict) -> dict:
    """Return the GPU memory held now beyond what was held at `before` (a static_memory() reading)."""
    now = static_memory()
    return {k: now[k] - before[k] for k in now}


def host_rss_bytes() -> int:
    """Return this process's resident host memory."""
    import psutil

    return psutil.Process().memory_info().rss


def is_oom(error: BaseException) -> bool:
    """Return whether an exception is a GPU out-of-memory."""
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def measure_step(model, batch, recipe, warmup: int = 1, training: bool = True) -> StepResult:
    """Return the memory and time of a steady-state training step on batch, after `warmup` steps.

    An OOM in any of them is recorded and its memory released. training=False runs the steps in eval mode
    (the trap that silently disables gradient checkpointing); the checkpointed layer calls are counted.
    """
    import torch

    from harness.checks.checkpointing import counting

    size = int(batch["input_ids"].shape[0]) if "input_ids" in batch else int(batch["pixel_values"].shape[0])
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else None
    optimizer = make_optimizer(model, recipe)
    release()
    torch.cuda.reset_peak_memory_stats()
    try:
        start = time.perf_counter()
        for _ in range(warmup):
            train_step(model, batch, optimizer, training)
        torch.cuda.synchronize()
        warmup_ms = 1000 * (time.perf_counter() - start) / max(warmup, 1) if warmup else None
        torch.cuda.reset_peak_memory_stats()
        with counting(model) as checkpointing:
            start = time.perf_counter()
            train_step(model, batch, optimizer, training)
            torch.cuda.synchronize()
            elapsed_ms = 1000 * (time.perf_counter() - start)
        return StepResult(size, "ok", torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved(),
                          torch.cuda.memory_allocated(), elapsed_ms, warmup_ms, tokens, host_rss_bytes(), training,
                          checkpointing.enabled_layers, checkpointing.checkpointed_calls)
    except Exception as e:  # noqa: BLE001 - only OOM is recorded; anything else propagates
        if not is_oom(e):
            raise
        return StepResult(size, "oom", torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved(),
                          tokens=tokens, host_rss_bytes=host_rss_bytes(), training_mode=training,
                          error=str(e).splitlines()[0][:200])
    finally:
        optimizer.zero_grad(set_to_none=True)
        for state in optimizer.state.values():
            state.clear()
        del optimizer
        release()


def largest_fitting_batch(model, make_batch, recipe, limit: int = 64) -> tuple[int, list[StepResult]]:
    """Return the largest batch size (doubling from 1) whose step fits the current budget, and every step tried."""
    tried, best, size = [], 0, 1
    while size <= limit:
        result = measure_step(model, make_batch(size), recipe)
        tried.append(result)
        if result.status != "ok":
            break
        best, size = size, size * 2
    return best, tried
