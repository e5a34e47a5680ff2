"""Bad input, round two (issue 18): what a hostile new user tried. Each test is one of their attempts: no false
pass, no traceback, no secret in a log, nothing half-written; bad input exits 2 (pytest: 4) with one line."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import cli
from harness.families import get_family
from harness.gate import collect, envs
from harness.model import load, synth
from harness.recipe import RECIPES_DIR, default_recipe, load_recipe
from harness.util import atomic
from harness.util.errors import HarnessError

ROOT = Path(__file__).resolve().parents[2]  # the checkout
TOKEN = "hf_" + "Q7x" * 10  # the shape of a Hugging Face token


def run_cli(capsys, *argv) -> tuple[int, str]:
    """Run the command in this process; return its exit status and stderr. A Ctrl-C that escapes fails the test
    (rather than stopping the session)."""
    try:
        status = cli.main([str(a) for a in argv])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the command: the user sees a traceback")
    return status, capsys.readouterr().err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err and err.startswith("qlora-harness: error: "), err
    assert len(err) < 2000, f"{len(err)} characters"
    return err


def recipe_file(tmp_path, base="qwen2.5-vl.yaml", file_name="mine.yaml", **changes):
    """Write a shipped recipe with changes ({'lora.r': 0}) and return its path."""
    data = yaml.safe_load((RECIPES_DIR / base).read_text())
    for dotted, value in changes.items():
        *section, key = dotted.split(".")
        (data.setdefault(section[0], {}) if section else data)[key] = value
    path = tmp_path / file_name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def llm_checkpoint(cache_dir):
    return synth.synthetic_checkpoint(get_family("qwen2.5"), "tiny", cache_dir)


# --- 1. No false pass: a recipe like a default but for its targets gets its own id and its own model ---------------

def test_a_recipe_that_differs_from_a_default_only_outside_the_id_is_tested_on_its_own_model(tmp_path, cache_dir):
    # Same family, quantization and r as qwen2.5-vl's default (so the same old id), but it expects the vision
    # tower 16-bit while quantizing it: its own model breaks that expectation, the default's model would not.
    mine = recipe_file(tmp_path, **{"expect.vision_tower": {"weights": "16bit", "train": "frozen"}})
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rf", "--recipe", str(mine),
                           "--cache-dir", str(cache_dir), "tests/smoke/test_roles.py::test_every_role_keeps_the_recipes_expectations",
                           "-k", "qwen2.5-vl-tiny"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:]  # not a false pass on the default's model
    assert "1 failed, 1 passed" in done.stdout
    assert "FAILED tests/smoke/test_roles.py::test_every_role_keeps_the_recipes_expectations" \
           "[qwen2.5-vl-tiny-nf4-dq-r64-qwen2.5-vl-qlora]" in done.stdout
    assert "vision tower of qwen2.5-vl-tiny-nf4-dq-r64-qwen2.5-vl-qlora: expected 16-bit, found" in done.stdout


def test_every_recipe_file_gets_a_distinct_id(tmp_path):
    shipped = default_recipe("qwen2.5-vl")
    copy = load_recipe(recipe_file(tmp_path, **{"lora.target_modules": ["q_proj", "v_proj"]}))
    assert shipped.test_id("tiny") == "qwen2.5-vl-tiny-nf4-dq-r64"  # the id its baselines are stored under
    assert copy.test_id("tiny") != shipped.test_id("tiny")


# --- 2. `qlora-harness run PATH` runs PATH ------------------------------------------------------------------------

@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """run_experiment replaced by one that records what it was asked to run and writes an empty result."""
    from harness.tasks import run

    calls = []

    def fake(exp, size, out_dir, cache_dir, **kwargs):
        calls.append({"experiment": exp.name, **kwargs})
        path = Path(out_dir) / f"{exp.name}.json"
        atomic.write_json(path, {"records": []})
        return path

    monkeypatch.setattr(run, "run_experiment", fake)
    return calls


def test_run_loads_the_file_it_is_given(tmp_path, capsys, fake_run):
    seed = RECIPES_DIR / "seed-clip-static-dynamic.yaml"
    edited = tmp_path / seed.name
    edited.write_text(seed.read_text().replace("r: 2", "r: 4", 1) + "\nwhatever: 1\n")
    status, err = run_cli(capsys, "run", edited, "--out", tmp_path / "out")
    assert status == 2 and f"{edited}: unknown key 'whatever'" in one_line_error(err)
    assert fake_run == []

    edited.write_text(seed.read_text().replace("r: 2", "r: 4", 1))
    assert run_cli(capsys, "run", edited, "--out", tmp_path / "out")[0] == 0
    assert fake_run[-1]["recipe_path"] == edited


def test_run_refuses_a_recipe_path_that_does_not_exist(tmp_path, capsys, fake_run):
    status, err = run_cli(capsys, "run", tmp_path / "seed-clip-static-dynamic.yaml", "--out", tmp_path / "out")
    assert status == 2 and "seed-clip-static-dynamic.yaml does not exist" in one_line_error(err)
    assert fake_run == []


# --- 3. A YAML alias bomb -------------------------------------------------------------------------------------------

def bomb(levels=6, width=10) -> str:
    """Return a YAML flow list of a few hundred characters that expands to width**levels scalars."""
    parts = ["&a0 [" + ", ".join(["x"] * width) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


BOMBED = {"name": "name: {}\nfamily: qwen2.5\n", "family": "name: x\nfamily: {}\n",
          "lora.target_modules": "name: x\nfamily: qwen2.5\nlora:\n  target_modules: {}\n"}


@pytest.mark.parametrize("where", list(BOMBED))
def test_a_yaml_alias_bomb_is_refused_in_one_short_line(where, tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBED[where].format(bomb()))
    status, err = run_cli(capsys, "doctor", "--recipe", path)
    assert status == 2 and "aliases expand to more than" in one_line_error(err)


def test_a_long_value_is_cut_short_in_the_message(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(f"name: x\nfamily: {'q' * 100_000}\n")
    status, err = run_cli(capsys, "doctor", "--recipe", path)
    assert status == 2 and "(100000 characters)" in one_line_error(err) and len(err) < 1000


# --- 4. No traceback, no INTERNALERROR --------------------------------------------------------------------------

@pytest.mark.parametrize("changes,message", [
    ({"expect.head": {}}, r"expect.head: missing weights, train"),
    ({"training.gpu_budget": "..."}, r"training.gpu_budget: memory size '...': expected a number with GiB"),
], ids=["expect-head-empty", "gpu-budget-dots"])
def test_a_malformed_section_is_an_error_not_a_traceback(changes, message, tmp_path, capsys):
    status, err = run_cli(capsys, "doctor", "--recipe", recipe_file(tmp_path, base="qwen2.5.yaml", **changes))
    assert status == 2 and re.search(message, one_line_error(err)), err


def test_a_recipe_file_that_is_not_utf8_is_named(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: r\u00e9sum\u00e9\nfamily: qwen2.5\n".encode("latin-1"))
    status, err = run_cli(capsys, "doctor", "--recipe", path)
    assert status == 2 and "is not UTF-8 text (byte 0xe9 on line 1); save it as UTF-8" in one_line_error(err)


def test_an_unreadable_recipe_file_is_named(capsys):
    # /proc/self/mem is a file that fails as it is read, even for root (a chmod 000 file would not)
    status, err = run_cli(capsys, "doctor", "--recipe", "/proc/self/mem")
    assert status == 2 and "recipe file /proc/self/mem cannot be read" in one_line_error(err)


def test_a_recipe_path_that_is_a_folder_is_called_a_folder(tmp_path, capsys):
    status, err = run_cli(capsys, "doctor", "--recipe", tmp_path)
    assert status == 2 and f"recipe file {tmp_path} is a folder, not a file" in one_line_error(err)


@pytest.fixture
def results(tmp_path):
    """A folder holding one (tiny, CPU) experiment result, enough for a report."""
    folder = tmp_path / "results"
    record = {"case": "clip-tiny-nf4-dq-r2--qlora", "variant": "qlora", "label": "QLoRA", "model_size": "tiny",
              "family": "clip", "backend": "peft", "status": "ok",
              "figures": {"status_bs2": "ok", "peak_allocated_bs2_bytes": 2**30, "status_bs4": "ok",
                          "peak_allocated_bs4_bytes": 2**31}}
    atomic.write_json(folder / "seed-clip-static-dynamic.json", {
        "experiment": "seed-clip-static-dynamic", "title": "CLIP", "recipe": "recipes/x.yaml", "kind": "profile",
        "size": "tiny", "device": "cpu", "gpu": None, "versions": {}, "settings": {}, "complete": True,
        "records": [record, {**record, "variant": "qlora-gc", "label": "QLoRA + GC"}]})
    return folder


def out_args(tmp_path, kind):
    if kind == "file":
        (tmp_path / "taken").write_text("a file")
        return tmp_path / "taken", "is a file, not a folder"
    return Path("/sys/qlora-harness-out"), "cannot write in /sys"  # not writable, even for root


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_report_checks_its_out_folder_before_the_work(kind, tmp_path, capsys, results):
    out, message = out_args(tmp_path, kind)
    status, err = run_cli(capsys, "report", results, "--out", out)
    assert status == 2 and message in one_line_error(err)


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_run_checks_its_out_folder_before_the_work(kind, tmp_path, capsys, monkeypatch):
    from harness.tasks import run

    monkeypatch.setattr(run, "run_experiment", lambda *a, **k: pytest.fail("the run started before --out was checked"))
    out, message = out_args(tmp_path, kind)
    status, err = run_cli(capsys, "run", RECIPES_DIR / "seed-clip-static-dynamic.yaml", "--out", out)
    assert status == 2 and message in one_line_error(err)


def no_collectors(*args, **kwargs):
    pytest.fail("the gate started its environments before its input was checked")


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_gate_checks_its_out_folder_before_the_work(kind, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(envs, "run_collectors", no_collectors)
    out, message = out_args(tmp_path, kind)
    status, err = run_cli(capsys, "gate", "--candidate", sys.executable, "--recipe", RECIPES_DIR / "qwen2.5.yaml",
                          "--out", out)
    assert status == 2 and message in one_line_error(err)


@pytest.mark.parametrize("command", ["run", "gate"])
def test_a_cache_dir_that_is_a_file_is_named(command, tmp_path, capsys, monkeypatch):
    from harness.tasks import run

    monkeypatch.setattr(run, "run_experiment", lambda *a, **k: pytest.fail("the run started"))
    monkeypatch.setattr(envs, "run_collectors", no_collectors)
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    argv = (["run", RECIPES_DIR / "seed-clip-static-dynamic.yaml", "--out", tmp_path / "out"] if command == "run" else
            ["gate", "--candidate", sys.executable, "--recipe", RECIPES_DIR / "qwen2.5.yaml", "--out", tmp_path / "v"])
    status, err = run_cli(capsys, *argv, "--cache-dir", cache)
    assert status == 2 and f"{cache} is a file, not a folder" in one_line_error(err)


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def interrupted(err: str) -> None:
    lines = err.strip().splitlines()  # progress lines may come first
    assert "Traceback" not in err and lines[-1].startswith("qlora-harness: interrupted: "), err
    assert sum("interrupted" in line for line in lines) == 1, err


def test_ctrl_c_in_run_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    from harness.tasks import run

    monkeypatch.setattr(run, "run_experiment", ctrl_c)
    status, err = run_cli(capsys, "run", RECIPES_DIR / "seed-clip-static-dynamic.yaml", "--out", tmp_path / "out")
    assert status == 130
    interrupted(err)


def test_ctrl_c_in_a_checkpoint_build_leaves_no_half_built_checkpoint(tmp_path, capsys, monkeypatch):
    def build_then_ctrl_c(family, size, out, seed, device):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_build", build_then_ctrl_c)
    status, err = run_cli(capsys, "run", RECIPES_DIR / "seed-clip-static-dynamic.yaml", "--out", tmp_path / "out",
                          "--cache-dir", tmp_path / "cache")
    assert status == 130
    interrupted(err)
    built = [p.name for p in (tmp_path / "cache" / "checkpoints").iterdir() if not p.name.endswith(".lock")]
    assert built == []


def test_ctrl_c_in_report_keeps_the_previous_report_whole(tmp_path, capsys, monkeypatch, results):
    from harness.report import plots

    out = tmp_path / "report"
    assert run_cli(capsys, "report", results, "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    drawn = []
    original = plots.draw

    def draw_then_ctrl_c(chart, path):
        drawn.append(original(chart, path))  # a new plot is written, then Ctrl-C
        raise KeyboardInterrupt

    assert any(name.endswith(".png") for name in before)
    monkeypatch.setattr(plots, "draw", draw_then_ctrl_c)
    status, err = run_cli(capsys, "report", results, "--out", out)
    assert status == 130 and drawn
    interrupted(err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # not a mix of old and new plots
    assert atomic.leftovers(tmp_path, "report") == []


def test_ctrl_c_in_gate_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(envs, "run_collectors", ctrl_c)
    status, err = run_cli(capsys, "gate", "--candidate", sys.executable, "--recipe", RECIPES_DIR / "qwen2.5.yaml",
                          "--out", tmp_path / "v")
    assert status == 130
    interrupted(err)
    assert not (tmp_path / "v" / "verdict.json").exists()


# --- 5. Valid on paper, failing later: refused up front ---------------------------------------------------------

PAPER = [
    ({"lora.alpha": float("nan")}, r"lora.alpha must be a finite number above 0 .*found nan"),
    ({"lora.alpha": float("inf")}, r"lora.alpha must be a finite number above 0 .*found inf"),
    ({"training.learning_rate": -2e-4}, r"training.learning_rate must be a finite number above 0"),
    ({"training.learning_rate": float("nan")}, r"training.learning_rate must be a finite number above 0"),
    ({"lora.r": 10**9}, r"lora.r is 1000000000, above 8192"),
    ({"training.seq_len": 10**12}, r"training.seq_len is 1,000,000,000,000, above 131,072"),
    ({"training.gpu_budget": 16}, r"training.gpu_budget must be a string, found 16"),
    ({"training.gpu_budget": "16"}, r"training.gpu_budget '16' is 16 bytes; give a card's memory with its unit"),
    ({"training.gpu_budget": "0GiB"}, r"training.gpu_budget '0GiB' is 0 bytes"),
    ({"training.optimizer": "adamw_troch"}, r"training.optimizer must be one of .* \(did you mean adamw_torch\?\)"),
    ({"lora.target_roles": []}, r"lora.target_roles is empty, so nothing would be adapted"),
    ({"name": None}, r"name must be a non-empty text such as my-qlora, found None"),
    ({"lora.target_modules": ["q_proj", "qkv_proj"]},
     r"lora.target_modules \['qkv_proj'\] match no Linear module in roles \['language_backbone'\] of qwen2.5"),
]


@pytest.mark.parametrize("changes,message", PAPER, ids=[f"{k}={v}" for c, _ in PAPER for k, v in c.items()])
def test_doctor_refuses_what_would_fail_later(changes, message, tmp_path, capsys):
    status, err = run_cli(capsys, "doctor", "--recipe", recipe_file(tmp_path, base="qwen2.5.yaml", **changes))
    assert status == 2 and re.search(message, one_line_error(err)), err


# --- 6. A minimal recipe ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["clip", "qwen2.5", "qwen2.5-vl", "qwen2-vl"])
def test_a_minimal_recipe_is_valid_for_every_family(family, tmp_path, capsys):
    path = tmp_path / "minimal.yaml"
    path.write_text(f"name: minimal\nfamily: {family}\n")
    assert run_cli(capsys, "doctor", "--recipe", path)[0] == 0
    recipe = load_recipe(path)
    assert set(recipe.quantization.keep_16bit) <= set(get_family(family).roles)


# --- 7. Secrets never reach a log -------------------------------------------------------------------------------

def test_the_collector_logs_are_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    log = tmp_path / "logs" / "candidate-collect.log"
    pythonpath = envs.harness_path(tmp_path / "path")
    job = (envs.Environment(Path(sys.executable)), ["--out", str(tmp_path / "f.json"), "--recipe",
                                                    str(tmp_path / f"{TOKEN}.yaml")], log)
    (status,) = envs.run_collectors([job], pythonpath)
    text = log.read_text()
    assert status == 2 and "does not exist" in text  # the collector printed the path...
    assert TOKEN not in text and "<redacted>" in text  # ...and the log holds it redacted


# --- 8. pytest --recipe: the space form, and bad input a usage error (exit 4) -----------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A PYTHONPATH on which the harness is 'installed': a dist-info with the package's pytest11 entry point, as
    `pip install -e .` writes it."""
    import tomllib

    points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
    site = tmp_path_factory.mktemp("site")
    info = site / "qlora_harness_under_test-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qlora-harness-under-test\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[pytest11]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    return f"{site}{os.pathsep}{ROOT}"


