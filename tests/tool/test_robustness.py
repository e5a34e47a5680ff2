"""Robustness: bad input is refused by name, crashes leave nothing half-written, and the defaults are safe."""
import dataclasses
import json
import multiprocessing
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
import yaml

from harness import cli, doctor
from harness.checks.inputs import example_batch
from harness.families import get_family
from harness.measure import baselines
from harness.model import load, lora, pipeline, synth
from harness.model.generate import greedy
from harness.plugin import cases, isolation
from harness.recipe import RECIPES_DIR, default_recipe
from harness.util import atomic
from harness.util.errors import HarnessError

ROOT = Path(__file__).resolve().parents[2]  # the checkout, where pytest.ini and the root conftest are


def run_cli(capsys, *argv) -> tuple[int, str]:
    """Run the qlora-harness command in this process; return its exit status and what it wrote to stderr."""
    status = cli.main(list(argv))
    return status, capsys.readouterr().err


def recipe_file(tmp_path, **changes):
    """Write qwen2.5-vl's default recipe with changes ({'lora.r': 0}, {'family': 'x'}) and return its path."""
    data = yaml.safe_load((RECIPES_DIR / "qwen2.5-vl.yaml").read_text())
    for dotted, value in changes.items():
        *section, key = dotted.split(".")
        (data[section[0]] if section else data)[key] = value
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def qwen_vl_checkpoint(cache_dir):
    return synth.synthetic_checkpoint(get_family("qwen2.5-vl"), "tiny", cache_dir)


@pytest.fixture(scope="module")
def llm_checkpoint(cache_dir):
    return synth.synthetic_checkpoint(get_family("qwen2.5"), "tiny", cache_dir)


# --- Bad input: a HarnessError naming the thing and the fix; through the command line, exit 2 and no traceback.

BAD_RECIPES = [
    ({"family": "qwen25-vl"}, r"unknown model family 'qwen25-vl' \(did you mean qwen2.5-vl\?\)"),
    ({"lora.r": 0}, r"lora.r must be a positive integer, found 0"),
    ({"lora.alpha": -16}, r"lora.alpha must be positive, found -16"),
    ({"quantization.quant_type": "int4"}, r"quantization.quant_type must be one of nf4, fp4, found 'int4'"),
    ({"lora.rank": 8}, r"lora: unknown key 'rank'; known keys: .*target_roles"),
    ({"lora.target_roles": ["vision"]}, r"found 'vision' \(did you mean vision_tower\?\)"),
    ({"lora.target_roles": ["language_backbone", "projector"]},
     r"expect.projector.train is frozen, but lora.target_roles lists projector"),
    ({"lora.dropout": "high"}, r"lora.dropout must be a number, found 'high'"),
    ({"training.learning_rate": "2e-4"}, r"learning_rate must be a number, found '2e-4' \(YAML reads 2e-4 as text: write it with a dot"),
    ({"quantization.double_quant": "yes"}, r"quantization.double_quant must be true or false, found 'yes'"),
    ({"trust_remote_code": "yes"}, r"trust_remote_code must be true or false, found 'yes'"),
    ({"expect": ["vision_tower"]}, r"expect: expected a mapping of role to \{weights, train\}, found list"),
]


