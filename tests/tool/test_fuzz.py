"""Property-based tests of bad input (hypothesis): whatever a recipe file or a command line holds, the answer is a
result or one line naming the problem, never a traceback, and nothing half-written is left behind.

Bounded to run in seconds: a fixed number of examples per property, no deadline (the machine is shared), the
examples derived from a fixed seed so that CI sees the same ones, no example database written into the checkout,
and no model loaded inside the loop (the run and the gate's environments are replaced by stand-ins).
"""
import math
import re
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import cli
from harness.families import get_family
from harness.recipe import RECIPES_DIR, load_recipe, parse_recipe
from harness.util.errors import HarnessError
from harness.util.units import parse_bytes

OPTIMIZERS = ("adamw_torch", "adamw", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit")  # harness.checks.train

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CLI_FUZZ = settings(FUZZ, max_examples=40)
DEFAULT = yaml.safe_load((RECIPES_DIR / "qwen2.5.yaml").read_text())
SECTIONS = {"quantization": ["load_in_4bit", "quant_type", "double_quant", "compute_dtype", "quant_storage", "keep_16bit"],
            "lora": ["r", "alpha", "dropout", "target_roles", "target_modules", "use_rslora", "use_dora"],
            "training": ["gradient_checkpointing", "batch_size", "image_size", "seq_len", "optimizer", "learning_rate",
                         "prepare_for_kbit_training", "gpu_budget"],
            "expect": ["head", "embeddings", "language_backbone", "vision_tower"]}
TOP = ["name", "family", "backend", "trust_remote_code", "allow_pickle"]

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["nf4", "qwen2.5", "clip", "head", "q_proj", "16GiB", "4bit",
                                                      "lora", "frozen", "...", "1e-4", "adamw_torch"]))
# The values a careless or hostile user writes most: off-range numbers, sizes without units, empty things.
edges = st.sampled_from([float("nan"), float("inf"), -1, 0, 10**9, 10**12, -2e-4, "", None, [], {}, "...", "0GiB",
                         16, "16", [[]], {"weights": "4bit"}, {"weights": "16bit", "train": "lora"}, "adamw_troch"])
values = edges | st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                              | st.dictionaries(st.text(max_size=8) | st.sampled_from(["weights", "train", "r"]),
                                                inner, max_size=3), max_leaves=12)


PATHS = [(None, k) for k in TOP + ["extra"]] + [(None, section) for section in SECTIONS] + \
    [(section, k) for section, keys in SECTIONS.items() for k in keys + ["typo"]]


@st.composite
def recipes(draw):
    """A default recipe with a few of its values (or whole sections) replaced by anything YAML can hold."""
    data = yaml.safe_load(yaml.safe_dump(DEFAULT))
    for _ in range(draw(st.integers(1, 3))):
        section, key = draw(st.sampled_from(PATHS))
        if section is None:
            data[key] = draw(values)
        else:
            if not isinstance(data.get(section), dict):
                data[section] = {}
            data[section][key] = draw(values)
    return data


def is_one_line(message: str) -> bool:
    return "\n" not in message.strip() and 0 < len(message) < 2000


@settings(FUZZ, max_examples=400)  # parsing is a millisecond: many examples, few seconds
@given(recipes())
def test_the_recipe_parser_answers_a_recipe_or_one_line(data):
    try:
        recipe = parse_recipe(data, source="fuzz.yaml")
    except HarnessError as e:
        assert is_one_line(str(e)), str(e)
    else:  # what a valid recipe is: nothing in it can fail later
        lora, t = recipe.lora, recipe.training
        assert isinstance(recipe.name, str) and recipe.name.strip() and recipe.name != "None"
        assert 0 < lora.r <= 8192 and math.isfinite(lora.alpha) and lora.alpha > 0 and lora.target_roles
        assert math.isfinite(t.learning_rate) and 0 < t.learning_rate and t.seq_len <= 131_072
        assert t.optimizer in OPTIMIZERS and set(recipe.quantization.keep_16bit) <= set(get_family(recipe.family).roles)
        assert t.gpu_budget is None or parse_bytes(t.gpu_budget) >= 2**30


yaml_text = st.lists(st.sampled_from(["name: x\n", "family: qwen2.5\n", "family: clip\n", "lora:\n", "  r: 8\n",
                                      "  r: 8\n", "&a [1, 2]\n", "b: *a\n", "!!python/object:os.system\n", "{", "]",
                                      "- - -\n", "\t", "\x00", "\ufeff", "name: &n [*n]\n", "<<: {r: 1}\n",
                                      "quantization: {keep_16bit: [head, head]}\n"]) | st.text(max_size=20),
                     max_size=8).map("".join)


