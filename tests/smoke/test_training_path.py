"""The training-data path and training dynamics: the supervised example a collator builds labels the reply only,
every processor input reaches the model, and each of the gate's comparisons fails on a broken case naming the cause
(a chat template that labels the prompt, positions shifted, a LoRA scaling changed, a loss renormalised)."""
import copy
import re
import sys

import pytest
import torch

from harness.checks import dynamics, examples, inputs
from harness.gate import trainpath
from harness.gate.compare import FAIL, PASS
from harness.model import pipeline
from harness.recipe import default_recipe, load_recipe, parse_recipe
from harness.util.errors import HarnessError

pytestmark = pytest.mark.smoke



def without_generation_prompt(template: str) -> str:
    """Return a chat template that ignores add_generation_prompt: its prompt stops before the assistant's header, so
    masking by the prompt's length labels the header too (the family's own template, its closing block cut)."""
    cut = re.sub(r"\{%-?\s*if add_generation_prompt\s*-?%\}.*\{%-?\s*endif\s*-?%\}\s*$", "", template, flags=re.S)
    assert cut != template, "the template has no trailing add_generation_prompt block to cut"
    return cut


def _judge(ref, cand, tolerance=0.05):
    kept, shown_ref, shown_cand, message = trainpath.judge(ref["check"], "case", ref, cand, tolerance)
    return PASS if kept else FAIL, shown_ref, shown_cand, message


def test_the_supervised_example_labels_exactly_the_reply(generator):
    example = examples.supervised_example(generator.case.family, generator.processor)
    tok = examples.tokenizer_of(generator.processor)

    assert examples.labelled_text(example, tok) == examples.REPLY
    assert example.prompt_is_prefix
    assert examples.label_problems(example, tok, generator.config, generator.case.id) == []
    assert examples.unused_inputs(generator.model, example.batch) == []


def test_a_chat_template_without_its_generation_prompt_labels_the_prompt_and_is_named(generator):
    processor = copy.deepcopy(generator.processor)
    template = getattr(processor, "chat_template", None) or examples.tokenizer_of(processor).chat_template
    broken = without_generation_prompt(template)
    examples.tokenizer_of(processor).chat_template = broken
    if hasattr(processor, "image_processor"):
        processor.chat_template = broken

    example = examples.supervised_example(generator.case.family, processor)
    problems = examples.label_problems(example, examples.tokenizer_of(processor), generator.config, generator.case.id)

    span = examples.labelled_text(example, examples.tokenizer_of(processor))
    assert span.endswith(examples.REPLY) and len(span) > len(examples.REPLY)  # the assistant's header labelled too
    assert any(f"labelled span to decode to the reply 'a red circle', found {span!r}; the labels "
               "cover part of the prompt" in p for p in problems)


def test_labels_on_image_and_pad_tokens_are_named(vlm):
    example = examples.supervised_example(vlm.case.family, vlm.processor)
    example.batch["labels"] = example.batch["input_ids"].clone()  # a collator that forgot to mask

    problems = examples.label_problems(example, examples.tokenizer_of(vlm.processor), vlm.config, vlm.case.id)

    placeholder = inputs.placeholder_id(vlm.case.family, vlm.config)
    assert any(f"labels are token {placeholder} ({vlm.case.family.inputs.image_token_id})" in p for p in problems)
    ids = example.batch["input_ids"]
    for attr, token in examples.media_token_ids(vlm.config).items():  # every media token the example holds is named
        if (ids == token).any():
            assert any(f"({attr})" in p for p in problems), attr


def test_an_input_no_forward_takes_is_named(vlm):
    example = examples.supervised_example(vlm.case.family, vlm.processor)
    # a processor output of another family, which this model's forward does not take (LLaVA's take image_sizes)
    stray = next(k for k in ("image_sizes", "spatial_shapes") if k not in examples.model_inputs(vlm.model))
    example.batch[stray] = torch.tensor([[56, 56]])

    assert examples.unused_inputs(vlm.model, example.batch) == [stray]


def _rope_owner(model):
    base = model.get_base_model()
    return next(m for m in (base, getattr(base, "model", None)) if hasattr(m, "get_rope_index"))


def test_position_ids_shifted_by_one_fail_naming_the_first_token(vlm, monkeypatch):
    base = vlm.model.get_base_model()
    if not any(hasattr(m, "get_rope_index") for m in (base, getattr(base, "model", None))):
        pytest.skip(f"{vlm.case.family.name} computes no multimodal rope index to shift (its positions are the tokens')")
    family, batch = vlm.case.family, examples.supervised_example(vlm.case.family, vlm.processor).batch
    vlm.model.eval()
    ok = trainpath._exact("position ids", examples.position_ids(vlm.model, family, batch).tolist(), "")
    owner = type(_rope_owner(vlm.model))
    original = owner.get_rope_index

    def shifted(self, *args, **kwargs):
        positions, deltas = original(self, *args, **kwargs)
        return positions + 1, deltas

    monkeypatch.setattr(owner, "get_rope_index", shifted)
    broken = trainpath._exact("position ids", examples.position_ids(vlm.model, family, batch).tolist(), "")

    status, _, _, message = _judge(ok, broken)
    assert ok["value"][0][0][0] == 0 and (status, message) == (
        FAIL, "position ids of case differ at [0, 0, 0]: 0 in the reference, 1 in the candidate")


