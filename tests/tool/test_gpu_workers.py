"""One pytest-xdist worker per GPU on a multi-GPU host (harness.plugin.gpus), shown without a GPU: the cards are
what CUDA_VISIBLE_DEVICES or `nvidia-smi -L` name, and each worker process ends up seeing one of them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.plugin import gpus, shared
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


def test_the_first_claim_of_a_run_wins_and_the_others_learn_who_holds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")

    first, second = shared.claim(tmp_path, "qwen2.5-7b"), shared.claim(tmp_path, "qwen2.5-7b")

    assert first == (True, f"gw3 (pid {os.getpid()})")
    assert second == (False, f"gw3 (pid {os.getpid()})")
    assert shared.claim(tmp_path, "never-claimed", take=False) == (False, None)


GROUPS = """
import os

import pytest


@pytest.mark.parametrize("n", range(2))
@pytest.mark.xdist_group("few")
def test_few(n):
    with open(os.environ["WHERE"], "a") as f:
        f.write("few\\n")


@pytest.mark.parametrize("n", range(6))
@pytest.mark.xdist_group("many")
def test_many(n):
    with open(os.environ["WHERE"], "a") as f:
        f.write("many\\n")
"""


def test_groups_go_out_in_collection_order_not_by_their_number_of_tests(pytester, monkeypatch):
    # the GPU tier collects its costliest group first and the Unsloth waiters last; pytest-xdist's own order
    # (most tests first) would hand a waiting group to a worker at the start
    pytester.makepyfile(test_groups=GROUPS)
    where = pytester.path / "where.txt"
    monkeypatch.setenv("WHERE", str(where))

    result = pytester.runpytest_subprocess("-p", "harness.plugin.gpus", "-p", "no:cacheprovider", "-n", "1",
                                           "--dist", "loadgroup")

    result.assert_outcomes(passed=8)
    assert where.read_text().split() == ["few"] * 2 + ["many"] * 6


SHOW_GROUPS = """
def pytest_collection_finish(session):
    for item in session.items:
        mark = item.get_closest_marker("xdist_group")
        print("GROUP", mark.args[0] if mark else "-", item.nodeid)
"""


def test_the_gpu_tier_runs_its_costliest_group_first_each_group_together_and_the_waiters_last(tmp_path):
    (tmp_path / "show_groups.py").write_text(SHOW_GROUPS)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu and not seed and not benchmark",
                          "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "show_groups"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    groups = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("GROUP ")]
    assert groups, out.stdout + out.stderr

    runs = [g for i, g in enumerate(groups) if i == 0 or groups[i - 1] != g]  # each group once: together
    assert len(runs) == len(set(runs)), runs
    assert runs[:2] == ["comparison-qwen2.5-vl-7b", "comparison-qwen2.5-7b"]  # six and three variants: the costliest
    assert runs.index("checkpoint-qwen2.5-vl-7b") < runs.index("checkpoint-qwen2.5-0.5b")  # its matrix case, the fit
    waiting = [g for g in runs if g.startswith("unsloth-")]
    assert waiting == runs[-len(waiting):] and len(waiting) == 2  # the Unsloth waiters, last
    assert "-" not in runs[:-len(waiting)] or runs.index("-") > runs.index("checkpoint-qwen2.5-0.5b")


def test_an_unsloth_record_is_the_steps_child_s_with_the_generation_child_s_generation():
    from harness.measure import unsloth_backend

    steps = {"case": "c--unsloth", "violations": [], "trainable_params": 10, "expected_trainable_params": 10,
             "without_gradient": [], "steps": [{"batch_size": 1}],
             "figures": {"static_allocated_bytes": 7, "peak_allocated_bs1_bytes": 8, "load_time_s": 8.0}}
    generation = {"case": "c--unsloth", "generation": {"deterministic": True}, "steps": [],
                  "figures": {"generation_time_s": 30.0, "load_time_s": 9.0}}

    record = unsloth_backend.merge({"steps": steps, "generation": generation})

    assert record["figures"] == {"static_allocated_bytes": 7, "peak_allocated_bs1_bytes": 8, "load_time_s": 8.0,
                                 "generation_child_generation_time_s": 30.0, "generation_child_load_time_s": 9.0}
    assert record["steps"] == [{"batch_size": 1}] and record["generation"] == {"deterministic": True}
    assert (record["violations"], record["trainable_params"], record["without_gradient"]) == ([], 10, [])


def test_an_unsloth_part_that_failed_makes_the_record_an_error_naming_it():
    from harness.measure import unsloth_backend

    record = unsloth_backend.merge({"steps": {"case": "c--unsloth", "error": "Traceback: CUDA out of memory"},
                                    "generation": {"case": "c--unsloth", "figures": {}}})

    assert record["error"] == "steps child:\nTraceback: CUDA out of memory"


ONCE = """
import os
import time
from pathlib import Path