@FUZZ
@given(text=yaml_text)
def test_a_recipe_file_answers_a_recipe_or_one_line(text, tmp_path):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_recipe(path)
    except HarnessError as e:
        assert is_one_line(str(e)), str(e)


# --- the command line ------------------------------------------------------------------------------------------

@pytest.fixture
def stand_ins(monkeypatch, tmp_path, cache_dir):
    """Files to name on a command line, and the heavy work replaced: a run writes an empty result, a venv is
    never built, a gate's collectors fail at once (so a gate answers 2 without loading a model). The commands
    run in a folder of their own: their default --out folders are relative."""
    monkeypatch.chdir(tmp_path)
    from harness.gate import envs
    from harness.tasks import run
    from harness.util import atomic

    def fake_run(exp, size, out_dir, cache, **kwargs):
        path = Path(out_dir) / f"{exp.name}.json"
        atomic.write_json(path, {"records": []})
        return path

    def no_venv(specs, cache, **kwargs):
        raise HarnessError(f"no venv is built in this test ({' '.join(specs)})")

    monkeypatch.setattr(run, "run_experiment", fake_run)
    monkeypatch.setattr(envs, "venv_for", no_venv)
    monkeypatch.setattr(envs, "run_collectors", lambda jobs, *a, **k: [2] * len(jobs))
    files = tmp_path / "files"
    files.mkdir()
    (files / "a-file").write_text("x")
    (files / "bad.yaml").write_text("name: x\nfamily: qwen25\n")
    (files / "not-utf8.yaml").write_bytes(b"name: \xff\n")
    (files / "results").mkdir()
    return {"files": files, "paths": [str(files / "a-file"), str(files / "bad.yaml"), str(files / "not-utf8.yaml"),
                                      str(files / "results"), str(files / "absent"), "/sys/qlora-harness-fuzz",
                                      str(RECIPES_DIR / "qwen2.5.yaml"), str(RECIPES_DIR / "seed-clip-few-shot.yaml"),
                                      str(RECIPES_DIR), sys.executable, "python3", "transformers==4.57.1", "torch"],
            "out": tmp_path / "out"}


OPTIONS = {
    "doctor": ["--recipe", "--checkpoint", "--json"],
    "run": ["--size", "--out", "--cache-dir", "--model-size"],
    "report": ["--out"],
    "gate": ["--reference", "--candidate", "--recipe", "--size", "--out", "--tolerance", "--cache-dir"],
}
WORDS = ["tiny", "full", "7b", "0", "-1", "0.05", "nan", "1e309", "", " ", "--", "-x", "\u00e9", "a" * 300]


@st.composite
def argvs(draw, paths, out):
    command = draw(st.sampled_from(list(OPTIONS)))
    argv = [command]
    named = st.sampled_from(paths)
    anything = named | named | named | st.sampled_from(WORDS) | st.text(max_size=10)  # mostly real paths
    if command in ("run", "report"):
        argv += draw(st.lists(anything, min_size=command == "run", max_size=2))
    for _ in range(draw(st.integers(0, 4))):
        option = draw(st.sampled_from(OPTIONS[command]))
        argv.append(option)
        if option == "--out":
            argv.append(draw(st.sampled_from([str(out), *paths[:1], "/sys/qlora-harness-fuzz"])))
        elif option != "--json":
            argv += [draw(anything) for _ in range(draw(st.integers(0 if option in ("--reference", "--candidate") else 1, 2)))]
    return argv


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith((".partial", ".tmp", ".old"))]


@CLI_FUZZ
@given(data=st.data())
def test_every_command_answers_0_1_or_2_with_one_line(data, stand_ins, capsys):
    argv = data.draw(argvs(stand_ins["paths"], stand_ins["out"]))
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse: its usage line and one error line
        status = e.code
        err = capsys.readouterr().err
        assert status == 2 and len(re.findall(r"qlora-harness(?: \w+)?: error: ", err)) == 1, err  # the subcommand's
    else:
        err = capsys.readouterr().err
        assert status in (0, 1, 2), (argv, status, err)
        if status == 2:  # one line names the problem (a gate may quote a log's tail under it)
            assert err.count("qlora-harness: error: ") == 1 and "\nqlora-harness: error: " in "\n" + err, err
    assert "Traceback" not in err, err
    assert leftovers(stand_ins["out"].parent) == []
    checkout = Path(__file__).resolve().parents[2]
    assert leftovers(checkout) == [] and not (checkout / "report").exists()
