"""The regression gate: facts compared into pass / changed / fail rows that name the cause; the real gate passes
when both sides are this interpreter; venvs are layered, cached and reused; bad input is refused by name."""
import json
import os
import subprocess
import sys

import pytest
import torch

from harness import cli
from harness.gate import command, compare, envs, verdict
from harness.gate.envs import MARKER
from harness.gate.facts import ANSWERS, CHECK, LOGITS, MEMORY, SKIPPED, STATUS, TOKENS, encode, fact
from harness.recipe import RECIPES_DIR
from harness.util.errors import HarnessError

CASE = "qwen2.5-vl-tiny-nf4-dq-r64"
VERSIONS_457 = {"torch": "2.13.0+cpu", "transformers": "4.57.1", "peft": "0.21.2", "bitsandbytes": "0.50.2"}
VERSIONS_5 = {**VERSIONS_457, "transformers": "5.23.0"}
SUMMARY_16BIT = {"linear4bit": 0, "linear16": 10, "linear32": 0, "lora_modules": 0, "trainable_params": 0}


def facts_file(*facts, versions=VERSIONS_457, error=None):
    return {"format": 2, "versions": versions, "cases": {CASE: {"error": error, "facts": list(facts)}}}


def row_of(ref_fact, cand_fact, tolerance=0.05):
    (row,) = compare.compare(facts_file(ref_fact), facts_file(cand_fact, versions=VERSIONS_5), tolerance)
    return row


def logits_fact(values):
    tensor = torch.tensor(values)
    return fact("logits", LOGITS, {"shape": list(tensor.shape), "float32_base64": encode(tensor)}, "")


def test_the_same_facts_pass():
    role = fact("role vision_tower (16bit, frozen)", CHECK, SUMMARY_16BIT, "16-bit (10 Linear), frozen")
    assert row_of(role, role).status == compare.PASS


def test_a_broken_expectation_in_the_candidate_fails_naming_the_cause_and_the_reference():
    ok = fact("role vision_tower (16bit, frozen)", CHECK, SUMMARY_16BIT, "16-bit (10 Linear), frozen")
    broken = fact("role vision_tower (16bit, frozen)", CHECK, {**SUMMARY_16BIT, "linear4bit": 10, "linear16": 0},
                  "4-bit (10 Linear4bit), frozen",
                  [f"vision tower of {CASE}: expected 16-bit, found 10 Linear4bit modules: model.visual.blocks.0.attn.qkv"])
    row = row_of(ok, broken)
    assert row.status == compare.FAIL
    assert row.message == (f"vision tower of {CASE}: expected 16-bit, found 10 Linear4bit modules: "
                           "model.visual.blocks.0.attn.qkv (reference: 16-bit (10 Linear), frozen)")
    assert (row.reference, row.candidate) == ("16-bit (10 Linear), frozen", "4-bit (10 Linear4bit), frozen")


def test_a_count_that_must_match_fails_with_both_values():
    row = row_of(fact("trainable params", CHECK, 1234, "1,234", must_match=True),
                 fact("trainable params", CHECK, 1200, "1,200", must_match=True))
    assert (row.status, row.message) == (compare.FAIL, f"trainable params of {CASE}: reference 1,234, candidate 1,200")


def test_a_renamed_trainable_parameter_is_a_change_listing_the_names():
    row = row_of(fact("trainable set", CHECK, ["a.lora_A", "b.lora_A"], "2 tensors"),
                 fact("trainable set", CHECK, ["a.lora_A", "c.lora_A"], "2 tensors"))
    assert row.status == compare.CHANGED
    assert row.message == (f"trainable set of {CASE}: 1 only in the reference (b.lora_A), "
                           "1 only in the candidate (c.lora_A)")


def test_a_check_the_reference_broke_and_the_candidate_keeps_is_a_change_not_a_failure():
    row = row_of(fact("adapter round-trip", CHECK, {"missing": 2}, "", ["adapter of x: 2 LoRA parameters were not filled"]),
                 fact("adapter round-trip", CHECK, {"missing": 0}, ""))
    assert row.status == compare.CHANGED and "the reference broke it: adapter of x: 2 LoRA" in row.message


@pytest.mark.parametrize("shift,status", [(0.0, compare.PASS), (0.01, compare.PASS), (0.5, compare.FAIL)],
                         ids=["identical", "within", "beyond"])
def test_logits_are_compared_within_a_share_of_the_reference_spread(shift, status):
    reference = [[0.0, 1.0, 2.0, 3.0]]  # std 1.118: 5% allows 0.056
    row = row_of(logits_fact(reference), logits_fact([[v + shift for v in reference[0]]]))
    assert row.status == status
    if status == compare.FAIL:
        assert row.message.startswith(f"logits of {CASE}: the candidate differs from the reference by max |Δ| 0.5, 44.7% ")


