"""Under pytest-xdist, what a user sees: with --dist loadgroup each case's model loads once, in one worker, counted
by the plugin (qlora_loads). The broken cases the count catches (a case loaded twice, or in two workers) are in
tests/tool/test_robustness.py; `--dist each`, every test in every worker, reads as the second (checked by hand:
both cases named, loads in gw0 and gw1), left out here to keep CI short."""
from __future__ import annotations

import json

import yaml

from harness.plugin import cases, pytest_plugin
from harness.recipe import RECIPES_DIR

RECORDING_TESTS = '''
import json, os

def record(case, loads):
    with open(os.environ["QLORA_LOAD_LOG"], "a") as f:
        f.write(json.dumps([os.environ.get("PYTEST_XDIST_WORKER", "main"), case.id, loads[case.id]]) + "\\n")

def test_one(qlora_case, qlora_loaded, qlora_loads):
    record(qlora_case, qlora_loads)

def test_two(qlora_case, qlora_loaded, qlora_loads):
    record(qlora_case, qlora_loads)

def test_three(qlora_case, qlora_loaded, qlora_loads):
    record(qlora_case, qlora_loads)
'''


def loads_under(pytester, cache_dir, monkeypatch, dist: str) -> list[tuple[str, str, int]]:
    """Run two recipes' tests on two workers with the given --dist; return (worker, case, loads) per test."""
    base = yaml.safe_load((RECIPES_DIR / "qwen2.5.yaml").read_text())
    args = []
    for r in (4, 8):
        base["name"], base["lora"]["r"] = f"rank-{r}", r
        (pytester.path / f"r{r}.yaml").write_text(yaml.safe_dump(base))
        args += ["--qlora-recipe", f"r{r}.yaml"]
    pytester.makepyfile(test_loads=RECORDING_TESTS)
    log = pytester.path / "loads.jsonl"
    monkeypatch.setenv("QLORA_LOAD_LOG", str(log))
    result = pytester.runpytest_subprocess(*pytest_plugin.load_arguments(), "-p", "no:cacheprovider", "-n", "2",
                                           "--dist", dist, "--qlora-cache-dir", str(cache_dir), *args, "test_loads.py")
    assert result.ret == 0, result.stdout.str()
    return [tuple(json.loads(line)) for line in log.read_text().splitlines()]


def test_with_loadgroup_each_case_loads_once_in_one_worker(pytester, cache_dir, monkeypatch):
    records = loads_under(pytester, cache_dir, monkeypatch, "loadgroup")
    assert len(records) == 6
    assert cases.spread_problems(records) == []
