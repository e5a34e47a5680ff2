"""Checkpoint files in the layout published checkpoints have, which transformers 4.57 and 5.x both read.

transformers 5 saves a config's rotary settings as `rope_parameters` and a tokenizer's special tokens as an
`extra_special_tokens` list. transformers 4.57 reads neither: it would build the model with its default rope_theta
(silently another model) and fails on the tokenizer. Published Qwen checkpoints write `rope_theta` and
`rope_scaling`, and `additional_special_tokens`, which transformers 5 still reads. A checkpoint written once and
loaded under both (the committed fixtures) is rewritten into that layout after save_pretrained.
"""
from __future__ import annotations

import json
from pathlib import Path

from harness.util.atomic import write_json
from harness.util.errors import HarnessError

# rotary types 4.57 has no setting for, and the theta it hard-codes for them (Qwen2-VL's vision tower)
FIXED_ROPE = {"axial": 10000.0}
# transformers 5 keys rope_parameters by layer type where layer types rotate differently (Gemma 3: global layers
# with a scaled rope_theta, sliding-window layers with their own base). The global settings are rope_theta and
# rope_scaling in the published layout; another layer type's base has a name of its own, and no scaling.
GLOBAL_LAYERS = "full_attention"
LOCAL_THETA = {"sliding_attention": "rope_local_base_freq"}


def published_rope(node: dict, where: str) -> dict:
    """Return a config dict with `rope_parameters` replaced by `rope_theta` and `rope_scaling` (none for 'default')."""
    if "rope_parameters" not in node:
        return node
    node = dict(node)
    rope = dict(node.pop("rope_parameters") or {})
    if rope and all(isinstance(v, dict) for v in rope.values()):
        return _published_rope_by_layer_type(node, rope, where)
    rope_type = rope.pop("rope_type", "default")
    theta = rope.pop("rope_theta", None)
    if rope_type in FIXED_ROPE:
        if theta not in (None, FIXED_ROPE[rope_type]) or rope:
            raise HarnessError(f"{where}: {rope_type} rotary with rope_theta {theta} and {rope} cannot be written for "
                               f"transformers 4.57, which fixes it at {FIXED_ROPE[rope_type]}; keep the default")
        return node
    if theta is not None:
        node["rope_theta"] = theta
    kind = rope.pop("type", rope_type)
    if rope or kind != "default":
        node["rope_scaling"] = {"type": kind, **rope}
    return node


def _published_rope_by_layer_type(node: dict, rope: dict, where: str) -> dict:
    unknown = sorted(set(rope) - {GLOBAL_LAYERS, *LOCAL_THETA})
    if GLOBAL_LAYERS not in rope or unknown:
        raise HarnessError(f"{where}: rope_parameters by layer type {sorted(rope)}: expected {GLOBAL_LAYERS!r} and "
                           f"any of {sorted(LOCAL_THETA)}, found {unknown or 'no ' + GLOBAL_LAYERS}; transformers 4.57 "
                           "has no setting for it: keep this checkpoint in transformers 5's layout")
    for layer_type, name in LOCAL_THETA.items():
        local = dict(rope.get(layer_type, {}))
        if not local:
            continue
        theta, kind = local.pop("rope_theta", None), local.pop("rope_type", local.pop("type", "default"))
        if kind != "default" or local:
            raise HarnessError(f"{where}: {layer_type} layers rotate as {kind!r} with {local}; transformers 4.57 "
                               f"reads only a base for them ({name}): keep this checkpoint in transformers 5's layout")
        if theta is not None:
            node[name] = theta
    out = published_rope({**node, "rope_parameters": rope[GLOBAL_LAYERS]}, where)
    if "rope_scaling" in out:  # as Gemma 3's published config writes it: transformers 5 reads a bare "type" as default
        scaling = dict(out["rope_scaling"])
        out["rope_scaling"] = {"rope_type": scaling.pop("type"), **scaling}
    return out


def published_config(config: dict) -> dict:
    """Return a saved config.json's contents in the published layout (top level and each sub-config)."""
    out = dict(published_rope(config, "config"))
    for key, value in list(out.items()):
        if key.endswith("_config") and isinstance(value, dict):
            out[key] = published_rope(value, key)
    if "dtype" in out:
        out.setdefault("torch_dtype", out["dtype"])
    return out


def published_tokenizer_config(config: dict) -> dict:
    """Return a tokenizer_config.json's contents with a list of extra special tokens named as 4.57 reads it."""
    extra = config.get("extra_special_tokens")
    if not isinstance(extra, list):
        return config
    out = {k: v for k, v in config.items() if k != "extra_special_tokens"}
    out["additional_special_tokens"] = extra
    return out


def write_published_layout(folder: Path) -> None:
    """Rewrite a saved checkpoint's config.json and tokenizer_config.json (where present) in the published layout."""
    folder = Path(folder)
    for name, convert in (("config.json", published_config), ("tokenizer_config.json", published_tokenizer_config)):
        path = folder / name
        if path.exists():
            write_json(path, convert(json.loads(path.read_text())))