def pytest_run(args, pythonpath=None, timeout=300):
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_pytest_takes_recipe_with_a_space_and_no_test_path(tmp_path, installed):
    bad = recipe_file(tmp_path, **{"lora.r": 0})
    done = pytest_run(["--recipe", str(bad), "--collect-only", "-q"], installed)
    assert "unrecognized arguments" not in done.stderr
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"--recipe {bad}: {bad}: lora.r must be a positive integer, found 0" in done.stderr


def bad_recipe_inputs(tmp_path):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"name: r\xe9sum\xe9\nfamily: qwen2.5\n")
    aliases = tmp_path / "bomb.yaml"
    aliases.write_text(BOMBED["name"].format(bomb()))
    return {"folder": (tmp_path, "is a folder, not a file"), "not-utf8": (latin, "is not UTF-8 text"),
            "alias-bomb": (aliases, "aliases expand to more than"),
            "targets-match-nothing": (recipe_file(tmp_path, base="qwen2.5.yaml", **{"lora.target_modules": ["qkv"]}),
                                      "lora.target_modules ['qkv'] match no Linear module"),
            "unreadable": (Path("/proc/self/mem"), "cannot be read")}


@pytest.mark.parametrize("kind", ["folder", "not-utf8", "alias-bomb", "targets-match-nothing", "unreadable"])
def test_a_bad_recipe_for_pytest_is_a_usage_error_in_one_line(kind, tmp_path):
    path, message = bad_recipe_inputs(tmp_path)[kind]
    done = pytest_run([f"--recipe={path}", "--collect-only", "-q", "tests/smoke/test_recipes.py"])
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:] + done.stderr[-2000:]
    assert message in done.stderr and "INTERNALERROR" not in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("option,message", [
    (["--gpu-budget", "lots"], "--gpu-budget lots: memory size 'lots': expected a number with GiB"),
    (["--gpu-budget", "16"], "--gpu-budget 16: below 1GiB"),
    (["--checkpoint", "/nonexistent/ckpt"], "--checkpoint /nonexistent/ckpt: checkpoint folder /nonexistent/ckpt does not exist"),
    (["--cache-dir", "/proc/self/mem"], "--cache-dir /proc/self/mem is a file, not a folder"),
], ids=["budget-words", "budget-bytes", "checkpoint-missing", "cache-dir-file"])
def test_gpu_tier_options_are_checked_even_when_their_tests_skip(option, message):
    done = pytest_run([*option, "--collect-only", "-q", "tests/smoke/test_recipes.py"])
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:] + done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr


