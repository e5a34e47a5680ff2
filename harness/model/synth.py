"""Synthetic checkpoints: random weights from a family config, saved like a real checkpoint and built once."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from harness.families import FamilySpec, check_size
from harness.util.atomic import leftovers, staged_folder, write_json
from harness.util.env import library_versions
from harness.util.errors import HarnessError

from . import disk

MARKER = "qlora-harness.json"  # written last: a folder without it was never finished
ROOM_LOCK = ".room.lock"  # one build at a time makes disk room and reserves it; the builds then run side by side
BUILD_LOG = "builds.jsonl"  # one line per build, next to the checkpoints: what was built, by which process, how long
CACHE_ENV = "QLORA_HARNESS_CACHE"
BUILDS_ENV = "QLORA_HARNESS_BUILDS"  # how many checkpoints one cache builds at once
DEFAULT_BUILDS = 2
# Libraries whose version changes what save_pretrained writes (weights, configs, tokenizer files).
FORMAT_LIBRARIES = ("transformers", "tokenizers", "safetensors")


def default_cache_dir(environ: os._Environ | dict = os.environ) -> Path:
    """Return the checkpoint cache folder: $QLORA_HARNESS_CACHE, else the user's cache dir."""
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV]).expanduser()
    base = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "qlora-harness"


def build_slots(environ: os._Environ | dict = os.environ) -> int:
    """Return how many checkpoints a cache builds at once: $QLORA_HARNESS_BUILDS, else 2."""
    value = environ.get(BUILDS_ENV, "").strip()
    if not value:
        return DEFAULT_BUILDS
    if not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise HarnessError(f"{BUILDS_ENV}={value!r}: expected a whole number of checkpoint builds at once, 1 or more; "
                           f"set it so (1 builds one at a time) or unset it for the default {DEFAULT_BUILDS}")
    return int(value)


def make_config(family: FamilySpec, size: str):
    """Return the transformers config of a family at a size (the family's data left as it was)."""
    import copy

    import transformers

    check_size(family, size)
    # a copy: transformers 5 rewrites the rope_scaling dict it is given in place (adding rope_theta), which would
    # change the family's data, and with it every later config and checkpoint key in the process
    return getattr(transformers, family.config_class)(**copy.deepcopy(family.sizes[size]))


def builder_sources(family: FamilySpec) -> dict[str, str]:
    """Return a hash of the source of everything that shapes a checkpoint's files, by module: the family's module and
    the helpers it imports (tokens, shared Qwen parts), the spec's shape, and this module and the layout writer."""
    import importlib
    import inspect
    import sys

    from harness.families import base

    from . import layout

    modules = {base.__name__: base, __name__: sys.modules[__name__], layout.__name__: layout}
    for hook in (family.write_processor, family.init_weights, family.inputs.image_tokens):
        if hook is not None:
            modules.setdefault(hook.__module__, importlib.import_module(hook.__module__))
    spec_module = _spec_module(family)
    if spec_module is not None:
        modules.setdefault(spec_module.__name__, spec_module)
    # the family package's modules these import from (_qwen, and _tokens through it), transitively
    pending = list(modules.values())
    while pending:
        for value in vars(pending.pop()).values():
            name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            if isinstance(name, str) and name.startswith(base.__package__ + ".") and name not in modules:
                modules[name] = sys.modules[name]
                pending.append(modules[name])
    out = {}
    for name, module in sorted(modules.items()):
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):  # a module built in memory (a test's toy family): its hooks' code stands in
            source = name
        out[name] = hashlib.sha256(source.encode()).hexdigest()[:16]
    return out


def _spec_module(family: FamilySpec):
    import sys

    for module in list(sys.modules.values()):
        if getattr(module, "SPEC", None) is family:
            return module
    return None


def _hook_code(fn) -> str | None:
    # a hook defined outside any file (or a lambda in a test) still changes the key when its code changes
    code = getattr(fn, "__code__", None)
    return None if code is None else hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16]


