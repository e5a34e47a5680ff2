"""Each new gate check fails a deliberately broken candidate, and the gate names the library that broke it.

The two sides differ in two small libraries built here as wheels and installed by pip from a local folder (no
index): qlora-lib-a 2.0 makes gradient_checkpointing_enable a no-op, qlora-lib-b 2.0 makes generate sample, and
the two together make LoRA start away from zero. Re-running the reference with one library at a time from the
candidate must name a for the first, b for the second and "several together" for the third. A candidate whose
generate bans each step's best token (a logits processor: the logits and the argmax check keep) fails the greedy
tokens, not at a near-tie, and the trained checkpoint's answers. An environment gated against itself passes with
nothing failed or changed, three runs in a row. A few minutes on two CPU cores.
"""
import json
import sys
import zipfile

import pytest

from harness import cli
from harness.recipe import RECIPES_DIR

pytestmark = pytest.mark.slow

RECIPE = str(RECIPES_DIR / "literal-qwen2.5.yaml")

GC_NO_OP = '''
import transformers
transformers.PreTrainedModel.gradient_checkpointing_enable = lambda self, *args, **kwargs: None
'''

SAMPLES = '''
import importlib.metadata
from transformers.generation.utils import GenerationMixin

_generate = GenerationMixin.generate


def sampling(self, *args, **kwargs):
    kwargs.update(do_sample=True, temperature=5.0, top_k=0)
    return _generate(self, *args, **kwargs)


GenerationMixin.generate = sampling

try:
    both = importlib.metadata.version("qlora-lib-a") == "2.0"
except importlib.metadata.PackageNotFoundError:
    both = False
if both:
    import torch
    from peft.tuners.lora import layer

    _reset = layer.LoraLayer.reset_lora_parameters

    def nonzero_lora_b(self, adapter_name, *args, **kwargs):
        _reset(self, adapter_name, *args, **kwargs)
        if adapter_name in self.lora_B:
            torch.nn.init.normal_(self.lora_B[adapter_name].weight, std=0.5)

    layer.LoraLayer.reset_lora_parameters = nonzero_lora_b
'''


def wheel(folder, name: str, version: str, code: str = "") -> None:
    """Write a pure-Python wheel whose module runs `code` at interpreter start (through a .pth file) when given."""
    module = name.replace("-", "_")
    files = {f"{module}.py": code or "# harmless\n"}
    if code:
        files[f"{module}.pth"] = f"import {module}\n"
    info = f"{module}-{version}.dist-info"
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: qlora-harness-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name, broken in (("qlora-lib-a", GC_NO_OP), ("qlora-lib-b", SAMPLES)):
        wheel(folder, name, "1.0")
        wheel(folder, name, "2.0", broken)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_each_broken_check_fails_naming_the_library_that_breaks_it(local_index, tmp_path, cache_dir):
    out = tmp_path / "verdict"
    status = cli.main(["gate", "--reference", "qlora-lib-a==1.0", "qlora-lib-b==1.0",
                       "--candidate", "qlora-lib-a==2.0", "qlora-lib-b==2.0", "--recipe", RECIPE,
                       "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-carry"])  # no artifacts broken

    result = json.loads((out / "verdict.json").read_text())
    failed = {r["check"]: r for r in result["rows"] if r["status"] == "fail"}
    assert status == 1 and result["verdict"] == "fail"
    gc = failed["gradient checkpointing acts"]
    assert "the recipe asks for gradient checkpointing, but no layer of the model has it enabled" in gc["message"]
    assert gc["cause"].startswith("qlora-lib-a 1.0 → 2.0: the reference with only this library from the candidate")
    argmax = failed["greedy decoding picks the argmax"]
    assert "generation samples or reorders instead of decoding greedily" in argmax["message"]
    assert argmax["cause"].startswith("qlora-lib-b 1.0 → 2.0")
    assert failed["zero-init LoRA leaves logits unchanged"]["message"].startswith("zero-initialised LoRA of")
    zero = failed["zero-init LoRA leaves logits unchanged"]
    assert zero["cause"] == ("several libraries together: no one of qlora-lib-a 1.0 → 2.0, qlora-lib-b 1.0 → 2.0 "
                             "alone moves it")
    assert all(r["cause"] for r in result["rows"] if r["status"] in ("fail", "changed"))
    assert "**cause**: qlora-lib-a 1.0 → 2.0" in (out / "verdict.md").read_text()


BANS_THE_BEST = '''
import torch
from transformers import LogitsProcessorList
from transformers.generation.utils import GenerationMixin

_generate = GenerationMixin.generate


def ban_best(input_ids, scores):
    return scores.scatter(-1, scores.argmax(-1, keepdim=True), float("-inf"))


def banning(self, *args, **kwargs):
    kwargs["logits_processor"] = LogitsProcessorList([ban_best, *(kwargs.get("logits_processor") or [])])
    return _generate(self, *args, **kwargs)


GenerationMixin.generate = banning
'''


def test_a_generate_that_bans_the_best_token_fails_tokens_and_trained_answers(breaker_venv, tmp_path, cache_dir):
    broken = breaker_venv(tmp_path / "broken-venv", "qlora_bans_the_best", BANS_THE_BEST)
    out = tmp_path / "verdict"
    status = cli.main(["gate", "--candidate", str(broken), "--recipe", str(RECIPES_DIR / "literal-qwen2-vl.yaml"),
                       "--out", str(out), "--cache-dir", str(cache_dir), "--no-carry"])

    result = json.loads((out / "verdict.json").read_text())
    rows = {r["check"]: r for r in result["rows"]}
    assert status == 1 and rows["logits"]["status"] == "pass" and rows["greedy decoding picks the argmax"]["status"] == "pass"
    tokens = rows["greedy tokens"]
    assert tokens["status"] == "fail" and "differ from the reference's at sample 0, new token 0, and not at a near-tie" in tokens["message"]
    answers = rows["trained checkpoint answers"]
    assert answers["status"] == "fail" and "a trained checkpoint has no near-ties" in answers["message"]
    assert rows["trained checkpoint answers its tasks"]["status"] == "fail"
    assert tokens["cause"].startswith("no library version differs: the environments differ otherwise")


def test_an_environment_gated_against_itself_passes_three_runs_in_a_row(tmp_path, cache_dir):
    for run in range(3):
        out = tmp_path / f"run-{run}"
        carry = [] if run == 0 else ["--no-carry"]  # the artifacts carried both ways once; the checks three times
        status = cli.main(["gate", "--reference", sys.executable, "--candidate", sys.executable,
                           "--recipe", RECIPE, *carry,
                           "--out", str(out), "--cache-dir", str(cache_dir)])
        result = json.loads((out / "verdict.json").read_text())
        assert status == 0 and (result["counts"]["fail"], result["counts"]["changed"]) == (0, 0), (run, result["counts"])
        assert {"gradient checkpointing acts", "greedy decoding picks the argmax", "greedy tokens"} <= {
            r["check"] for r in result["rows"] if r["status"] == "pass"}
