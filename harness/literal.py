"""Library calls a recipe states literally: `load:` (from_pretrained), `bitsandbytes:` (BitsAndBytesConfig) and
`peft:` (LoraConfig) keyword arguments exactly as the user's script writes them.

A key a section leaves out is left out of the call, so the installed library's default applies: that is what a
user's script gets, and what an upgrade can silently change. Keys are checked against the installed library's
own signature (a typo gets a did-you-mean). What the harness needs to know of the calls (4-bit or not, quant
type, r, alpha…) is read back from the config objects the installed library builds from them, never assumed.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

from harness.util.errors import HarnessError, did_you_mean

SECTIONS = ("load", "bitsandbytes", "peft")
DTYPE_KEYS = ("dtype", "torch_dtype", "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")
DTYPE_NAMES = ("bfloat16", "float16", "float32", "uint8", "auto")
# from_pretrained takes most of its arguments through **kwargs: those a fine-tuning script writes, beyond the
# named parameters of the installed signature.
LOAD_KWARGS = ("dtype", "torch_dtype", "attn_implementation", "low_cpu_mem_usage", "use_cache", "max_memory",
               "offload_folder", "subfolder", "variant", "key_mapping", "trust_remote_code", "use_safetensors")
# What the harness itself decides: the checkpoint, where it goes, and that nothing is downloaded.
HARNESS_OWNED = {"pretrained_model_name_or_path": "the checkpoint is the case's",
                 "device_map": "the harness places the model on the device it tests",
                 "local_files_only": "always true: nothing is downloaded",
                 "quantization_config": "write its arguments as the bitsandbytes: section",
                 "token": "no hub is used", "cache_dir": "no hub is used", "force_download": "no hub is used"}
# adapter_config.json fields that describe a saved adapter rather than configure LoRA
SAVED_ONLY = ("peft_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version")


def load_keys() -> set[str]:
    """Return the from_pretrained keyword arguments the installed transformers accepts (as far as it says)."""
    from transformers import PreTrainedModel

    named = inspect.signature(PreTrainedModel.from_pretrained).parameters
    return {n for n, p in named.items() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD} \
        | set(LOAD_KWARGS)


def bnb_keys() -> set[str]:
    """Return BitsAndBytesConfig's keyword arguments in the installed transformers."""
    from transformers import BitsAndBytesConfig

    return {n for n, p in inspect.signature(BitsAndBytesConfig.__init__).parameters.items()
            if n != "self" and p.kind is not p.VAR_KEYWORD}


def lora_keys() -> set[str]:
    """Return LoraConfig's fields in the installed peft."""
    from peft import LoraConfig

    return {f.name for f in dataclasses.fields(LoraConfig) if f.init}


def _library(section: str) -> str:
    import importlib.metadata as md

    name = "peft" if section == "peft" else "transformers"
    return f"{name} {md.version(name)}"


def check_keys(section: str, data: dict, where: str) -> None:
    """Raise naming the first key of a literal section that the installed library does not accept."""
    known = {"load": load_keys, "bitsandbytes": bnb_keys, "peft": lora_keys}[section]()
    for key in data:
        if section == "load" and key in HARNESS_OWNED:
            raise HarnessError(f"{where}: load.{key} is not a recipe's to set ({HARNESS_OWNED[key]}); remove it")
        if key not in known:
            raise HarnessError(f"{where}: {section}.{key} is not a keyword argument of "
                               f"{ {'load': 'from_pretrained', 'bitsandbytes': 'BitsAndBytesConfig', 'peft': 'LoraConfig'}[section]} "
                               f"in the installed {_library(section)}{did_you_mean(str(key), known)}")
    for key in DTYPE_KEYS:
        if key in data and data[key] not in DTYPE_NAMES:
            raise HarnessError(f"{where}: {section}.{key} must be a dtype name ({', '.join(DTYPE_NAMES)}), "
                               f"found {data[key]!r}{did_you_mean(str(data[key]), DTYPE_NAMES)}")


