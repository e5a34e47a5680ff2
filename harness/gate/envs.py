"""The environments a gate compares: an interpreter given by path, or a virtualenv built from requirement specs.

A venv built from specs is layered over the interpreter running the gate: its own site-packages holds what the
specs install and comes first on sys.path; a .pth file then adds the gate interpreter's site directories, so
everything the specs do not name (torch above all: never re-downloaded) is the gate's own. This works from
inside a venv too, where `python -m venv --system-site-packages` would expose the base installation instead.
Built venvs are cached under <cache>/envs/, keyed by the specs and the interpreter they layer over.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness.util.errors import HarnessError

MARKER = "qlora-harness-env.json"  # written last: a venv folder without it was never finished
LAYER_PTH = "_qlora_harness_base.pth"
LOG_TAIL = 15  # lines of a failed command's output quoted in the error


@dataclass(frozen=True)
class Environment:
    """One side of a gate: the interpreter that runs the collector, and the specs its venv was built from."""

    python: Path
    specs: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return " ".join(self.specs) if self.specs else str(self.python)


def _is_path(token: str) -> bool:
    return os.sep in token or "/" in token or token.startswith(("~", "."))


def interpreter(path: str | Path) -> Path:
    """Return the Python executable at path (a venv folder names its bin/python); raise if there is none."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / "bin" / "python", path / "Scripts" / "python.exe"):
            if candidate.is_file():
                return candidate.absolute()
    if path.is_file() and os.access(path, os.X_OK):
        return _is_python(path.absolute())
    raise HarnessError(f"no Python interpreter at {path}; give the path of a python executable (e.g. .venv/bin/python) "
                       "or of a virtualenv folder")


PROBE = "import sys; print('qlora-harness-python', sys.version_info[0], sys.version_info[1])"


def _is_python(path: Path) -> Path:
    """Return path if running it as Python answers as a Python 3.10+; raise naming what it is instead."""
    try:
        done = subprocess.run([str(path), "-c", PROBE], capture_output=True, text=True, errors="replace", timeout=60)
        words = (done.stdout.strip().splitlines() or [""])[-1].split()
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"{path} is not a Python interpreter (running it failed: {e}); give the path of a python "
                           "executable, e.g. .venv/bin/python") from None
    if len(words) != 3 or words[0] != "qlora-harness-python":
        raise HarnessError(f"{path} is not a Python interpreter (asked for its version, it answered "
                           f"{(done.stdout + done.stderr).strip()[:80]!r}); give the path of a python executable, "
                           "e.g. .venv/bin/python")
    if (int(words[1]), int(words[2])) < (3, 10):
        raise HarnessError(f"{path} is Python {words[1]}.{words[2]}; the harness needs Python 3.10 or newer")
    return path


