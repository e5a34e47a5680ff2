"""The supported range release by release, not only its two ends: a representative part of the smoke tier under
transformers 4.57.1, 5.0.0, 5.5.0 and 5.12.1, each with the peft and bitsandbytes of this interpreter and no
torchvision. The newest release is this interpreter's own, under which the whole smoke tier runs.

Each release runs in a venv layered over this interpreter (harness.gate.envs, as the gate builds them), cached under
<cache>/envs: built once (about 20 s each), reused by every later run and by the gate.
"""
from __future__ import annotations

import subprocess

import pytest

from harness.gate import envs

RELEASES = ("4.57.1", "5.0.0", "5.5.0", "5.12.1")
# What changes between releases, at a cost CI affords (each release also builds its own tiny checkpoints): the
# 4-bit load and the roles' module paths (the audit), the processors (5.0-5.23 need torchvision for the Qwen VL
# ones), placeholders and patches, and the adapter saved and reloaded.
SUBSET = ("tests/smoke/test_roles.py", "tests/smoke/test_multimodal.py", "tests/smoke/test_adapters.py")


@pytest.mark.parametrize("release", RELEASES, ids=[f"transformers-{r}" for r in RELEASES])
def test_the_smoke_subset_passes_under(release, cache_dir, pytestconfig):
    env = envs.venv_for([f"transformers=={release}"], cache_dir)
    probe = "import importlib.util as u, transformers; print(transformers.__version__, u.find_spec('torchvision') is None)"
    found = subprocess.run([str(env.python), "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert found == [release, "True"], f"the venv for transformers {release} holds {found}"
    run = subprocess.run([str(env.python), "-m", "pytest", "-m", "smoke", "-q", "-p", "no:cacheprovider",
                          "--cache-dir", str(cache_dir), *SUBSET], cwd=pytestconfig.rootpath, capture_output=True,
                         text=True, env=envs.child_environ(pytestconfig.rootpath))
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    assert run.returncode == 0, f"transformers {release}: {summary}\n{run.stdout[-4000:]}"
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