def test_logits_of_another_shape_fail():
    row = row_of(logits_fact([[0.0, 1.0]]), logits_fact([[0.0, 1.0, 2.0]]))
    assert row.status == compare.FAIL and "shape (1, 2) in the reference, (1, 3) in the candidate" in row.message


def tokens_fact(tokens, top_ids, top_values):
    return fact("greedy tokens", TOKENS, {"tokens": [tokens], "top_ids": [top_ids], "top_values": [top_values]},
                " ".join(map(str, tokens)))


def test_greedy_tokens_that_part_where_the_reference_was_sure_fail_even_when_the_logits_agree():
    ref = tokens_fact([1, 2], [[1, 5], [2, 3]], [[9.0, 1.0], [4.0, 1.0]])  # margin 3.0 at the second token
    cand = tokens_fact([1, 3], [[1, 5], [3, 2]], [[9.0, 1.0], [4.1, 3.9]])
    rows = compare.compare(facts_file(logits_fact([[0.0, 1.0, 2.0, 3.0]]), ref),
                           facts_file(logits_fact([[0.0, 1.0, 2.0, 3.01]]), cand, versions=VERSIONS_5))
    logits_row, tokens_row = rows
    assert logits_row.status == compare.PASS and tokens_row.status == compare.FAIL
    assert tokens_row.message.startswith(f"greedy tokens of {CASE} differ from the reference's at sample 0, new token 1, "
                                         "and not at a near-tie: the reference's top-2 margin there is 3, not below the logits "
                                         "difference (the logits moved by max |Δ| 0.01; the scores at that step by 3.1)")


def test_greedy_tokens_that_part_at_a_near_tie_are_a_change_that_says_so():
    ref = tokens_fact([1, 2], [[1, 5], [2, 3]], [[9.0, 1.0], [4.0, 3.99]])  # margin 0.01 at the second token
    cand = tokens_fact([1, 3], [[1, 5], [3, 2]], [[9.0, 1.0], [4.02, 3.98]])
    rows = compare.compare(facts_file(logits_fact([[0.0, 1.0, 2.0, 3.0]]), ref),
                           facts_file(logits_fact([[0.0, 1.0, 2.0, 3.02]]), cand, versions=VERSIONS_5))
    assert rows[1].status == compare.CHANGED
    assert rows[1].message.startswith(f"greedy tokens of {CASE} part at sample 0, new token 1: a near-tie, the reference's "
                                      "top-2 margin there 0.01 is below the logits difference")


def test_tokens_without_scores_that_differ_fail():
    row = row_of(fact("greedy tokens", TOKENS, [[1, 2]], "1 2"), fact("greedy tokens", TOKENS, [[1, 3]], "1 3"))
    assert row.status == compare.FAIL and "recorded no scores to tell a near-tie" in row.message


def test_other_answers_of_a_trained_checkpoint_fail_naming_the_first():
    row = row_of(fact("trained checkpoint answers", ANSWERS, {"colour": ["red", "blue"]}, ""),
                 fact("trained checkpoint answers", ANSWERS, {"colour": ["red", "green"]}, ""))
    assert row.status == compare.FAIL
    assert row.message.startswith(f"trained checkpoint answers of {CASE}: 1 of 2 differ from the reference's (first: "
                                  "colour question 1, reference 'blue', candidate 'green')")


def test_gpu_memory_gates_like_a_baseline_with_versions_named():
    grown = row_of(fact("gpu peak_allocated_bs1_bytes", MEMORY, 6_950_000_000, "6.473 GiB"),
                   fact("gpu peak_allocated_bs1_bytes", MEMORY, 7_500_000_000, "6.985 GiB"))
    assert grown.status == compare.FAIL
    assert grown.message.startswith(f"{CASE}: peak_allocated_bs1_bytes candidate 6.985 GiB vs reference 6.473 GiB (tolerance 3%, at least 32 MiB)")
    assert "reference versions torch 2.13.0+cpu, transformers 4.57.1" in grown.message
    assert "candidate versions torch 2.13.0+cpu, transformers 5.23.0" in grown.message
    close = row_of(fact("gpu peak_allocated_bs1_bytes", MEMORY, 6_950_000_000, ""),
                   fact("gpu peak_allocated_bs1_bytes", MEMORY, 7_000_000_000, ""))
    assert close.status == compare.PASS
    oom = row_of(fact("gpu status_bs4", STATUS, "ok", "ok"), fact("gpu status_bs4", STATUS, "oom", "oom"))
    assert oom.status == compare.FAIL and "status_bs4 candidate 'oom' vs reference 'ok'" in oom.message