# --- 9. The gate: bad input is exit 2, not a regression ---------------------------------------------------------

def test_gate_refuses_targets_that_match_nothing_before_building_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(envs, "run_collectors", no_collectors)
    bad = recipe_file(tmp_path, base="qwen2.5.yaml", **{"lora.target_modules": ["qkv"]})
    status, err = run_cli(capsys, "gate", "--candidate", sys.executable, "--recipe", bad, "--out", tmp_path / "v")
    assert status == 2 and "lora.target_modules ['qkv'] match no Linear module" in one_line_error(err)


def test_gate_calls_the_same_error_on_both_sides_bad_input(tmp_path, capsys, monkeypatch):
    from harness.gate import command

    described = {"format": collect.FORMAT, "versions": {"transformers": "5.0.0"}, "cuda": False, "python": "p"}
    broken = {**described, "cases": {"qwen2.5-tiny-nf4-dq-r16": {"error": "HarnessError: checkpoint x is damaged "
                                                                          "(at load.py:10)", "facts": []}}}

    def fake_collect(step, sides, *args, **kwargs):
        if step == "prepare":
            return {name: {**described, "cases": {}} for name in sides}
        return {name: broken if step == "collect" else described for name in sides}

    monkeypatch.setattr(command, "_collect", fake_collect)
    status, err = run_cli(capsys, "gate", "--candidate", sys.executable, "--recipe", RECIPES_DIR / "qwen2.5.yaml",
                          "--out", tmp_path / "v")
    assert status == 2
    assert "raises the same error in both environments, so it is the input" in one_line_error(err).splitlines()[0]


