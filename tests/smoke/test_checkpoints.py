"""Checkpoints: synthetic ones are built once and reused; a user's folder or HF cache entry loads through the same path."""
import json
import shutil

import pytest

from harness.families import get_family
from harness.model import load, synth
from harness.recipe import default_recipe
from harness.util.errors import HarnessError


@pytest.fixture(scope="module")
def qwen_checkpoint(cache_dir):
    return synth.synthetic_checkpoint(get_family("qwen2.5-vl"), "tiny", cache_dir)


def test_a_synthetic_checkpoint_is_laid_out_like_a_real_one_and_reused(qwen_checkpoint, cache_dir):
    names = {p.name for p in qwen_checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "chat_template.jinja", synth.MARKER} <= names
    stamp = (qwen_checkpoint / synth.MARKER).stat().st_mtime_ns
    again = synth.synthetic_checkpoint(get_family("qwen2.5-vl"), "tiny", cache_dir)
    assert again == qwen_checkpoint and (again / synth.MARKER).stat().st_mtime_ns == stamp


def test_a_hugging_face_cache_entry_loads_through_from_pretrained(qwen_checkpoint, tmp_path):
    entry = tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-7B-Instruct"
    snapshot = entry / "snapshots" / "0123abcd"
    shutil.copytree(qwen_checkpoint, snapshot)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("0123abcd")
    family = get_family("qwen2.5-vl")

    model = load.load_model(entry, family, default_recipe("qwen2.5-vl"))

    assert load.resolve_checkpoint(entry) == snapshot
    assert type(model).__name__ == family.model_class and model.is_loaded_in_4bit


def test_a_missing_checkpoint_folder_is_named(tmp_path):
    with pytest.raises(HarnessError, match=r"checkpoint folder .*absent does not exist"):
        load.load_model(tmp_path / "absent", get_family("qwen2.5"), default_recipe("qwen2.5"))


def test_a_checkpoint_of_another_architecture_is_refused(qwen_checkpoint):
    with pytest.raises(HarnessError, match=r"is a 'qwen2_5_vl' model, but family qwen2-vl expects model_type 'qwen2_vl'"):
        load.load_model(qwen_checkpoint, get_family("qwen2-vl"), default_recipe("qwen2-vl"))


def test_a_checkpoint_without_safetensors_is_refused_unless_pickle_is_allowed(qwen_checkpoint, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(qwen_checkpoint, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(HarnessError, match=r"has no \*.safetensors file"):
        load.load_model(folder, get_family("qwen2.5-vl"), default_recipe("qwen2.5-vl"))


def test_the_cache_key_follows_the_config(cache_dir):
    family = get_family("qwen2.5")
    assert synth.checkpoint_key(family, "tiny", 0) != synth.checkpoint_key(family, "tiny", 1)
    assert synth.checkpoint_key(family, "tiny", 0) != synth.checkpoint_key(family, "0.5b", 0)
    assert json.loads((synth.synthetic_checkpoint(family, "tiny", cache_dir) / synth.MARKER).read_text())["size"] == "tiny"