@pytest.mark.parametrize("changes,message", BAD_RECIPES, ids=[next(iter(c)) + f"={c[next(iter(c))]}" for c, _ in BAD_RECIPES])
def test_a_bad_recipe_through_the_command_line_exits_2_naming_the_problem(changes, message, tmp_path, capsys):
    status, err = run_cli(capsys, "doctor", "--recipe", str(recipe_file(tmp_path, **changes)))
    assert status == 2
    assert err.startswith("qlora-harness: error: ") and "mine.yaml: " in err
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    bad = recipe_file(tmp_path, **{"lora.r": 0})
    done = subprocess.run([sys.executable, "-m", "harness.cli", "doctor", "--recipe", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "lora.r must be a positive integer, found 0" in done.stderr and "Traceback" not in done.stderr


def test_pytest_with_a_bad_recipe_file_is_a_usage_error_not_a_traceback(tmp_path):
    bad = recipe_file(tmp_path, **{"lora.alpha": -1})
    done = subprocess.run([sys.executable, "-m", "pytest", "--recipe", str(bad), "--collect-only", "-q",
                           "-p", "no:cacheprovider", "tests/smoke/test_recipes.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert f"--recipe {bad}: {bad}: lora.alpha must be positive, found -1" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_a_target_role_whose_modules_match_nothing_is_refused_at_load():
    family = get_family("qwen2.5")
    model = load.meta_model(family, synth.make_config(family, "tiny"))
    embeddings_only = default_recipe("qwen2.5").replace(lora={"target_roles": ("embeddings",)})
    with pytest.raises(HarnessError, match=r"LoRA targets \['q_proj', 'k_proj', 'v_proj', 'o_proj'\] in roles "
                                           r"\['embeddings'\] of qwen2.5 match no Linear module; check lora.target_modules"):
        lora.lora_targets(model, family, embeddings_only)
    misspelt = default_recipe("qwen2.5").replace(lora={"target_modules": ("q_proj", "qkv_proj")})
    with pytest.raises(HarnessError, match=r"LoRA target modules \['qkv_proj'\] match no Linear module .* remove them or fix the name"):
        lora.lora_targets(model, family, misspelt)


def test_a_missing_checkpoint_folder_through_the_command_line(tmp_path, capsys):
    status, err = run_cli(capsys, "doctor", "--checkpoint", str(tmp_path / "absent"))
    assert status == 2 and "Traceback" not in err
    assert f"checkpoint folder {tmp_path / 'absent'} does not exist; give a folder with config.json" in err


def test_a_checkpoint_of_another_architecture_through_the_command_line(qwen_vl_checkpoint, capsys):
    status, err = run_cli(capsys, "doctor", "--recipe", str(RECIPES_DIR / "qwen2-vl.yaml"), "--checkpoint", str(qwen_vl_checkpoint))
    assert status == 2 and "Traceback" not in err
    assert "is a 'qwen2_5_vl' model, but family qwen2-vl expects model_type 'qwen2_vl'; pick the family" in err


def test_a_checkpoint_with_a_damaged_config_is_named(llm_checkpoint, tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(llm_checkpoint, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "config.json").write_text('{"model_type": "qwen2", ')
    with pytest.raises(HarnessError, match=r"damaged/config.json is not valid JSON .*; the checkpoint is damaged"):
        load.load_model(folder, get_family("qwen2.5"), default_recipe("qwen2.5"))


# --- Baselines: corrupt, from another GPU, from other versions.

VERSIONS = {"torch": "2.11.0", "transformers": "5.17.0", "peft": "0.21.0", "bitsandbytes": "0.50.2"}


def baseline(gpu="nvidia-h200-140gib-cuda13.0", versions=VERSIONS, peak=6_950_000_000):
    return {"case": "qwen2.5-7b-nf4-dq-r16", "gpu": gpu, "versions": versions,
            "figures": {"peak_allocated_bs1_bytes": peak, "status_bs1": "ok"}}


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", r"holds a list, not a record"),
    ('{"case": "x", "gpu": "g", "versions": {}}', r"lacks 'figures'"),
    ('{"case": "x", "gpu": "g", "versions": "5.17", "figures": {}}', r"'versions' should be a dict, found '5.17'"),
], ids=["not-a-record", "missing-key", "wrong-type"])
def test_a_corrupt_baseline_names_the_file_and_the_fix(text, message, tmp_path):
    path = tmp_path / "case.json"
    path.write_text(text)
    with pytest.raises(HarnessError, match=rf"baseline .*case.json.*{message}.*--update-baselines"):
        baselines.read_baseline(path)


def test_a_baseline_from_another_gpu_is_refused_naming_both():
    with pytest.raises(HarnessError, match=r"qwen2.5-7b-nf4-dq-r16: the baseline was recorded on GPU 'nvidia-a100-80gib-cuda12.4', "
                                           r"this run is on 'nvidia-h200-140gib-cuda13.0'; .* --update-baselines"):
        baselines.compare(baseline(), baseline(gpu="nvidia-a100-80gib-cuda12.4"))


def test_a_baseline_from_other_versions_is_compared_and_a_mismatch_says_which_differ():
    upgraded = {**VERSIONS, "transformers": "5.23.0"}
    assert baselines.compare(baseline(versions=upgraded), baseline()) == []
    (problem,) = baselines.compare(baseline(versions=upgraded, peak=8_000_000_000), baseline())
    assert problem.endswith("(versions differ: transformers 5.17.0 -> 5.23.0)")
    (same,) = baselines.compare(baseline(peak=8_000_000_000), baseline())
    assert same.endswith("(same versions)")


def test_every_stored_baseline_was_recorded_on_the_gpu_its_folder_names(pytestconfig):
    paths = sorted(baselines.project_baselines(pytestconfig.rootpath).glob("*/*.json"))
    assert paths
    for path in paths:
        assert baselines.read_baseline(path)["gpu"] == path.parent.name, path


# --- Missing bitsandbytes, unsloth or GPU: tests skip with that reason, the command line says so.

def test_the_doctor_names_what_is_missing_and_the_fix(monkeypatch, capsys):
    versions = {**doctor.library_versions(), "bitsandbytes": None, "unsloth": None}
    monkeypatch.setattr(doctor, "library_versions", lambda: versions)
    monkeypatch.setattr(doctor, "_gpu", lambda: None)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert ("bitsandbytes  missing: 4-bit loading (the smoke and GPU tiers) cannot run; "
            "pip install 'bitsandbytes>=0.49'") in out
    assert "unsloth       missing: the Unsloth backend (pytest -m unsloth) is skipped; pip install 'qlora-harness[unsloth]'" in out
    assert "CUDA GPU      missing: the GPU tier (pytest -m gpu) is skipped" in out
    assert doctor.missing("bitsandbytes") == "needs bitsandbytes: pip install 'bitsandbytes>=0.49'"


def test_the_doctor_passes_when_the_required_libraries_are_here(capsys):
    assert cli.main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in report["requirements"] if r["required"] and r["ok"]} == {
        "torch", "transformers", "peft", "bitsandbytes", "accelerate"}


def test_skips_say_what_is_missing():
    assert doctor.skip_reason("CUDA GPU") == "needs a CUDA GPU"
    assert doctor.skip_reason("unsloth") == "needs unsloth: pip install 'qlora-harness[unsloth]'"
    assert doctor.missing("bitsandbytes") is None  # installed here: the smoke tier runs


def test_a_case_loaded_twice_or_in_two_workers_is_named():
    assert cases.spread_problems([("gw0", "a", 1), ("gw1", "b", 1)]) == []
    assert cases.spread_problems([("gw0", "a", 2)]) == ["a: expected one load per worker, found 2 in gw0"]
    (problem,) = cases.spread_problems([("gw0", "a", 1), ("gw1", "a", 1)])
    assert problem.startswith("a: expected its tests in one worker (one load), found loads in 2 workers: gw0, gw1")


# --- Fault isolation: a crash mid-write leaves the previous file or folder intact and nothing temporary behind.

class CrashingFile:
    """A file that writes half of what it is given, then fails, as a process killed mid-write would."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, text):
        self.f.write(text[: len(text) // 2])
        self.f.flush()
        raise OSError("simulated crash mid-write")


def test_a_crash_while_writing_a_baseline_leaves_the_previous_one(tmp_path, monkeypatch):
    path = baselines.baseline_path(tmp_path, "nvidia-h200-140gib-cuda13.0", "case")
    baselines.write_baseline(path, baseline())
    real_fdopen = os.fdopen
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: CrashingFile(real_fdopen(fd, mode)))

    with pytest.raises(OSError, match="simulated crash"):
        baselines.write_baseline(path, baseline(peak=1))

    assert baselines.read_baseline(path) == baseline()
    assert atomic.leftovers(path.parent, path.name) == []


def test_a_crash_while_filling_a_folder_leaves_the_previous_one(tmp_path):
    final = tmp_path / "checkpoint"
    final.mkdir()
    (final / "model.safetensors").write_text("old weights")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic.staged_folder(final) as stage:
            (stage / "model.safetensors").write_text("half of the new")
            raise RuntimeError("crash")
    assert [p.name for p in final.iterdir()] == ["model.safetensors"]
    assert (final / "model.safetensors").read_text() == "old weights"
    with atomic.staged_folder(final) as stage:
        (stage / "model.safetensors").write_text("new weights")
    assert (final / "model.safetensors").read_text() == "new weights"
    assert atomic.leftovers(tmp_path, "checkpoint") == []


def test_a_crash_while_building_a_checkpoint_leaves_nothing_and_the_next_build_completes(tmp_path, monkeypatch):
    family = get_family("qwen2.5")

    def crash_before_the_marker(path, data):
        raise OSError("simulated crash before the marker")

    monkeypatch.setattr(synth, "write_json", crash_before_the_marker)  # weights and tokenizer are written by then
    with pytest.raises(OSError, match="simulated crash"):
        synth.synthetic_checkpoint(family, "tiny", tmp_path)
    checkpoints = tmp_path / "checkpoints"
    assert [p.name for p in checkpoints.iterdir() if not p.name.endswith(".lock")] == []

    monkeypatch.undo()
    folder = synth.synthetic_checkpoint(family, "tiny", tmp_path)
    assert synth.is_complete(folder) and (folder / "model.safetensors").is_file()
    assert [b["folder"] for b in synth.builds(tmp_path)] == [folder.name]
    assert atomic.leftovers(checkpoints, folder.name) == []


def test_a_killed_build_leaves_a_staging_folder_that_the_next_build_sweeps(tmp_path, monkeypatch):
    family = get_family("qwen2.5")
    key = synth.checkpoint_key(family, "tiny", 0)
    stale = tmp_path / "checkpoints" / f".qwen2.5-tiny-{key}.k1ll3d{atomic.PARTIAL}"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_text("half")

    def build(family, size, out, seed, device):  # whole weights (a header the size of the file) and the marker
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(out / "model.safetensors"))
        (out / synth.MARKER).write_text("{}")

    monkeypatch.setattr(synth, "_build", build)

    folder = synth.synthetic_checkpoint(family, "tiny", tmp_path)

    assert synth.is_complete(folder) and not stale.exists()


def test_concurrent_builders_of_one_checkpoint_build_it_once(tmp_path):
    family = get_family("qwen2.5")
    spawn = multiprocessing.get_context("spawn")  # fresh interpreters, as pytest-xdist workers are
    workers = [spawn.Process(target=synth.synthetic_checkpoint, args=(family, "tiny", tmp_path)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    (built,) = synth.builds(tmp_path)
    assert built["pid"] in {w.pid for w in workers}
    assert synth.is_complete(tmp_path / "checkpoints" / built["folder"])


class Payload:
    """Stands in for a tensor a failing test held."""


# A failing test's frames stay reachable from sys.last_* (pytest keeps them for post-mortem debugging) until
# the next test's call, and through a reference cycle with pytest's call record after that; the root conftest
# drops and collects them at teardown, before the next test's fixtures are set up.
_held = {}


def test_forgetting_the_last_failure_frees_what_its_frames_held():
    def fail():
        held = Payload()
        _held["unit"] = weakref.ref(held)
        raise RuntimeError("a test failure")

    try:
        fail()
    except RuntimeError as e:
        sys.last_type, sys.last_value, sys.last_traceback = type(e), e, e.__traceback__
    assert _held["unit"]() is not None
    isolation.after_test(on_gpu=False)
    assert _held["unit"]() is None and not hasattr(sys, "last_value")


# Not a check on its own: the fault the next test recovers from. Strict xfail is its assertion: it must raise
# RuntimeError (passing, or failing otherwise, fails the suite).
@pytest.mark.xdist_group("fault-isolation")
@pytest.mark.xfail(raises=RuntimeError, strict=True, reason="injected fault: a test fails while holding an object")
def test_a_failing_test_holding_memory():
    payload = Payload()
    _held["failed test"] = weakref.ref(payload)
    raise RuntimeError("injected fault")


@pytest.fixture
def held_at_setup():
    if "failed test" not in _held:
        pytest.skip("runs after test_a_failing_test_holding_memory, in the same process")
    return _held["failed test"]() is not None


@pytest.mark.xdist_group("fault-isolation")
def test_the_next_test_starts_without_what_the_failed_test_held(held_at_setup):
    assert held_at_setup is False


# --- Safe defaults: offline, no remote code, no pickle, no secrets written.

def test_the_harness_sets_offline_mode_before_the_hub_client_is_imported():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    # HF_HUB_OFFLINE is read once, when huggingface_hub.constants is imported (is_offline_mode() is newer than 0.x)
    done = subprocess.run([sys.executable, "-c", "import harness.model.load, huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr


def test_loading_and_generating_attempt_no_network_access(cache_dir, monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    case = pipeline.case("qwen2.5-vl", "tiny", default_recipe("qwen2.5-vl"))

    harnessed = pipeline.harness(case, cache_dir)
    tokens = greedy(harnessed.model, example_batch(case.family, harnessed.processor), max_new_tokens=2)

    assert tokens.shape == (1, 2)
    assert attempts == []


def spy_from_pretrained(monkeypatch, family):
    """Make the family's from_pretrained record its keyword arguments and stop; return the record."""
    import transformers

    seen = {}

    class Stop(Exception):
        pass

    def record(checkpoint, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(getattr(transformers, family.model_class), "from_pretrained", record)
    return seen, Stop


def test_remote_code_and_pickle_stay_off_unless_the_recipe_asks(llm_checkpoint, monkeypatch):
    family = get_family("qwen2.5")
    seen, stop = spy_from_pretrained(monkeypatch, family)
    recipe = default_recipe("qwen2.5")
    assert (recipe.trust_remote_code, recipe.allow_pickle) == (False, False)
    with pytest.raises(stop):
        load.load_model(llm_checkpoint, family, recipe)
    assert (seen["trust_remote_code"], seen["use_safetensors"], seen["local_files_only"]) == (False, True, True)
    with pytest.raises(stop):
        load.load_model(llm_checkpoint, family, dataclasses.replace(recipe, trust_remote_code=True))
    assert seen["trust_remote_code"] is True


def test_pickle_weights_load_only_when_the_recipe_allows_them(llm_checkpoint, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(llm_checkpoint, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(llm_checkpoint / "model.safetensors"), folder / "pytorch_model.bin")
    family, recipe = get_family("qwen2.5"), default_recipe("qwen2.5")

    with pytest.raises(HarnessError, match=r"has no \*.safetensors file \(found pytorch_model.bin\); pickle weights can run "
                                           r"code as they load: .* set allow_pickle: true in the recipe"):
        load.load_model(folder, family, recipe)
    model = load.load_model(folder, family, dataclasses.replace(recipe, allow_pickle=True))
    assert type(model).__name__ == family.model_class and model.is_loaded_in_4bit


def test_no_token_from_the_environment_is_written_into_a_record(tmp_path, monkeypatch):
    token = "hf_" + secrets.token_hex(17)
    github = "ghp_" + secrets.token_hex(18)  # token-shaped, though in no variable of this environment
    monkeypatch.setenv("HF_TOKEN", token)
    record = baseline()
    record["steps"] = [{"status": "oom", "error": f"GET https://huggingface.co/api?token={token} failed; {github}"}]
    record["recipe"] = {"source": f"/home/me/{token}/mine.yaml"}
    path = baselines.baseline_path(tmp_path, "nvidia-h200-140gib-cuda13.0", "case")

    baselines.write_baseline(path, record)
    atomic.write_json(tmp_path / "verdict.json", {"verdict": "fail", "why": f"HF_TOKEN={token}"})

    for written in (path, tmp_path / "verdict.json"):
        text = written.read_text()
        assert token not in text and github not in text and "<redacted>" in text
    assert baselines.read_baseline(path)["figures"] == record["figures"]


def test_written_records_and_folders_get_the_user_s_usual_permissions(tmp_path):
    import os

    previous = os.umask(0o022)
    try:
        atomic.write_json(tmp_path / "record.json", {"a": 1})
        with atomic.staged_folder(tmp_path / "merged") as stage:
            (stage / "config.json").write_text("{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "record.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert (tmp_path / "merged").stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