def test_memory_without_cuda_is_skipped_with_the_reason():
    skipped = fact("gpu memory and time", SKIPPED, None, "skipped: no CUDA GPU")
    row = row_of(skipped, skipped)
    assert (row.status, row.message) == (compare.SKIP, "skipped: no CUDA GPU")


def test_a_case_that_raises_in_the_candidate_fails():
    rows = compare.compare(facts_file(), facts_file(error="AttributeError: 'NoneType' has no attribute 'qkv'"))
    assert [(r.check, r.status) for r in rows] == [("case runs", compare.FAIL)]
    assert rows[0].message == f"{CASE}: the candidate raised AttributeError: 'NoneType' has no attribute 'qkv'"


def test_a_case_that_raises_in_the_reference_only_is_a_change_and_the_candidates_checks_are_judged_alone():
    broken = fact("step leaves frozen weights", CHECK, 1, "1 frozen changed", ["training step of case: 1 frozen changed"])
    rows = compare.compare(facts_file(error="ValueError: reentrant checkpointing needs inputs that require grad"),
                           facts_file(broken, fact("trainable params", CHECK, 10, "10"), versions=VERSIONS_5))
    assert [(r.check, r.status) for r in rows] == [("case runs", compare.CHANGED), ("step leaves frozen weights", compare.FAIL)]
    assert rows[0].message.startswith(f"{CASE}: the reference raised ValueError: reentrant checkpointing")
    assert rows[1].message == "training step of case: 1 frozen changed"


def test_a_check_both_sides_break_fails_saying_the_sides_do_not_differ_in_it():
    broken = fact("step leaves frozen weights", CHECK, 1, "1 frozen changed", ["training step of case: 1 frozen changed"])
    row = row_of(broken, broken)
    assert row.status == compare.FAIL and row.cause.startswith("none between the sides: the reference breaks this check too")


def test_fact_files_of_different_formats_are_refused():
    with pytest.raises(HarnessError, match="different formats"):
        compare.compare(facts_file(), {**facts_file(), "format": 1})


def test_the_verdict_lists_versions_failures_and_every_row(tmp_path):
    ok = fact("trainable params", CHECK, 10, "10", must_match=True)
    rows = compare.compare(facts_file(ok, logits_fact([[0.0, 1.0]]), tokens_fact([1], [[1, 2]], [[1.0, 0.99]])),
                           facts_file({**ok, "value": 0, "shown": "0"}, logits_fact([[0.0, 1.02]]),
                                      tokens_fact([2], [[2, 1]], [[1.0, 0.99]]), versions=VERSIONS_5))
    result = verdict.build(rows, verdict.side("transformers==4.57.1", {"python": "/venv/bin/python", "versions": VERSIONS_457}),
                           verdict.side("/usr/bin/python", {"python": "/usr/bin/python", "versions": VERSIONS_5}),
                           tolerance=0.05, notes=["checkpoints built by the reference"])
    md_path, json_path = verdict.write(tmp_path / "out", result)

    text = md_path.read_text()
    assert text.startswith("# qlora-harness gate: FAIL\n\n3 checks: 1 pass, 1 changed, 1 fail, 0 skipped")
    assert "| transformers | 4.57.1 | **5.23.0** |" in text and "| torch | 2.13.0+cpu | 2.13.0+cpu |" in text
    assert f"## Failures\n\n- **{CASE}**, trainable params: trainable params of {CASE}: reference 10, candidate 0" in text
    assert f"| {CASE} | greedy tokens | changed | 1 | 2 |" in text
    saved = json.loads(json_path.read_text())
    assert saved["verdict"] == "fail" and saved["counts"] == {"fail": 1, "changed": 1, "pass": 1, "skipped": 0}
    assert saved["reference"]["versions"]["transformers"] == "4.57.1" and len(saved["rows"]) == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["verdict.json", "verdict.md"]  # no temporary left


def test_the_older_transformers_builds_the_shared_checkpoints():
    old, new = {"versions": VERSIONS_457}, {"versions": VERSIONS_5}
    assert command.checkpoint_builder(old, new)[0] == "reference"
    side, why = command.checkpoint_builder(new, old)
    assert side == "candidate" and "by the candidate (transformers 4.57.1)" in why


def test_the_checks_run_on_cpu_unless_both_sides_have_cuda():
    assert command.device_for({"cuda": True}, {"cuda": True}) == ("cuda", None)
    assert command.device_for({"cuda": True}, {"cuda": False}) == ("cpu", "no CUDA GPU in the candidate environment")
    assert command.device_for({"cuda": False}, {"cuda": False}) == ("cpu", "no CUDA GPU")