def test_gate_refuses_a_candidate_that_is_not_python(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(envs, "run_collectors", no_collectors)
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    status, err = run_cli(capsys, "gate", "--candidate", fake, "--recipe", RECIPES_DIR / "qwen2.5.yaml",
                          "--out", tmp_path / "v")
    assert status == 2 and f"{fake} is not a Python interpreter" in one_line_error(err)


def test_gate_takes_python3_for_the_interpreter_on_path_not_a_library():
    python, specs = envs.parse_side(["python3"], "candidate")
    assert python == Path(shutil.which("python3")).absolute() and specs == []


def test_a_missing_optional_library_is_named_in_a_whole_sentence(monkeypatch, tmp_path):
    from harness.model import pipeline

    message = ("\nQwen2VLImageProcessorFast requires the Torchvision library but it was not found in your environment.\n"
               "Check out the instructions on the installation page: https://pytorch.org/get-started/locally/ and\n"
               "follow the ones that match your environment. Please note that you may need to restart your runtime.")

    def lacks_torchvision(*args, **kwargs):
        raise ImportError(message)

    monkeypatch.setattr(pipeline, "checkpoint_of", lacks_torchvision)
    facts = collect.collect([str(RECIPES_DIR / "qwen2.5.yaml")], "tiny", tmp_path, {}, "cpu", "no CUDA GPU")
    (entry,) = facts["cases"].values()
    assert "torchvision" in entry["error"] and "\n" not in entry["error"]
    assert "follow the ones that match your environment." in entry["error"]  # not cut mid-sentence


# --- 10. Checkpoint integrity: headers and shapes checked before loading --------------------------------------

def damaged_copy(checkpoint, tmp_path, how):
    folder = tmp_path / how
    shutil.copytree(checkpoint, folder)
    weights = folder / "model.safetensors"
    if how == "zero-bytes":
        weights.write_bytes(b"")
    elif how == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif how == "wrong-shape":
        import torch
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(weights))
        name = next(n for n in tensors if n.endswith("layers.0.self_attn.q_proj.weight"))
        tensors[name] = torch.zeros(7, 3, dtype=tensors[name].dtype)
        save_file(tensors, str(weights), metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("how,message", [
    ("zero-bytes", r"model.safetensors is 0 bytes, too short for a safetensors file"),
    ("truncated", r"model.safetensors: .*(truncated)"),
    ("wrong-shape", r"q_proj.weight has shape \[7, 3\], but the architecture in config.json makes .* \[\d+, \d+\]"),
])
def test_doctor_finds_damaged_weights(how, message, llm_checkpoint, tmp_path, capsys):
    folder = damaged_copy(llm_checkpoint, tmp_path, how)
    status, err = run_cli(capsys, "doctor", "--recipe", RECIPES_DIR / "qwen2.5.yaml", "--checkpoint", folder)
    assert status == 2 and re.search(message, one_line_error(err)), err


def test_a_4bit_load_of_a_wrong_shape_is_refused(llm_checkpoint, tmp_path):
    folder = damaged_copy(llm_checkpoint, tmp_path, "wrong-shape")
    with pytest.raises(HarnessError, match=r"q_proj.weight has shape \[7, 3\]"):
        load.load_model(folder, get_family("qwen2.5"), default_recipe("qwen2.5"))


def test_a_truncated_cached_checkpoint_is_built_again(tmp_path):
    family = get_family("qwen2.5")
    folder = synth.synthetic_checkpoint(family, "tiny", tmp_path)
    weights = folder / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 3])  # a full disk, a bad copy
    again = synth.synthetic_checkpoint(family, "tiny", tmp_path)
    assert again == folder and len(synth.builds(tmp_path)) == 2
    assert (again / "model.safetensors").stat().st_size == len(whole)


