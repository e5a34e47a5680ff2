"""One pytest-xdist worker per GPU on a multi-GPU host (harness.plugin.gpus), shown without a GPU: the cards are
what CUDA_VISIBLE_DEVICES or `nvidia-smi -L` name, and each worker process ends up seeing one of them."""
import pytest

from harness.plugin import gpus
from harness.util.env import visible_gpus

pytest_plugins = ["pytester"]

SMI = "GPU 0: NVIDIA H200 (UUID: GPU-a)\nGPU 1: NVIDIA H200 (UUID: GPU-b)\nGPU 2: NVIDIA H200 (UUID: GPU-c)\n"


def test_visible_gpus_follow_cuda_visible_devices_then_nvidia_smi():
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({}, smi=SMI) == ["0", "1", "2"]
    assert visible_gpus({}, smi="") == []


@pytest.mark.parametrize("worker, devices, card", [
    ("gw0", ["0", "1"], "0"), ("gw1", ["0", "1"], "1"), ("gw2", ["0", "1"], "0"),  # more workers than cards
    ("gw1", ["4", "6"], "6"),  # the names CUDA_VISIBLE_DEVICES gave
    ("gw1", ["0"], None), ("gw0", [], None), ("", ["0", "1"], None),  # one card, none, not a worker
])
def test_each_worker_takes_the_cards_in_turn(worker, devices, card):
    assert gpus.card_for(worker, devices) == card


def test_auto_workers_count_gpus_only_for_the_gpu_tier():
    assert gpus.wants_gpus("gpu") and gpus.wants_gpus("gpu and not seed")
    assert not gpus.wants_gpus("smoke") and not gpus.wants_gpus("not gpu")


INNER = """
import os

def test_where_am_i():
    seen = os.path.join(os.environ["SEEN"], os.environ["PYTEST_XDIST_WORKER"])
    open(seen, "w").write(os.environ["CUDA_VISIBLE_DEVICES"])
"""


@pytest.mark.parametrize("plugin, expected", [(["-p", "harness.plugin.gpus"], {"gw0": "4", "gw1": "6"}),
                                              ([], {"gw0": "4,6", "gw1": "4,6"})], ids=["pinned", "without-plugin"])
def test_two_workers_on_two_cards_see_one_card_each(pytester, monkeypatch, plugin, expected):
    pytester.makepyfile(test_a=INNER, test_b=INNER)
    seen = pytester.mkdir("seen")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setenv("SEEN", str(seen))

    # --dist each: both tests run on both workers, so each worker reports what it sees
    result = pytester.runpytest_subprocess(*plugin, "-p", "no:cacheprovider", "-n", "2", "--dist", "each")

    result.assert_outcomes(passed=4)
    assert {p.name: p.read_text() for p in seen.iterdir()} == expected


def test_n_auto_on_the_gpu_tier_starts_one_worker_per_card(pytester, monkeypatch):
    pytester.makepyfile(test_a="import pytest\n\n@pytest.mark.gpu\ndef test_x():\n    pass\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")

    result = pytester.runpytest_subprocess("-p", "harness.plugin.gpus", "-p", "no:cacheprovider", "-n", "auto",
                                           "-m", "gpu", "-W", "ignore::pytest.PytestUnknownMarkWarning")

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*3 workers*"])


SHARED = """
import os
from pathlib import Path

import pytest

from harness.plugin import shared


@pytest.fixture
def record(request):
    def compute():
        with open(os.environ["COMPUTED"], "a") as f:
            f.write(os.environ.get("PYTEST_XDIST_WORKER", "-") + "\\n")
        return {"value": 42}

    return shared.once(shared.run_folder(request, Path(os.environ["CACHE"])), "expensive", compute)[0]


@pytest.mark.parametrize("n", range(4))
def test_asks_for_the_record(record, n):
    assert record == {"value": 42}
"""


def test_a_record_shared_by_the_workers_of_a_run_is_computed_once(pytester, monkeypatch):
    # the GPU tier's Unsloth runs: asked for by several workers, minutes each, run once per test run
    pytester.makepyfile(test_shared=SHARED)
    computed = pytester.path / "computed.txt"
    monkeypatch.setenv("COMPUTED", str(computed))
    monkeypatch.setenv("CACHE", str(pytester.mkdir("cache")))

    for _ in range(2):  # a second run computes it again: the record belongs to one run
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist", "load")
        result.assert_outcomes(passed=4)

    assert len(computed.read_text().splitlines()) == 2