import pytest

from harness.plugin import shared


@pytest.fixture(scope="session")
def profile(request):
    shared.once_per_run(shared.run_folder(request, Path(os.environ["CACHE"])), "qwen2.5-7b-nf4-dq-r16")
    return 42


@pytest.mark.parametrize("n", range(12))
@pytest.mark.xdist_group("checkpoint-qwen2.5-7b")
def test_reads_the_profile(profile, n):
    time.sleep(0.2)  # long enough that both workers get some of them under --dist load
    assert profile == 42
"""


@pytest.mark.parametrize("dist", ["loadgroup", "load"])
def test_a_profile_computed_twice_in_a_run_fails_saying_how_to_keep_its_tests_together(pytester, monkeypatch, dist):
    pytester.makepyfile(test_once=ONCE)
    monkeypatch.setenv("CACHE", str(pytester.mkdir("cache")))

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist", dist)

    outcomes, out = result.parseoutcomes(), result.stdout.str()
    if dist == "loadgroup":
        assert outcomes == {"passed": 12}, out
    else:  # the tests xdist sent to the second worker error there: their profile was the first worker's
        assert outcomes.get("errors", 0) >= 1 and outcomes.get("passed", 0) + outcomes.get("errors", 0) == 12, out
        result.stdout.fnmatch_lines(["*qwen2.5-7b-nf4-dq-r16: expected to be computed once per run, but gw* "
                                     "computed it already*run with --dist loadgroup*"])


def test_an_unsloth_child_started_before_its_checkpoint_waits_for_it_and_holds_it(tmp_path):
    import threading

    from harness.measure import unsloth_backend
    from harness.model import synth

    folder = tmp_path / "checkpoints" / "qwen2.5-0.5b-0123"

    def finish_the_build():  # what synthetic_checkpoint's atomic rename leaves: weights, then the marker
        folder.mkdir(parents=True)
        import torch
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(4)}, str(folder / "model.safetensors"))
        (folder / synth.MARKER).write_text("{}")

    threading.Timer(2.0, finish_the_build).start()
    lock = unsloth_backend.wait_for_checkpoint(folder, tmp_path / "never.abort", timeout_s=60, poll_s=0.2)

    assert synth.is_complete(folder)
    from harness.model import disk
    assert not disk.try_evict(folder)  # held: another build cannot evict it from under the child
    disk.release(lock)


def test_an_unsloth_child_whose_checkpoint_failed_to_build_says_why(tmp_path):
    from harness.measure import unsloth_backend
    from harness.util.errors import HarnessError

    abort = tmp_path / "job.abort"
    abort.write_text("OSError: No space left on device")

    with pytest.raises(HarnessError, match="the checkpoint qwen2.5-0.5b-0123 was not built: OSError: No space left"):
        unsloth_backend.wait_for_checkpoint(tmp_path / "qwen2.5-0.5b-0123", abort, timeout_s=60, poll_s=0.2)


NO_SMOLVLM = """
from harness.families import base

_real = base.FamilySpec.unavailable


def pytest_configure(config):  # this environment cannot build SmolVLM (as 4.57 without torchvision)
    base.FamilySpec.unavailable = lambda self: ("smolvlm: cannot import SmolVLMProcessor here" if self.name == "smolvlm"
                                                else _real(self))
"""


def test_a_gpu_matrix_family_this_environment_lacks_skips_at_setup_with_its_reason(tmp_path):
    # asked at setup, not at collection (where it cost each H200 worker 10 s): without the setup hook the case
    # would go on to build and load on a GPU, and here it would skip only for the missing GPU
    (tmp_path / "no_smolvlm.py").write_text(NO_SMOLVLM)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "pytest", "tests/gpu/test_full_size.py", "-m", "gpu", "-k",
                          "smolvlm or qwen3-0.6b", "-rs", "-q", "-p", "no:cacheprovider", "-p", "no_smolvlm"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)

    assert "SKIPPED [4] tests/gpu/conftest.py" in out.stdout and "cannot import SmolVLMProcessor here" in out.stdout, \
        out.stdout + out.stderr
