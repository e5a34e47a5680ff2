"""FSDP-QLoRA on 2 GPUs through torchrun: 4-bit weights shard, only LoRA trains on every rank, the step's loss and
the saved adapter's keys equal the single-GPU run's (harness.measure.fsdp_qlora)."""
import json
import os
import subprocess
import sys

import pytest

from harness.measure import fsdp_qlora
from harness.model import pipeline

FAMILY, SIZE = "qwen2.5", "0.5b"


@pytest.fixture(scope="module")
def two_gpus(cuda):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs")


def _run(args, out, cache_dir, launcher):
    case = pipeline.case(FAMILY, SIZE, fsdp_qlora.fsdp_recipe(FAMILY))
    with pipeline.reading(case, cache_dir, device="cuda") as folder:
        cmd = [*launcher, "-m", "harness.measure.fsdp_qlora", "--family", FAMILY, "--size", SIZE,
               "--checkpoint", str(folder), "--out", str(out), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ})
    assert out.is_file(), f"{' '.join(cmd)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"
    return json.loads(out.read_text())


def test_fsdp_qlora_on_two_gpus_matches_one_gpu(two_gpus, cache_dir, tmp_path):
    single = _run(["--single"], tmp_path / "single.json", cache_dir, [sys.executable])
    sharded = _run([], tmp_path / "fsdp.json", cache_dir,
                   [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])

    for r in sharded["ranks"]:
        print(f"rank {r['rank']}: static {r['static_allocated_bytes'] / 2**30:.3f} GiB "
              f"(one GPU {single['ranks'][0]['static_allocated_bytes'] / 2**30:.3f}), loss {r['loss']:.5f} "
              f"(one GPU {single['ranks'][0]['loss']:.5f})")
    assert len(sharded["ranks"]) == 2
    assert fsdp_qlora.judge(single, sharded) == []
