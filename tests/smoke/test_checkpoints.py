"""Checkpoints: synthetic ones are built once and reused; a user's folder or HF cache entry loads through the same path."""
import json
import shutil

import pytest

from harness.families import FAMILIES, get_family
from harness.model import load, synth
from harness.recipe import default_recipe
from harness.util.errors import HarnessError


@pytest.fixture(scope="module")
def qwen_checkpoint(cache_dir):
    return synth.synthetic_checkpoint(get_family("qwen2.5-vl"), "tiny", cache_dir)


def test_each_case_loads_once_per_worker(case, qlora, qlora_loads):
    # Serially and in each pytest-xdist worker alike; with --dist loadgroup a case's tests also share one worker
    # (its xdist_group mark), which tests/slow/test_xdist_loads.py counts across workers.
    assert qlora_loads[case.id] == 1


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


def test_the_cache_key_follows_the_family_s_builders(monkeypatch):
    import dataclasses

    family = get_family("qwen2.5")
    key = synth.checkpoint_key(family, "tiny", 0)
    # a changed module that shapes the files (here the family module's source) is a new checkpoint, never a stale one
    real = synth.builder_sources(family)
    monkeypatch.setattr(synth, "builder_sources", lambda f: {**real, "harness.families.qwen2_5": "edited"})
    assert synth.checkpoint_key(family, "tiny", 0) != key
    monkeypatch.undo()

    def other_writer(folder, config):  # another processor writer with the same config is another checkpoint too
        family.write_processor(folder, config)

    assert synth.checkpoint_key(dataclasses.replace(family, write_processor=other_writer), "tiny", 0) != key
    assert synth.checkpoint_key(family, "tiny", 0) == key


def test_the_key_covers_the_family_module_and_its_helpers():
    sources = synth.builder_sources(get_family("qwen3-vl"))
    assert {"harness.families.qwen3_vl", "harness.families._qwen", "harness.families._tokens",
            "harness.families.base", "harness.model.synth", "harness.model.layout"} <= set(sources)


INIT_HOOKED = [n for n, f in FAMILIES.items() if f.init_weights is not None and f.unavailable() is None]


@pytest.mark.parametrize("name", INIT_HOOKED)
def test_an_init_hook_draws_the_weights_transformers_leaves_at_zero(name, tmp_path):
    import dataclasses

    import torch
    from safetensors.torch import load_file

    family = get_family(name)
    built = synth.synthetic_checkpoint(family, "tiny", tmp_path / "hooked")
    without = synth.synthetic_checkpoint(dataclasses.replace(family, init_weights=None), "tiny", tmp_path / "plain")
    hooked, plain = load_file(built / "model.safetensors"), load_file(without / "model.safetensors")
    changed = [k for k in hooked if not torch.equal(hooked[k], plain[k])]
    assert changed, "the init hook changed no weight"
    assert all(plain[k].abs().max() == 0 for k in changed)  # what the hook draws, transformers left at zero
    assert all(hooked[k].abs().max() > 0 for k in changed)