def from_adapter_config(path: Path, where: str) -> dict:
    """Return LoraConfig keyword arguments from a saved adapter_config.json, as `peft: {from: PATH}` asks."""
    if not path.is_file():
        raise HarnessError(f"{where}: peft.from names {path}, which does not exist; give the path of an "
                           "adapter_config.json (relative to the recipe file)")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise HarnessError(f"{where}: peft.from {path} is not valid JSON ({e})") from None
    if not isinstance(saved, dict) or str(saved.get("peft_type", "LORA")).upper() != "LORA":
        raise HarnessError(f"{where}: peft.from {path} is not a LoRA adapter config (peft_type "
                           f"{saved.get('peft_type') if isinstance(saved, dict) else '?'})")
    known = lora_keys()
    out = {k: v for k, v in saved.items() if k in known and k not in SAVED_ONLY}
    unknown = sorted(k for k, v in saved.items() if k not in known and k not in SAVED_ONLY and v)
    if unknown:
        raise HarnessError(f"{where}: peft.from {path} sets {', '.join(unknown)}, unknown to the installed "
                           f"{_library('peft')} (written by another peft release?)")
    return out


def parse_section(section: str, data, where: str, recipe_dir: Path | None) -> dict:
    """Return a literal section as the keyword arguments it states, checked against the installed library."""
    if not isinstance(data, dict):
        raise HarnessError(f"{where}: {section}: expected a mapping of keyword arguments, found {type(data).__name__}")
    data = {str(k): v for k, v in data.items()}
    if section == "peft" and "from" in data:
        if len(data) > 1:
            raise HarnessError(f"{where}: peft.from takes the whole LoraConfig from a saved adapter config; "
                               f"remove the other keys ({', '.join(k for k in data if k != 'from')})")
        path = Path(str(data["from"])).expanduser()
        data = from_adapter_config(path if path.is_absolute() or recipe_dir is None else recipe_dir / path, where)
    check_keys(section, data, where)
    return data


def torch_value(key: str, value):
    """Return a literal value as the call receives it: dtype names become torch dtypes ('auto' stays)."""
    if key in DTYPE_KEYS and value != "auto":
        import torch

        return getattr(torch, value)
    return value


def bnb_object(kwargs: dict):
    """Return the BitsAndBytesConfig the installed transformers builds from literal keyword arguments."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**{k: torch_value(k, v) for k, v in kwargs.items()})


def lora_object(kwargs: dict):
    """Return the LoraConfig the installed peft builds from literal keyword arguments."""
    from peft import LoraConfig

    return LoraConfig(**kwargs)


def effective_quantization(kwargs: dict | None) -> dict:
    """Return the shorthand quantization fields a literal BitsAndBytesConfig amounts to in the installed library
    (its own defaults filled in), or a 16-bit load when there is no bitsandbytes section."""
    if kwargs is None:
        return {"load_in_4bit": False, "keep_16bit": ()}
    config = bnb_object(kwargs)

    def name(dtype) -> str:
        return str(dtype).removeprefix("torch.") if dtype is not None else "float32"

    return {"load_in_4bit": bool(config.load_in_4bit), "quant_type": config.bnb_4bit_quant_type,
            "double_quant": bool(config.bnb_4bit_use_double_quant),
            "compute_dtype": name(config.bnb_4bit_compute_dtype),
            "quant_storage": name(getattr(config, "bnb_4bit_quant_storage", None) or "uint8"), "keep_16bit": ()}


def effective_lora(kwargs: dict) -> dict:
    """Return the shorthand LoRA fields a literal LoraConfig amounts to in the installed peft (its defaults filled in)."""
    config = lora_object(kwargs)
    targets = config.target_modules
    return {"r": int(config.r), "alpha": float(config.lora_alpha), "dropout": float(config.lora_dropout),
            "use_rslora": bool(config.use_rslora), "use_dora": bool(config.use_dora), "target_roles": (),
            "target_modules": tuple(sorted(targets)) if isinstance(targets, (set, list, tuple)) else
            ((targets,) if targets else ())}
