"""A newcomer's family: a toy spec written here, registered for the test, run through every family-generic check.

This is what adding a family takes (README "Adding a family"): a FamilySpec with its configs, roles, processor
writer and inputs contract, one line in harness/families/__init__.py's FAMILIES, and a recipe under harness/data/recipes/. The
toy is plain LLaVA (a CLIP tower, a two-layer projector and a Llama language model), which no module in harness/
knows; nothing outside this file changes for it.
"""
import dataclasses
from pathlib import Path

import pytest

from harness import families
from harness.families import VLM, FamilySpec, Inputs
from harness.families._tokens import byte_level_tokenizer
from harness.families.base import LLAVA_ROLES
from harness.gate.facts import case_facts
from harness.model import pipeline
from harness.model.load import check_roles, meta_model
from harness.model.synth import make_config
from harness.recipe import parse_recipe

IMAGE = "<image>"
SPECIALS = ("<s>", "</s>", "<pad>", IMAGE)
TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
IMAGE_SIZE, PATCH = 32, 16


def write_processor(folder: Path, config) -> None:
    """The toy's tokenizer, CLIP image processor and chat template, as a published LLaVA checkpoint has them."""
    import transformers

    tokenizer = byte_level_tokenizer(SPECIALS, TEMPLATE, bos="<s>", eos="</s>", pad="<pad>", named={"image_token": IMAGE})
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                                      crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                                vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                chat_template=TEMPLATE).save_pretrained(folder)


def image_tokens(config, batch) -> list[int]:
    """One <image> run per image, each the tower's patches (its CLS token dropped by the 'default' strategy)."""
    per_image = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    images = [int(row[0] == config.image_token_index) + int(((row[1:] == config.image_token_index).int()
              - (row[:-1] == config.image_token_index).int() == 1).sum()) for row in batch["input_ids"]]
    return [n * per_image for n in images]


TOY = FamilySpec(
    name="toy-llava",
    kind=VLM,
    config_class="LlavaConfig",
    model_class="LlavaForConditionalGeneration",
    sizes={"tiny": dict(
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=320, bos_token_id=256,
                         eos_token_id=257, pad_token_id=258),
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=64),
        image_token_index=256 + SPECIALS.index(IMAGE), vision_feature_select_strategy="default",
        vision_feature_layer=-2, projector_hidden_act="gelu")},
    published_params={},
    roles=LLAVA_ROLES,
    write_processor=write_processor,
    tiny_image_size=IMAGE_SIZE,
    inputs=Inputs(turn_end="</s>", image_token=IMAGE, image_token_id="image_token_index", image_tokens=image_tokens),
)

RECIPE = {
    "name": "toy-llava-qlora", "family": "toy-llava",
    "quantization": {"load_in_4bit": True, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16",
                     "keep_16bit": ["head"]},
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_roles": ["language_backbone"],
             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "training": {"gradient_checkpointing": True, "batch_size": 1},
    "expect": {"vision_tower": {"weights": "4bit", "train": "frozen"}, "projector": {"weights": "4bit", "train": "frozen"},
               "language_backbone": {"weights": "4bit", "train": "lora"},
               "embeddings": {"weights": "16bit", "train": "frozen"}, "head": {"weights": "16bit", "train": "frozen"}},
}


def registered(monkeypatch, spec: FamilySpec) -> FamilySpec:
    """Register a spec in the family registry for one test: the one line a new module adds to FAMILIES."""
    monkeypatch.setitem(families.FAMILIES, spec.name, spec)
    return spec


def problems(facts) -> list[str]:
    return [p for f in facts for p in f["problems"]]


def test_the_toy_family_s_roles_match_the_built_model(monkeypatch):
    spec = registered(monkeypatch, TOY)
    counts = check_roles(meta_model(spec, make_config(spec, "tiny")), spec)
    assert set(counts) == set(spec.roles) and all(n > 0 for n in counts.values())


def test_every_family_generic_check_passes_on_the_toy_family(monkeypatch, tmp_path):
    registered(monkeypatch, TOY)
    case = pipeline.case("toy-llava", "tiny", parse_recipe(RECIPE, source="toy recipe"))

    facts = case_facts(case, tmp_path)

    checks = {f["check"] for f in facts}
    assert {"placeholders match image features", "placeholder mismatch refused", "step leaves frozen weights",
            "every LoRA parameter gets a gradient", "adapter round-trip"} <= checks
    assert problems(facts) == []


def test_a_wrong_image_token_count_in_the_toy_contract_is_caught(monkeypatch, tmp_path):
    def one_short(config, batch):
        return [n - 1 for n in image_tokens(config, batch)]

    broken = registered(monkeypatch, dataclasses.replace(TOY, inputs=dataclasses.replace(TOY.inputs,
                                                                                         image_tokens=one_short)))
    case = pipeline.case(broken.name, "tiny", parse_recipe(RECIPE, source="toy recipe"))

    found = problems(case_facts(case, tmp_path))

    assert any(p.startswith("image placeholders of toy-llava-tiny") for p in found), found


@pytest.mark.parametrize("role", ["projector", "vision_tower"])
def test_a_toy_role_that_matches_nothing_is_named(monkeypatch, role):
    from harness.util.errors import HarnessError

    spec = registered(monkeypatch, dataclasses.replace(TOY, roles={**TOY.roles, role: r"(^|\.)nowhere$"}))
    with pytest.raises(HarnessError, match=rf"role {role} of family toy-llava: pattern .* matches no module"):
        check_roles(meta_model(spec, make_config(spec, "tiny")), spec)