def test_two_runs_of_one_environment_agree_bit_for_bit_and_a_doubled_lora_scaling_parts_at_step_1(cache_dir):
    c = pipeline.case("qwen2.5", "tiny", default_recipe("qwen2.5"))

    def run(scale=1.0):
        torch.manual_seed(dynamics.SEED)
        h = pipeline.harness(c, cache_dir)
        for m in h.model.modules():
            if isinstance(getattr(m, "scaling", None), dict):
                m.scaling = {k: v * scale for k, v in m.scaling.items()}
        return dynamics.trajectory(h.model, examples.supervised_example(c.family, h.processor).batch)

    first, again, doubled = run(), run(), run(2.0)
    ref, cand = (trainpath._series("loss trajectory", t, trainpath.TRAJECTORY_TOLERANCE) for t in (first, doubled))

    assert first == again  # the measurement the tolerance rests on: no run-to-run noise on one machine
    status, _, _, message = _judge(ref, cand)
    assert status == FAIL and message.startswith("loss trajectory of case: the trajectories part at step 1: reference")
    assert _judge(ref, trainpath._series("loss trajectory", again, trainpath.TRAJECTORY_TOLERANCE))[0] == PASS


def test_a_renormalised_loss_parts_at_step_0_and_a_gap_inside_the_tolerance_passes():
    ref = trainpath._series("loss trajectory", [6.0, 5.9, 5.8], trainpath.TRAJECTORY_TOLERANCE)
    halved = trainpath._series("loss trajectory", [3.0, 2.95, 2.9], trainpath.TRAJECTORY_TOLERANCE)
    close = trainpath._series("loss trajectory", [6.0006, 5.9006, 5.8006], trainpath.TRAJECTORY_TOLERANCE)

    status, _, _, message = _judge(ref, halved)
    assert status == FAIL and "part at step 0: reference 6.0, candidate 3.0" in message and "normalisation" in message
    assert _judge(ref, close)[0] == PASS


def test_a_trl_recipe_parses_and_sft_config_without_trl_is_refused():
    recipe = load_recipe("harness/data/recipes/qwen2.5-vl-trl.yaml")
    assert recipe.training.trainer == "trl" and recipe.training.sft_config["learning_rate"] == 2e-4

    with pytest.raises(HarnessError, match="training.sft_config holds TRL SFTConfig arguments"):
        parse_recipe({"name": "x", "family": "qwen2.5", "training": {"sft_config": {"learning_rate": 1e-4}}})
    with pytest.raises(HarnessError, match="training.trainer must be one of harness, trl, found 'trll'"):
        parse_recipe({"name": "x", "family": "qwen2.5", "training": {"trainer": "trll"}})


def test_without_trl_the_trl_facts_skip_saying_what_to_install(monkeypatch, cache_dir):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` then raises ImportError, as when it is not installed
    c = pipeline.case("qwen2.5", "tiny", default_recipe("qwen2.5"))

    (skipped,) = trainpath.trl_facts(c, cache_dir, "cpu")
    assert skipped["kind"] == "skipped" and skipped["shown"] == "skipped: needs trl: pip install 'qlora-harness[trl]'"


def test_a_datasets_that_is_installed_but_does_not_import_is_named_not_called_missing(monkeypatch, cache_dir):
    # Under transformers 4.57 a newer datasets fails on the older huggingface_hub it pins; "needs trl" would mislead.
    class Broken:
        def find_spec(self, name, path=None, target=None):
            if name == "datasets":
                raise ImportError("cannot import name 'BucketNotFoundError' from 'huggingface_hub.errors'")
            return None

    monkeypatch.delitem(sys.modules, "datasets", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    c = pipeline.case("qwen2.5", "tiny", default_recipe("qwen2.5"))

    (skipped,) = trainpath.trl_facts(c, cache_dir, "cpu")
    assert skipped["kind"] == "skipped" and skipped["shown"].startswith(
        "skipped: datasets is installed but does not import here (ImportError: cannot import name 'BucketNotFoundError'")


def test_trl_sft_trainer_data_path_labels_the_completion_only(cache_dir):
    why = trainpath.trl_unavailable()
    if why:
        pytest.skip(why)
    c = pipeline.case("qwen2.5-vl", "tiny", load_recipe("harness/data/recipes/qwen2.5-vl-trl.yaml"))

    facts = {f["check"]: f for f in trainpath.trl_facts(c, cache_dir, "cpu")}

    labels = facts["TRL SFTTrainer example labels the reply only"]
    assert labels["ok"], labels["problems"]
    assert "'a red circle'" in labels["shown"] and "image_grid_thw" in labels["value"]["keys"]
    step = facts["TRL SFTTrainer step loss"]
    assert step["kind"] == "series" or step["shown"].startswith("skipped: TRL ")


def test_the_gate_accepts_a_trl_spec_like_the_others():
    from harness.gate import envs

    assert envs.parse_side(["trl==1.15.0", "transformers==5.17.0"], "candidate") == (None, ["trl==1.15.0", "transformers==5.17.0"])
    with pytest.raises(HarnessError, match="names no version"):
        envs.parse_side(["trl"], "candidate")
