"""Which free blocks of the CUDA caching allocator are an earlier case's holes (harness.measure.probe.holes), read
from a memory snapshot as torch.cuda.memory_snapshot() returns it; the GPU tier checks the plugging itself."""
from harness.measure import probe

MiB = 2**20


def segment(blocks, device=0, stream=0, pool="large"):
    return {"device": device, "stream": stream, "segment_type": pool,
            "allocated_size": sum(s for s, state in blocks if state != "inactive"),
            "blocks": [{"size": s, "state": state} for s, state in blocks]}


def test_the_free_blocks_of_segments_still_in_use_are_holes_largest_first():
    snapshot = [segment([(7 * MiB, "active_allocated"), (13 * MiB, "inactive")]),
                segment([(2 * MiB, "active_allocated"), (3 * MiB, "inactive"), (2 * MiB, "active_allocated"),
                         (13 * MiB + 512, "inactive")])]

    assert probe.holes(snapshot, device=0, stream=0) == [13 * MiB + 512, 13 * MiB, 3 * MiB]


def test_the_small_pool_s_free_blocks_are_left_alone():
    # a small block splits off any remainder, wherever it lands; and a plug over 1 MiB would go to the large pool
    snapshot = [segment([(512, "active_allocated"), (2 * MiB - 512, "inactive")], pool="small")]

    assert probe.holes(snapshot, device=0, stream=0) == []


def test_a_wholly_free_segment_is_no_hole():
    # empty_cache gives it back; plugging it would keep memory a fresh process does not hold
    assert probe.holes([segment([(20 * MiB, "inactive")])], device=0, stream=0) == []


def test_another_device_or_stream_is_not_this_case_s():
    snapshot = [segment([(MiB, "active_allocated"), (3 * MiB, "inactive")], device=1),
                segment([(MiB, "active_allocated"), (5 * MiB, "inactive")], stream=94)]

    assert probe.holes(snapshot, device=0, stream=0) == []
