"""`qlora-harness doctor`: what this machine can run, what is missing and how to fix it; optionally, your inputs."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.util.env import library_versions


@dataclass(frozen=True)
class Requirement:
    """Something the harness uses: what needs it, how to get it, and whether nothing runs without it."""

    name: str
    needed_for: str
    fix: str
    required: bool


REQUIREMENTS = (
    Requirement("torch", "everything", "pip install torch==2.13.0 (the CPU build; a CUDA build on a GPU machine)", True),
    Requirement("transformers", "loading models", "pip install 'transformers>=4.57'", True),
    Requirement("peft", "LoRA adapters", "pip install peft", True),
    Requirement("bitsandbytes", "4-bit loading (the smoke and GPU tiers)", "pip install 'bitsandbytes>=0.49'", True),
    Requirement("accelerate", "device placement in from_pretrained", "pip install accelerate", True),
    Requirement("unsloth", "the Unsloth backend (pytest -m unsloth)", "pip install 'qlora-harness[unsloth]'", False),
)
GPU = Requirement("CUDA GPU", "the GPU tier (pytest -m gpu)", "run it on a machine with a CUDA GPU", False)


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's answer: a requirement and what was found (None: missing)."""

    name: str
    found: str | None
    needed_for: str
    fix: str
    required: bool

    @property
    def ok(self) -> bool:
        return self.found is not None

    def line(self) -> str:
        if self.ok:
            return f"{self.name:<13} {self.found}"
        effect = "cannot run" if self.required else "is skipped"
        return f"{self.name:<13} missing: {self.needed_for} {effect}; {self.fix}"


def skip_reason(name: str) -> str:
    """Return the reason a test that needs a requirement gives when it skips, e.g. "needs bitsandbytes: pip install ..."."""
    if name == GPU.name:
        return "needs a CUDA GPU"
    req = next(r for r in REQUIREMENTS if r.name == name)
    return f"needs {req.name}: {req.fix}"


def findings(versions: dict, gpu: str | None) -> list[Finding]:
    """Return one finding per requirement, from library versions (None: missing) and the GPU fingerprint."""
    rows = [Finding(r.name, versions.get(r.name), r.needed_for, r.fix, r.required) for r in REQUIREMENTS]
    return rows + [Finding(GPU.name, gpu, GPU.needed_for, GPU.fix, GPU.required)]


def missing(name: str) -> str | None:
    """Return the skip reason if a requirement is missing here, else None."""
    if name == GPU.name:
        from harness.util.env import has_cuda

        return None if has_cuda() else skip_reason(name)
    return skip_reason(name) if library_versions().get(name) is None else None


def _gpu() -> str | None:
    try:
        from harness.util.env import gpu_fingerprint

        return gpu_fingerprint()
    except ImportError:  # no torch: reported as missing on its own line
        return None


def check_inputs(recipe_path: str | None, checkpoint: str | None) -> list[str]:
    """Return a line per input that checks out; raise HarnessError naming what is wrong with one."""
    from harness.families import get_family
    from harness.model import load
    from harness.model.preflight import load_checked

    lines, recipe = [], None
    if recipe_path:
        recipe = load_checked(recipe_path)  # as data, and its LoRA targets against the family's modules
        lines.append(f"recipe        {recipe_path}: valid ({recipe.name}, family {recipe.family})")
    if checkpoint:
        folder = load.resolve_checkpoint(checkpoint)
        family = get_family(recipe.family) if recipe else load.detect_family(folder)
        config = load.read_config(folder, family)  # the architecture must be the family's
        checked = load.check_checkpoint(folder, family, config, allow_pickle=bool(recipe and recipe.allow_pickle))
        lines.append(f"checkpoint    {folder}: a {family.name} checkpoint ({family.model_class}), "
                     f"{checked} tensors of the config's shapes")
    return lines


def add_arguments(parser) -> None:
    """Add the doctor's options to its subcommand parser."""
    parser.add_argument("--recipe", help="also check this recipe file")
    parser.add_argument("--checkpoint", help="also check this checkpoint folder (against --recipe's family if given)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")


def run(args) -> int:
    """Print what is installed and missing (and check --recipe/--checkpoint); return 1 if a required library is missing."""
    from harness.model import load  # noqa: F401 - sets the offline default that is reported below
    from harness.model.synth import default_cache_dir

    inputs = check_inputs(args.recipe, args.checkpoint)  # first: bad input fails fast, before torch is imported
    rows = findings(library_versions(), _gpu())
    offline = os.environ.get("HF_HUB_OFFLINE", "")
    cache = default_cache_dir(os.environ)
    if args.json:
        print(json.dumps({"requirements": [{**asdict(r), "ok": r.ok} for r in rows], "offline": offline,
                          "cache_dir": str(cache), "inputs": inputs}, indent=2))
    else:
        print(f"{'python':<13} {library_versions()['python']}")
        for row in rows:
            print(row.line())
        print(f"{'offline':<13} HF_HUB_OFFLINE={offline or '(unset)'}: "
              + ("nothing is downloaded" if offline.lower() in ("1", "true", "yes") else "downloads are possible"))
        print(f"{'cache':<13} {cache} ({_count(cache)} synthetic checkpoints)")
        for line in inputs:
            print(line)
    return 1 if any(r.required and not r.ok for r in rows) else 0


def _count(cache: Path) -> int:
    folder = Path(cache) / "checkpoints"
    return sum(1 for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else 0
