"""Checkpoints written for both transformers 4.57 and 5.x: the published config layout (rope_theta + rope_scaling,
additional_special_tokens) reads back as the same model settings as what save_pretrained wrote."""
import copy
import json

import pytest
import transformers

from harness.families import get_family
from harness.model import layout
from harness.tasks import learn
from harness.util.errors import HarnessError

FIXTURES = learn.FIXTURES  # shipped with the package: harness/data/checkpoints


def _tiny_config(family_name: str, rope_theta: float):
    family = get_family(family_name)
    kwargs = copy.deepcopy(dict(family.sizes["tiny"]))
    text = kwargs["text_config"]
    text["rope_theta"] = rope_theta
    if "rope_parameters" in text:  # transformers 5 may have written it into the family's dict; it wins over rope_theta
        text["rope_parameters"]["rope_theta"] = rope_theta
    return getattr(transformers, family.config_class)(**kwargs)


def _rope(config) -> tuple:
    text = config.get_text_config()
    params = getattr(text, "rope_parameters", None) or {}
    scaling = getattr(text, "rope_scaling", None) or {}
    return (params.get("rope_theta", getattr(text, "rope_theta", None)),
            params.get("mrope_section", scaling.get("mrope_section")))


@pytest.mark.parametrize("family_name", ["qwen2-vl", "qwen2.5-vl"])
def test_the_published_layout_reads_back_as_the_same_rotary_settings(family_name, tmp_path):
    config = _tiny_config(family_name, rope_theta=2.0)
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    layout.write_published_layout(tmp_path)
    published = json.loads((tmp_path / "config.json").read_text())

    assert "rope_parameters" not in json.dumps(published)
    assert published["text_config"]["rope_theta"] == 2.0
    assert published["text_config"]["rope_scaling"]["mrope_section"]  # 4.57 writes this layout itself (type 'default')
    back = transformers.AutoConfig.from_pretrained(tmp_path)
    assert _rope(back) == _rope(config) == (2.0, written["text_config"].get("rope_parameters", {}).get(
        "mrope_section", written["text_config"].get("rope_scaling", {}).get("mrope_section")))


def test_a_list_of_extra_special_tokens_becomes_additional_special_tokens():
    tokens = ["<|im_start|>", "<|box_start|>"]
    out = layout.published_tokenizer_config({"extra_special_tokens": tokens, "eos_token": "<eot>"})
    assert out == {"additional_special_tokens": tokens, "eos_token": "<eot>"}
    as_dict = {"extra_special_tokens": {"image_token": "<img>"}}
    assert layout.published_tokenizer_config(as_dict) == as_dict  # a dict is read by 4.57 as it is


def test_a_rotary_4_57_cannot_express_is_refused_by_name():
    with pytest.raises(HarnessError, match="vision_config: axial rotary with rope_theta 500.0"):
        layout.published_config({"vision_config": {"rope_parameters": {"rope_type": "axial", "rope_theta": 500.0}}})


@pytest.mark.parametrize("name", ["qwen2-vl-shapes", "qwen2.5-vl-shapes", "clip-shapes"])
def test_the_committed_fixtures_are_in_the_published_layout(name):
    config = json.loads((FIXTURES / name / "config.json").read_text())
    tokenizer = json.loads((FIXTURES / name / "tokenizer_config.json").read_text())
    assert layout.published_config(config) == config
    assert layout.published_tokenizer_config(tokenizer) == tokenizer


def test_rotary_settings_by_layer_type_keep_each_layer_type_s_base(tmp_path):
    # Gemma 3 in transformers 5: rope_parameters keyed by layer type, the global layers' theta scaled linearly
    family = get_family("gemma3")
    kwargs = copy.deepcopy(dict(family.sizes["tiny"]))
    kwargs["text_config"].update(rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                                 rope_scaling={"rope_type": "linear", "factor": 8.0})
    config = getattr(transformers, family.config_class)(**kwargs)
    config.save_pretrained(tmp_path)
    layout.write_published_layout(tmp_path)
    text = json.loads((tmp_path / "config.json").read_text())["text_config"]

    assert "rope_parameters" not in text
    assert (text["rope_theta"], text["rope_local_base_freq"]) == (1_000_000.0, 10_000.0)
    assert text["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
    back = transformers.AutoConfig.from_pretrained(tmp_path).get_text_config()
    assert getattr(back, "rope_parameters", None) == getattr(config.get_text_config(), "rope_parameters", None)


def test_a_layer_type_4_57_has_no_rotary_setting_for_is_refused_by_name():
    node = {"rope_parameters": {"full_attention": {"rope_theta": 1.0}, "chunked_attention": {"rope_theta": 2.0}}}
    with pytest.raises(HarnessError, match=r"text_config: rope_parameters by layer type .*chunked_attention"):
        layout.published_rope(node, "text_config")
