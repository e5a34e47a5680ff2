"""A recipe's literal sections: the user's own library calls, keyword arguments exactly as their script writes them.

    load:          Model.from_pretrained(CHECKPOINT, **load)        a key left out is the library's default
    bitsandbytes:  BitsAndBytesConfig(**bitsandbytes)               dtypes by name: bnb_4bit_compute_dtype: bfloat16
    peft:          LoraConfig(**peft), or {from: adapter_config.json} to take them from a saved adapter
    training:      gradient_checkpointing_kwargs as written (absent: the library's default), prepare_for_kbit_training

Names are checked against the installed libraries' own signatures (an unknown keyword gets a did-you-mean);
values are the library's to judge, as they are in the user's script. This module is data and validation only
(layer `recipe`); harness.model.calls turns a recipe into the calls and makes them.
"""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

from harness.util.errors import HarnessError, did_you_mean

SECTIONS = ("load", "bitsandbytes", "peft")
DTYPE_KEYS = ("dtype", "torch_dtype", "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")
DTYPE_NAMES = ("bfloat16", "float16", "float32", "uint8", "int8", "float64")
# from_pretrained keywords the harness owns: what to use instead.
OWNED = {
    "pretrained_model_name_or_path": "the checkpoint is the case's (a synthetic one, or --checkpoint)",
    "quantization_config": "write BitsAndBytesConfig's keywords in the bitsandbytes: section",
    "local_files_only": "the harness never downloads: it always loads with local_files_only=True",
    "trust_remote_code": "use the recipe's top-level trust_remote_code key",
    "use_safetensors": "use the recipe's top-level allow_pickle key",
}
# Keys of a saved adapter_config.json that describe the file, not the LoRA: not passed to LoraConfig.
SAVED_ONLY = ("peft_type", "base_model_name_or_path", "revision", "auto_mapping", "peft_version", "inference_mode")


def dtype_name(value: Any) -> str:
    """Return a dtype's name as a recipe writes it ('bfloat16' for 'torch.bfloat16' or torch.bfloat16)."""
    return str(value).removeprefix("torch.")


def section(data: Any, name: str, where: str) -> dict:
    """Return a literal section as a plain dict; raise naming it unless it is a mapping with text keys."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HarnessError(f"{where}: {name}: expected a mapping of keyword arguments, found {type(data).__name__}")
    for key in data:
        if not isinstance(key, str) or not key.isidentifier():
            raise HarnessError(f"{where}: {name}: keyword {key!r} is not a Python identifier")
    out = dict(data)
    for key in DTYPE_KEYS:
        if key in out and out[key] != "auto":
            found = dtype_name(out[key])
            if found not in DTYPE_NAMES:
                raise HarnessError(f"{where}: {name}.{key} must be a dtype name ({', '.join(DTYPE_NAMES)}) or auto, "
                                   f"found {out[key]!r}{did_you_mean(found, DTYPE_NAMES)}")
            out[key] = found
    if name == "load":
        for key, instead in OWNED.items():
            if key in out:
                raise HarnessError(f"{where}: load.{key} is set by the harness: {instead}")
    return out


def peft_section(data: Any, where: str, base: Path | None) -> tuple[dict, list[str]]:
    """Return (LoraConfig keywords, notes) of a peft section; {from: FILE} reads them from a saved adapter_config.json."""
    kwargs = section(data, "peft", where)
    if "from" not in kwargs:
        return kwargs, []
    if len(kwargs) > 1:
        raise HarnessError(f"{where}: peft.from takes the keywords from a saved adapter; found other keys beside it "
                           f"({', '.join(k for k in kwargs if k != 'from')}): put them in the file, or drop from")
    path = Path(str(kwargs["from"])).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if path.is_dir():
        path = path / "adapter_config.json"
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"{where}: peft.from: {path} does not exist; give the adapter_config.json a saved adapter "
                           "has (or its folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HarnessError(f"{where}: peft.from: {path} is not valid JSON ({e})") from None
    if not isinstance(saved, dict) or saved.get("peft_type", "LORA") != "LORA":
        raise HarnessError(f"{where}: peft.from: {path} is not a LoRA adapter config (peft_type "
                           f"{saved.get('peft_type') if isinstance(saved, dict) else type(saved).__name__!r})")
    dropped = [k for k in SAVED_ONLY if k in saved]
    notes = [f"peft keywords read from {path}" + (f" (file keys left out: {', '.join(dropped)})" if dropped else "")]
    return section({k: v for k, v in saved.items() if k not in SAVED_ONLY}, "peft", where), notes


def from_pretrained_keywords(config_class: str) -> set[str]:
    """Return the keywords the installed transformers' from_pretrained takes: its parameters, the keywords it pops
    from **kwargs, and the attributes of the model's config (which from_pretrained forwards to it)."""
    import transformers
    from transformers import PreTrainedModel

    method = PreTrainedModel.from_pretrained
    names = {p for p in inspect.signature(method).parameters if p not in ("cls", "model_args", "kwargs")}
    names |= set(re.findall(r"kwargs\.pop\(\s*[\"'](\w+)[\"']", inspect.getsource(method)))
    names |= {n.lstrip("_") for n in vars(getattr(transformers, config_class)()).keys()}
    return {n for n in names if not n.startswith("_")}


def bitsandbytes_keywords() -> set[str]:
    """Return the keywords the installed transformers' BitsAndBytesConfig takes."""
    from transformers import BitsAndBytesConfig

    return {p for p in inspect.signature(BitsAndBytesConfig.__init__).parameters if p not in ("self", "kwargs")}


def lora_keywords() -> set[str]:
    """Return the keywords the installed peft's LoraConfig takes (its dataclass fields)."""
    import dataclasses

    from peft import LoraConfig

    return {f.name for f in dataclasses.fields(LoraConfig) if f.init}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {n: md.version(n) for n in ("transformers", "peft")}


def check_keywords(kwargs: dict, name: str, known: set[str], library: str, where: str) -> None:
    """Raise naming the first keyword the installed library does not take, with the nearest one it does."""
    for key in kwargs:
        if key not in known:
            call = {"load": "from_pretrained", "bitsandbytes": "BitsAndBytesConfig", "peft": "LoraConfig"}[name]
            raise HarnessError(f"{where}: {name}.{key}: {call} of the installed {library} {_versions()[library]} takes "
                               f"no keyword {key!r}{did_you_mean(key, known)}")


def validate(load: dict | None, bitsandbytes: dict | None, peft: dict | None, config_class: str, where: str) -> None:
    """Raise if a literal section names a keyword the installed transformers or peft does not take."""
    if load:
        check_keywords(load, "load", from_pretrained_keywords(config_class), "transformers", where)
    if bitsandbytes:
        check_keywords(bitsandbytes, "bitsandbytes", bitsandbytes_keywords(), "transformers", where)
    if peft:
        check_keywords(peft, "peft", lora_keywords(), "peft", where)