def checkpoint_key(family: FamilySpec, size: str, seed: int) -> str:
    """Return a short hash of what shapes a synthetic checkpoint's files: the config, the seed, the family's data and
    builder code (harness.model.synth.builder_sources), and the library versions that affect the saved format."""
    import importlib.metadata as md

    versions = {name: md.version(name) for name in FORMAT_LIBRARIES}
    hooks = {name: _hook_code(fn) for name, fn in (("write_processor", family.write_processor),
                                                   ("init_weights", family.init_weights)) if fn is not None}
    blob = json.dumps(
        {"family": family.name, "model": family.model_class, "config_class": family.config_class,
         "config": family.sizes[size], "seed": seed, "versions": versions, "sources": builder_sources(family),
         "hooks": hooks}, sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_complete(folder: Path) -> bool:
    """Return whether folder holds a finished synthetic checkpoint whose weight files are whole (a file truncated
    after the build, by a full disk or a bad copy, makes the folder unfinished: it is built again)."""
    from .weights import headers_intact

    return (Path(folder) / MARKER).is_file() and headers_intact(folder)


def checkpoint_folder(family: FamilySpec, size: str, cache_dir: Path, seed: int = 0) -> Path:
    """Return where the synthetic checkpoint of a family at a size lives in a cache (built or not)."""
    check_size(family, size)
    return Path(cache_dir) / "checkpoints" / f"{family.name}-{size}-{checkpoint_key(family, size, seed)}"


def synthetic_checkpoint(family: FamilySpec, size: str, cache_dir: Path, seed: int = 0, device: str = "cpu",
                         urgent: bool = False) -> Path:
    """Return the folder of a synthetic checkpoint, building it once (file lock, atomic rename) if missing.

    urgent: the run's longest process waits for it: built in a slot of its own beside the others' (harness.model.disk)
    """
    slots = build_slots()
    folder = checkpoint_folder(family, size, cache_dir, seed)
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not is_complete(folder):  # another worker may have built it while we waited
            _sweep(folder)
            _build_beside_others(family, size, folder, seed, device, slots, extra=int(urgent))
    return folder


def _build_beside_others(family: FamilySpec, size: str, folder: Path, seed: int, device: str, slots: int,
                         extra: int = 0) -> None:
    # Up to `slots` builds of one cache run at once, and `extra` more urgent ones (harness.model.disk.build_slot).
    # Only the room accounting is one at a time (ROOM_LOCK): evict until the disk holds this build beside what the
    # builds in progress will still write, reserve that, go.
    checkpoints, needed = folder.parent, weight_bytes(family, size)
    asked = time.perf_counter()
    with disk.build_slot(checkpoints, slots, extra=extra):
        started, start = time.time(), time.perf_counter()
        with staged_folder(folder) as stage:
            with FileLock(str(checkpoints / ROOM_LOCK)):
                disk.make_room(_complete(checkpoints), checkpoints, needed)
                reservation = disk.reserve(checkpoints, folder.name, needed, stage)
            waited_s = time.perf_counter() - asked
            try:
                phases = _build(family, size, stage, seed, device) or {}  # a test's stand-in build times nothing
            finally:
                disk.unreserve(checkpoints, folder.name, reservation)
        _log_build(folder, {"started": started, "seconds": time.perf_counter() - start, "waited_s": waited_s,
                            "urgent": bool(extra),
                            "bytes": disk.folder_bytes(folder), **phases})


@contextmanager
def reading(family: FamilySpec, size: str, cache_dir: Path, seed: int = 0, device: str = "cpu", urgent: bool = False):
    """Yield the folder of a synthetic checkpoint, held against eviction while the caller reads it.

    Built if missing (urgent: as synthetic_checkpoint says); rebuilt if another process evicted it between the lookup
    and the lock.
    """
    while True:
        folder = synthetic_checkpoint(family, size, cache_dir, seed, device, urgent)
        lock = disk.hold(folder)
        if lock is None:
            continue  # evicted by another process before the lock was taken: build it again
        try:
            if is_complete(folder):
                yield folder
                return
        finally:
            disk.release(lock)


def weight_bytes(family: FamilySpec, size: str) -> int:
    """Return the bytes a checkpoint of family at size takes on disk (16-bit weights), from the meta device."""
    from .load import meta_model

    model = meta_model(family, make_config(family, size))
    tensors = {id(t): t for t in model.state_dict(keep_vars=True).values()}  # tied weights are one tensor
    return 2 * sum(t.numel() for t in tensors.values())


def _complete(checkpoints: Path) -> list[Path]:
    return [p for p in checkpoints.iterdir() if p.is_dir() and not p.name.startswith(".") and is_complete(p)]


def builds(cache_dir: Path) -> list[dict]:
    """Return the build log of a cache: one entry per synthetic checkpoint built.

    Each entry: folder, pid, bytes (the finished folder's); started and at (epoch seconds: the build took its slot,
    the folder was finished); seconds (from the one to the other: making room, building, saving); waited_s (for a
    slot and for room, making it included); construct_s, save_s, processor_s (the model built and initialized, its
    save_pretrained, the processor's files).
    """
    log = Path(cache_dir) / "checkpoints" / BUILD_LOG
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


def _sweep(folder: Path) -> None:
    # A build killed outright (no exception, so no cleanup) leaves its staging folder; we hold the lock, so
    # nothing else is writing one now.
    for path in leftovers(folder.parent, folder.name):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _log_build(folder: Path, facts: dict) -> None:
    # durations to the millisecond; timestamps whole, so that one build's start compares truly with another's end
    facts = {name: round(value, 3) if name == "seconds" or name.endswith("_s") else value
             for name, value in facts.items()}
    line = json.dumps({"folder": folder.name, "pid": os.getpid(), **facts, "at": time.time()})
    with open(folder.parent / BUILD_LOG, "a") as log:  # one short append per build: whole lines, even concurrently
        log.write(line + "\n")


def _build(family: FamilySpec, size: str, out: Path, seed: int, device: str) -> dict[str, float]:
    """Write a checkpoint into out; return the seconds its parts took (construct_s, save_s, processor_s)."""
    import torch
    import transformers

    start = time.perf_counter()
    config = make_config(family, size)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build in 16-bit: an 8B model in fp32 would need twice the memory
    try:
        with torch.device(device):
            model = getattr(transformers, family.model_class)(config)
    finally:
        torch.set_default_dtype(previous)
    if family.init_weights is not None:  # weights transformers leaves inert (Gemma 3's projector starts at zero)
        family.init_weights(model)
    constructed = time.perf_counter()
    model.save_pretrained(out, safe_serialization=True, max_shard_size="5GB")
    del model
    saved = time.perf_counter()
    family.write_processor(out, config)
    write_json(out / MARKER, {"family": family.name, "size": size, "seed": seed, "versions": library_versions()})
    return {"construct_s": constructed - start, "save_s": saved - constructed, "processor_s": time.perf_counter() - saved}
