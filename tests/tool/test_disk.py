"""Disk room for synthetic checkpoints: the least recently used go first, never one a process is reading,
and a reader whose checkpoint was evicted under it gets it rebuilt (the GPU tier shares a 64 GB disk between
several workers)."""
from __future__ import annotations

import multiprocessing
import os
import shutil
from collections import namedtuple

import pytest

from harness.families import get_family
from harness.model import disk, synth

Usage = namedtuple("Usage", "total used free")


def _checkpoint(root, name, age):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / synth.MARKER).write_text("{}")
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(240, dtype=torch.float32)}, str(folder / "model.safetensors"))  # a whole file
    os.utime(folder, (age, age))
    return folder


@pytest.fixture
def disk_of(monkeypatch, tmp_path):
    """A fake disk whose free space is a budget minus what the checkpoints under tmp_path hold."""
    def use(capacity):
        def usage(_):
            held = sum(f.stat().st_size for f in tmp_path.rglob("*.safetensors"))
            return Usage(capacity, held, capacity - held)
        monkeypatch.setattr(shutil, "disk_usage", usage)
    return use


def test_make_room_evicts_the_least_recently_used_first(tmp_path, disk_of):
    old, mid, new = (_checkpoint(tmp_path, n, a) for n, a in (("old", 100), ("mid", 200), ("new", 300)))
    size = (old / "model.safetensors").stat().st_size
    disk_of(3 * size + 1499)  # 1 byte short of the room asked for: one checkpoint has to go

    evicted = disk.make_room([new, mid, old], tmp_path, needed_bytes=1000, margin_bytes=500, wait_s=0)

    assert evicted == [old]
    assert not old.exists() and mid.exists() and new.exists()


def _hold_until_told(folder, held, done):
    lock = disk.hold(folder)
    held.set()
    done.wait(30)
    disk.release(lock)


def test_a_checkpoint_another_process_reads_is_never_evicted(tmp_path, disk_of):
    read, idle = _checkpoint(tmp_path, "read", 100), _checkpoint(tmp_path, "idle", 200)
    size = (read / "model.safetensors").stat().st_size
    disk_of(2 * size + 1000)
    ctx = multiprocessing.get_context("spawn")
    held, done = ctx.Event(), ctx.Event()
    reader = ctx.Process(target=_hold_until_told, args=(read, held, done))
    reader.start()
    try:
        assert held.wait(30)
        evicted = disk.make_room([read, idle], tmp_path, needed_bytes=size + 2000, margin_bytes=0, wait_s=0)
    finally:
        done.set()
        reader.join(30)

    assert evicted == [idle]
    assert read.exists() and synth.is_complete(read)
    assert disk.try_evict(read)  # once the reader is done it can go


def test_a_reader_whose_checkpoint_was_evicted_gets_it_rebuilt(tmp_path):
    family = get_family("qwen2.5")
    with synth.reading(family, "tiny", tmp_path) as folder:
        assert not disk.try_evict(folder)  # held: stays
    assert disk.try_evict(folder)
    assert not folder.exists()

    with synth.reading(family, "tiny", tmp_path) as again:
        assert again == folder and synth.is_complete(again)
    assert [b["folder"] for b in synth.builds(tmp_path)] == [folder.name, folder.name]


def test_an_evicted_folder_leaves_nothing_behind(tmp_path):
    folder = _checkpoint(tmp_path, "gone", 100)

    assert disk.try_evict(folder)

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["qwen2.5", "qwen2.5-vl", "clip"])  # tied embeddings, a VLM, a dual encoder
def test_the_room_a_build_asks_for_is_what_it_writes(name, cache_dir):
    family = get_family(name)
    folder = synth.synthetic_checkpoint(family, "tiny", cache_dir)
    written = sum(p.stat().st_size for p in folder.glob("*.safetensors"))

    asked = synth.weight_bytes(family, "tiny")

    assert 0.97 * written < asked <= written  # the files also hold their headers


def _reserve_and_die(where, stage):
    disk.reserve(where, "died", 10**9, stage)
    os._exit(0)  # no cleanup: the kernel drops the flock, the file stays


def test_a_build_in_progress_counts_against_the_room_another_makes(tmp_path, disk_of):
    old, new = _checkpoint(tmp_path, "old", 100), _checkpoint(tmp_path, "new", 200)
    size = (old / "model.safetensors").stat().st_size
    stage = tmp_path / ".building.partial"
    stage.mkdir()
    (stage / "model.safetensors").write_bytes(b"\0" * 3000)  # written so far
    disk_of(2 * size + 3000 + 6000)  # 6000 free: what this build needs, were nothing else being built
    fd = disk.reserve(tmp_path, "building", 3000 + size, stage)  # `size` still to come
    try:
        evicted = disk.make_room([new, old], tmp_path, needed_bytes=6000, margin_bytes=0, wait_s=0)
    finally:
        disk.unreserve(tmp_path, "building", fd)

    assert evicted == [old]  # room for the other build's rest too; not for its whole (that would take `new` as well)
    assert new.exists()


def test_the_reservation_of_a_build_whose_process_died_is_ignored_and_removed(tmp_path, disk_of):
    old = _checkpoint(tmp_path, "old", 100)
    disk_of((old / "model.safetensors").stat().st_size + 6000)
    dead = multiprocessing.get_context("spawn").Process(target=_reserve_and_die, args=(tmp_path, tmp_path / "gone"))
    dead.start()
    dead.join(60)
    assert dead.exitcode == 0 and (tmp_path / f"{disk.RESERVED}died").is_file()

    evicted = disk.make_room([old], tmp_path, needed_bytes=6000, margin_bytes=0, wait_s=0)

    assert evicted == [] and old.exists()
    assert not (tmp_path / f"{disk.RESERVED}died").exists()
