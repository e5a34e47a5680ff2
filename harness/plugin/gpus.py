"""One pytest-xdist worker per GPU: `pytest -m gpu -n auto` starts as many workers as there are visible GPUs and
pins each to its own card before CUDA starts, so every case's figures stay those of one card.

On one GPU (or none) nothing is pinned; `-n N` with an explicit N still shares one card between N processes
(.ci/gpu-run does that on a single H200: memory figures are per process).

Under `--dist loadgroup` the groups go out in collection order (pytest-xdist ≥ 3.6 would otherwise sort them by
their number of tests): the GPU tier orders its groups itself, longest first, the tests that only wait last.
"""
from __future__ import annotations

import os

import pytest

from harness.util.env import visible_gpus


def card_for(worker: str, devices: list[str]) -> str | None:
    """Return the device a worker ('gw0', 'gw1', ...) is pinned to: workers take the cards in turn; None on one card."""
    if len(devices) < 2 or not worker.startswith("gw") or not worker[2:].isdigit():
        return None
    return devices[int(worker[2:]) % len(devices)]


def pin_this_worker(worker: str, environ=os.environ) -> str | None:
    """Pin xdist worker `worker` (this process) to its card (CUDA_VISIBLE_DEVICES) if several are visible; return
    the card or None."""
    card = card_for(worker, visible_gpus(environ))
    if card is not None:
        environ["CUDA_VISIBLE_DEVICES"] = card
    return card


def wants_gpus(markexpr: str) -> bool:
    """Return whether a -m expression selects the GPU tier."""
    return "gpu" in markexpr and "not gpu" not in markexpr


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    worker = getattr(config, "workerinput", {}).get("workerid")  # set by pytest-xdist in its worker processes only
    if worker:
        pin_this_worker(worker)  # before any test, so before CUDA is initialised in this process
    elif getattr(config.option, "dist", None) == "loadgroup":
        config.option.loadscopereorder = False  # read by the controller's scheduler: keep the collection's order


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # before xdist's own answer (the CPU count)
def pytest_xdist_auto_num_workers(config):
    """`-n auto` on the GPU tier: one worker per visible GPU (xdist's own default counts CPUs)."""
    if wants_gpus(config.getoption("markexpr", "") or ""):
        devices = visible_gpus()
        if devices:
            return len(devices)
    return None