@pytest.mark.parametrize("tokens,message", [
    (["transformers"], r"'transformers' names no version; pin one, e.g. transformers==4.57.1"),
    (["transformers=4.57"], r"neither an interpreter path nor a requirement spec"),
    (["peft==0.17.1", "PEFT==0.18.0"], r"names PEFT twice"),
    (["./venv/bin/python", "peft==0.17.1"], r"give one interpreter path, or requirement specs, not both"),
    (["/no/such/python"], r"no Python interpreter at /no/such/python"),
], ids=["unpinned", "malformed", "twice", "mixed", "missing-python"])
def test_a_bad_environment_is_refused_by_name(tokens, message):
    with pytest.raises(HarnessError, match=message):
        envs.parse_side(tokens, "candidate")


def test_specs_and_interpreters_are_told_apart(tmp_path):
    assert envs.parse_side(["transformers==4.57.1", "peft>=0.17,<0.18"], "reference") == (
        None, ["transformers==4.57.1", "peft>=0.17,<0.18"])
    assert envs.parse_side([sys.executable], "reference") == (envs.interpreter(sys.executable), [])


def test_bad_gate_input_exits_2_naming_it(capsys, tmp_path):
    assert cli.main(["gate", "--candidate", sys.executable, "--recipe", str(tmp_path / "mine.yaml")]) == 2
    assert "recipe file" in capsys.readouterr().err
    assert cli.main(["gate"]) == 2
    assert "give --candidate" in capsys.readouterr().err
    assert cli.main(["gate", "--candidate", sys.executable, "--tolerance", "0"]) == 2


def test_a_layered_venv_shadows_the_base_with_its_own_packages_and_shares_the_rest(tmp_path):
    python = envs.create_layered_venv(tmp_path / "venv", sys.executable, with_pip=False)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    os.makedirs(f"{site}/yaml")
    with open(f"{site}/yaml/__init__.py", "w") as f:
        f.write("SHADOW = True\n")
    probe = "import yaml, filelock; print(getattr(yaml, 'SHADOW', False), filelock.__file__)"
    shadow, shared = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert shadow == "True"
    assert not shared.startswith(str(tmp_path)) and shared == __import__("filelock").__file__


def test_a_built_venv_is_reused_and_a_half_built_one_rebuilt(tmp_path, monkeypatch):
    specs = ["transformers==4.57.1"]
    folder = envs.venv_folder(specs, tmp_path, sys.executable)
    built = []

    def fake_build(where, specs, base):  # stands in for venv + pip: the cache logic is what is tested
        built.append(where)
        (where / "bin").mkdir(parents=True)
        (where / "bin" / "python").symlink_to(sys.executable)
        (where / MARKER).write_text("{}")

    monkeypatch.setattr(envs, "_build", fake_build)
    folder.mkdir(parents=True)
    (folder / "half-written").write_text("")
    first = envs.venv_for(specs, tmp_path, sys.executable)
    again = envs.venv_for(specs, tmp_path, sys.executable)

    assert built == [folder] and not (folder / "half-written").exists()
    assert first == again and first.python == folder / "bin" / "python" and first.specs == tuple(specs)
    assert envs.venv_folder(list(reversed(specs + ["peft==0.17.1"])), tmp_path, sys.executable) == \
        envs.venv_folder(specs + ["peft==0.17.1"], tmp_path, sys.executable)


@pytest.fixture
def bare_python(tmp_path):
    """A venv that sees none of this interpreter's packages: the harness cannot even import there."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    return envs.interpreter(tmp_path / "bare")


def test_a_candidate_that_cannot_run_the_harness_fails_with_its_log(bare_python, tmp_path, capsys):
    out = tmp_path / "verdict"
    status = cli.main(["gate", "--candidate", str(bare_python), "--recipe", str(RECIPES_DIR / "qwen2.5.yaml"),
                       "--out", str(out)])

    (row,) = json.loads((out / "verdict.json").read_text())["rows"]
    assert status == 1 and (row["check"], row["status"]) == ("environment runs the harness", "fail")
    assert row["message"].startswith(f"the candidate environment ({bare_python}) could not run the harness collector")
    assert "ModuleNotFoundError" in row["message"]


def test_a_reference_that_cannot_run_the_harness_is_an_error_not_a_verdict(bare_python, tmp_path, capsys):
    out = tmp_path / "verdict"
    assert cli.main(["gate", "--reference", str(bare_python), "--candidate", sys.executable, "--out", str(out)]) == 2
    assert "fix the reference environment first" in capsys.readouterr().err
    assert not (out / "verdict.json").exists()