def parse_specs(tokens: list[str], side: str) -> list[str]:
    """Return requirement specs, each naming a version; raise naming a malformed or unpinned one."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    seen = set()
    for token in tokens:
        try:
            req = Requirement(token)
        except InvalidRequirement as e:
            raise HarnessError(f"--{side} {token!r} is neither an interpreter path nor a requirement spec ({e}); "
                               "give e.g. transformers==4.57.1, or the path of a python executable") from None
        if not req.specifier and not req.url:
            raise HarnessError(f"--{side} {token!r} names no version; pin one, e.g. {req.name}==4.57.1 "
                               "(an unpinned spec installs whatever is newest)")
        name = canonicalize_name(req.name)
        if name in seen:
            raise HarnessError(f"--{side} names {req.name} twice; give each library once")
        seen.add(name)
    return list(tokens)


def parse_side(tokens: list[str], side: str) -> tuple[Path | None, list[str]]:
    """Return (interpreter, []) or (None, specs) from the values of --reference or --candidate."""
    if not tokens:
        raise HarnessError(f"--{side} needs a value: a python executable, or requirement specs such as transformers==4.57.1")
    paths = [t for t in tokens if _is_path(t) or re.fullmatch(r"python[0-9.]*", t)]
    if paths and len(tokens) > 1:
        raise HarnessError(f"--{side} {' '.join(tokens)}: give one interpreter path, or requirement specs, not both")
    if paths:
        found = paths[0] if _is_path(paths[0]) else shutil.which(paths[0])
        if found is None:
            raise HarnessError(f"--{side} {paths[0]}: no {paths[0]} on PATH; give the path of a python executable")
        return interpreter(found), []
    return None, parse_specs(tokens, side)


def site_dirs(python: Path) -> list[str]:
    """Return the site directories an interpreter imports from, in its order (user site first, as site.py adds it)."""
    script = ("import json, os, site\n"
              "dirs = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []\n"
              "print(json.dumps([d for d in dirs + site.getsitepackages() if os.path.isdir(d)]))")
    return json.loads(_run([str(python), "-c", script], "list the site directories of " + str(python)).stdout.splitlines()[-1])


def create_layered_venv(folder: Path, base_python: Path, with_pip: bool = True) -> Path:
    """Create a venv at folder layered over base_python's site directories; return its interpreter."""
    folder = Path(folder)
    _run([str(base_python), "-m", "venv", *([] if with_pip else ["--without-pip"]), str(folder)], f"create a venv at {folder}")
    python = interpreter(folder)
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   "find the venv's site-packages").stdout.strip().splitlines()[-1]
    lines = "; ".join(f"site.addsitedir({d!r})" for d in site_dirs(base_python))
    (Path(purelib) / LAYER_PTH).write_text(f"import site; {lines}\n")
    return python