def test_allow_pickle_with_no_weights_at_all_is_refused(llm_checkpoint, tmp_path, capsys):
    folder = tmp_path / "config-only"
    shutil.copytree(llm_checkpoint, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    recipe = recipe_file(tmp_path, base="qwen2.5.yaml", allow_pickle=True)
    status, err = run_cli(capsys, "doctor", "--recipe", recipe, "--checkpoint", folder)
    assert status == 2 and "has no weights at all" in one_line_error(err)


# --- 11. The smaller ones --------------------------------------------------------------------------------------

def test_report_names_a_result_like_file_missing_fields(tmp_path, capsys):
    atomic.write_json(tmp_path / "r" / "x.json", {"experiment": "seed-clip-few-shot", "records": [{"case": "c"}]})
    status, err = run_cli(capsys, "report", tmp_path / "r", "--out", tmp_path / "out")
    assert status == 2 and "x.json: field" in one_line_error(err) and not (tmp_path / "out").exists()


def test_report_refuses_an_out_folder_holding_other_files(tmp_path, capsys, results):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    status, err = run_cli(capsys, "report", results, "--out", tmp_path / "mine")
    assert status == 2 and "holds files a report does not write (notes.txt)" in one_line_error(err)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_the_pip_log_a_failed_venv_build_cites_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: the install fails at once
    with pytest.raises(HarnessError) as failed:
        envs.venv_for(["qlora-harness-no-such-package==1.0"], tmp_path)
    cited = Path(re.search(r"\(log: (\S+)\)", str(failed.value)).group(1))
    assert cited.is_file() and "qlora-harness-no-such-package" in cited.read_text()


def test_a_key_given_twice_is_refused(tmp_path, capsys):
    path = tmp_path / "twice.yaml"
    path.write_text("name: x\nfamily: qwen2.5\nlora:\n  r: 8\n  alpha: 16\n  r: 64\n")
    status, err = run_cli(capsys, "doctor", "--recipe", path)
    assert status == 2 and "line 6: key 'r' is given twice (first on line 4)" in one_line_error(err)


def test_a_dangling_refs_main_is_not_replaced_by_another_snapshot(llm_checkpoint, tmp_path):
    entry = tmp_path / "models--org--name"
    shutil.copytree(llm_checkpoint, entry / "snapshots" / "aaaa")
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("bbbb")
    with pytest.raises(HarnessError, match=r"refs/main names snapshot 'bbbb', but .* has no such snapshot"):
        load.resolve_checkpoint(entry)


def test_gate_refuses_a_full_size_on_a_machine_without_cuda(tmp_path, capsys, monkeypatch):
    from harness.util import env

    monkeypatch.setattr(env, "has_cuda", lambda: False)
    monkeypatch.setattr(envs, "run_collectors", no_collectors)
    status, err = run_cli(capsys, "gate", "--candidate", sys.executable, "--recipe", RECIPES_DIR / "qwen2.5.yaml",
                          "--size", "7b", "--out", tmp_path / "v")
    assert status == 2 and "--size 7b builds full-size qwen2.5 checkpoints and needs a CUDA GPU" in one_line_error(err)


def test_a_yaml_error_on_a_long_line_is_cut_short(tmp_path):
    path = tmp_path / "junk.yaml"
    path.write_text("name: [" + "x, " * 30_000 + "\n")
    with pytest.raises(HarnessError) as e:
        load_recipe(path)
    assert len(str(e.value)) < 600 and "not valid YAML" in str(e.value)
