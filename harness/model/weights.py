"""Checkpoint weights checked before they load: safetensors headers against file sizes, tensor shapes against the
architecture built on the meta device.

A 4-bit load does not compare shapes (bitsandbytes packs whatever it is given), and a truncated file may fail deep
inside from_pretrained or not at all; reading the headers is a few kilobytes per file.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from harness.util.errors import HarnessError

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Prefixes that transformers 5 adds to or drops from a checkpoint's names as it loads (Qwen2-VL's
# model.language_model.*, saved as model.*): names are compared without them.
LOADING_PREFIXES = ("model", "language_model")
DAMAGED = "the checkpoint is damaged: save or copy it again"


def read_header(path: Path) -> dict[str, list[int]]:
    """Return {tensor name: shape} from a safetensors file; raise naming the file if it is empty, truncated or not
    safetensors."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise HarnessError(f"{path} is {size} bytes, too short for a safetensors file; {DAMAGED}")
    with open(path, "rb") as f:
        (header_bytes,) = struct.unpack("<Q", f.read(8))
        if header_bytes > min(MAX_HEADER_BYTES, size - 8):
            raise HarnessError(f"{path}: its header claims {header_bytes:,} bytes but the file has {size:,}; "
                               f"it is truncated or not safetensors; {DAMAGED}")
        try:
            header = json.loads(f.read(header_bytes))
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
    if not isinstance(header, dict):
        raise HarnessError(f"{path}: the safetensors header is not a JSON mapping; {DAMAGED}")
    data_bytes, shapes = size - 8 - header_bytes, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], [int(n) for n in entry["shape"]], entry["data_offsets"]
            expected = math.prod(shape) * DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise HarnessError(f"{path}: tensor {name!r} has a malformed header entry; {DAMAGED}") from None
        if end > data_bytes:
            raise HarnessError(f"{path}: tensor {name} ends at byte {end:,} of the data, which holds {data_bytes:,}: "
                               f"the file is truncated; {DAMAGED}")
        if end - start != expected:
            raise HarnessError(f"{path}: tensor {name} {dtype}{shape} needs {expected:,} bytes, its offsets span "
                               f"{end - start:,}; {DAMAGED}")
        shapes[name] = shape
    return shapes


def weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    """Return the safetensors files of a checkpoint; raise if it has none (naming pickle files and the recipe key
    that allows them), or, with allow_pickle, if it has no weights at all."""
    folder = Path(folder)
    found = sorted(folder.glob("*.safetensors"))
    pickled = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if found or (allow_pickle and pickled):
        return found
    if allow_pickle:
        raise HarnessError(f"checkpoint {folder} has no weights at all (no *.safetensors, *.bin, *.pt); "
                           "point at the folder that save_pretrained wrote")
    raise HarnessError(
        f"checkpoint {folder} has no *.safetensors file (found {', '.join(p.name for p in pickled) or 'no weights at all'}); "
        "pickle weights can run code as they load: convert them to safetensors, or, if you trust their source, "
        "set allow_pickle: true in the recipe")


def _shards(folder: Path, files: list[Path]) -> None:
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return
    try:
        named = set(json.loads(index.read_text())["weight_map"].values())
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise HarnessError(f"{index} is not a safetensors index (a JSON with weight_map); {DAMAGED}") from None
    missing = sorted(named - {p.name for p in files})
    if missing:
        raise HarnessError(f"checkpoint {folder}: {index.name} names shards that are not there: "
                           f"{', '.join(missing[:3])}; {DAMAGED}")


def _plain(name: str) -> str:
    parts = name.split(".")
    while len(parts) > 1 and parts[0] in LOADING_PREFIXES:
        parts = parts[1:]
    return ".".join(parts)


def check_weights(folder: Path, skeleton, allow_pickle: bool = False) -> int:
    """Return how many tensors were checked; raise if a safetensors file is damaged or a tensor's shape is not the
    architecture's (skeleton: the model on the meta device)."""
    folder = Path(folder)
    files = weight_files(folder, allow_pickle)
    _shards(folder, files)
    expected = {_plain(n): (n, list(t.shape)) for n, t in skeleton.state_dict().items()}
    checked = 0
    for path in files:
        for name, shape in read_header(path).items():
            if _plain(name) not in expected:
                continue
            model_name, model_shape = expected[_plain(name)]
            if shape != model_shape:
                raise HarnessError(f"{path.name} of {folder}: {name} has shape {shape}, but the architecture in "
                                   f"config.json makes {model_name} {model_shape}; the weights are not this "
                                   "config's: use the config.json they were saved with")
            checked += 1
    if files and not checked:
        raise HarnessError(f"checkpoint {folder}: none of its tensors is named like a parameter of "
                           f"{type(skeleton).__name__}; the weights are of another architecture than config.json")
    return checked


def headers_intact(folder: Path) -> bool:
    """Return whether every safetensors file in folder has a readable header covered by the file's size."""
    try:
        files = sorted(Path(folder).glob("*.safetensors"))
        for path in files:
            read_header(path)
        return bool(files)
    except (HarnessError, OSError):
        return False