def env_key(specs: list[str], base_python: Path) -> str:
    """Return a short hash of the specs and of the interpreter a venv layers over."""
    base = Path(base_python).resolve()
    blob = json.dumps({"specs": sorted(specs), "base": str(base), "base_version": _version_of(base)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _version_of(python: Path) -> str:
    return _run([str(python), "-c", "import sys; print(sys.version)"], f"run {python}").stdout.strip()


def venv_folder(specs: list[str], cache_dir: Path, base_python: Path) -> Path:
    """Return where the venv for specs layered over base_python lives in the cache."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", "-".join(sorted(specs))).strip("-")[:60]
    return Path(cache_dir) / "envs" / f"{slug}-{env_key(specs, base_python)}"


def venv_for(specs: list[str], cache_dir: Path, base_python: Path | None = None,
             say: Callable[[str], None] = lambda m: None) -> Environment:
    """Return the environment of specs: a cached layered venv, built once (file lock; a half-built one is rebuilt)."""
    from filelock import FileLock

    base_python = Path(base_python or sys.executable)
    folder = venv_folder(specs, cache_dir, base_python)
    if (folder / MARKER).is_file():
        return Environment(interpreter(folder), tuple(specs))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / MARKER).is_file():
            if folder.exists():
                shutil.rmtree(folder)
            say(f"building a venv for {' '.join(specs)} at {folder} (once; later runs reuse it)")
            try:
                _build(folder, specs, base_python)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
    return Environment(interpreter(folder), tuple(specs))


def _build(folder: Path, specs: list[str], base_python: Path) -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    # The base interpreter's pip, seen through the layering, installs into the venv's prefix: no ensurepip (~10 s).
    has_pip = subprocess.run([str(base_python), "-c", "import pip"], capture_output=True).returncode == 0
    python = create_layered_venv(folder, base_python, with_pip=not has_pip)
    named = {canonicalize_name(Requirement(s).name) for s in specs}
    # A spec whose dependencies want another torch must not pull one (an unpinned torch downloads gigabytes of
    # CUDA wheels): torch stays the base interpreter's unless a spec names it.
    base_torch = installed(base_python, ["torch"]).get("torch")
    constraints = folder / "constraints.txt"
    constraints.write_text("" if "torch" in named or not base_torch else f"torch=={base_torch['version']}\n")
    log = pip_log(folder)  # beside the venv, not in it: a failed build removes the venv and the log must stay
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraints), *specs],
         f"pip install {' '.join(specs)} (log: {log})", log=log)
    found = installed(python, sorted(named))
    for spec in specs:
        req = Requirement(spec)
        got = found.get(canonicalize_name(req.name))
        if got is None:
            raise HarnessError(f"venv {folder}: {req.name} is not importable after pip install {spec}")
        if not Path(got["location"]).resolve().is_relative_to(folder.resolve()):
            raise HarnessError(f"venv {folder}: {req.name} {got['version']} resolves from {got['location']}, not from "
                               f"the venv, so the base interpreter's copy would shadow {spec}")
        if req.specifier and not req.specifier.contains(got["version"], prereleases=True):
            raise HarnessError(f"venv {folder}: pip installed {req.name} {got['version']}, which does not satisfy {spec}")
    from harness.util.atomic import write_json

    write_json(folder / MARKER, {"specs": specs, "base_python": str(base_python), "installed": found})


def pip_log(folder: Path) -> Path:
    """Return where the pip log of the venv at folder is kept: next to it, so it outlives a failed build."""
    return Path(folder).parent / f"{Path(folder).name}.pip-install.log"


def installed(python: Path, names: list[str]) -> dict:
    """Return {name: {version, location}} of the named distributions an interpreter has (absent ones left out)."""
    script = ("import importlib.metadata as md, json, sys\n"
              "out = {}\n"
              "for name in sys.argv[1:]:\n"
              "    try:\n"
              "        d = md.distribution(name)\n"
              "    except md.PackageNotFoundError:\n"
              "        continue\n"
              "    out[name] = {'version': d.version, 'location': str(d.locate_file(''))}\n"
              "print(json.dumps(out))")
    return json.loads(_run([str(python), "-c", script, *names], f"read versions in {python}").stdout.splitlines()[-1])


def _run(cmd: list[str], what: str, log: Path | None = None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except OSError as e:
        raise HarnessError(f"could not {what}: {e.strerror or e}") from None
    if log is not None:
        from harness.util.atomic import write_text

        write_text(log, result.stdout + result.stderr)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-LOG_TAIL:])
        raise HarnessError(f"could not {what}: exit status {result.returncode}:\n{tail}")
    return result


def harness_path(folder: Path) -> Path:
    """Return a folder holding only this harness package (a link), to put on a collector's PYTHONPATH."""
    import harness

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "harness"
    if not link.exists():
        link.symlink_to(Path(harness.__file__).resolve().parent, target_is_directory=True)
    return folder


def child_environ(pythonpath: Path) -> dict[str, str]:
    """Return the environment variables a collector runs with: only the harness on PYTHONPATH, no hub access."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(pythonpath), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_collectors(jobs: list[tuple[Environment, list[str], Path]], pythonpath: Path, parallel: bool = False) -> list[int]:
    """Run `python -m harness.gate.collect ARGS` for each (environment, args, log), output to its log; return the
    exit statuses. parallel runs them at once (nothing timed or measured on a GPU can share the machine)."""
    import threading

    from harness.util.atomic import copy_redacted

    running = []
    try:
        for env, args, log in jobs:
            proc = subprocess.Popen([str(env.python), "-m", "harness.gate.collect", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env=child_environ(pythonpath), text=True, errors="replace")
            # the log is written by the harness, through the redacting writer, not by the child
            pump = threading.Thread(target=copy_redacted, args=(proc.stdout, log), daemon=True)
            pump.start()
            running.append((proc, pump))
            if not parallel:
                proc.wait()
                pump.join()
        statuses = [proc.wait() for proc, _ in running]
        for _, pump in running:
            pump.join()
        return statuses
    finally:  # interrupted: no collector outlives the gate
        for proc, pump in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            pump.join(timeout=5)
            proc.stdout.close()


def log_tail(log: Path, lines: int = LOG_TAIL) -> str:
    """Return the last lines of a log file (progress bars dropped)."""
    text = Path(log).read_text(errors="replace") if Path(log).is_file() else ""
    kept = [l for l in text.splitlines() if l.strip() and "it/s]" not in l]
    return "\n".join(kept[-lines:])
