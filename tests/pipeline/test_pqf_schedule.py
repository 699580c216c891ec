"""PQF scheduling for MFQEv2: PowerVQE's pairing rules, the streaming generator against the
random-access rule (random flags and the HM city stream's real PQFs), bounded delay and memory."""
from __future__ import annotations

import gc
import random
import sys
from pathlib import Path

import pytest

from vsqe.pipeline.pqf_schedule import default_lookahead, schedule, triplet_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pqf"))


def _streamed(flags: list[bool], lookahead: int) -> list[tuple[int, int, int, bool]]:
    return list(schedule(((i, f) for i, f in enumerate(flags)), lookahead))


def _random_access(flags: list[bool], lookahead: int) -> list[tuple[int, int, int, bool]]:
    return [(n, *triplet_for(n, flags, lookahead), flags[n]) for n in range(len(flags))]


def _flags(pqfs: list[int], length: int) -> list[bool]:
    return [i in pqfs for i in range(length)]


def test_powervqe_ldp_rules():
    # PQFs 0, 4, 8 of 11 frames (PowerVQE ldp_dataset.py, models.md §3.2).
    flags = _flags([0, 4, 8], 11)
    pairs = {n: triplet_for(n, flags, 4) for n in range(11)}
    assert pairs[0] == (0, 4)  # first PQF: (PQF0, PQF0, PQF1)
    assert pairs[4] == (0, 8)  # PQF k: (PQF k-1, PQF k, PQF k+1)
    assert pairs[8] == (4, 8)  # last PQF: (PQF_{m-1}, PQF_m, PQF_m)
    assert [pairs[n] for n in (1, 2, 3)] == [(0, 4)] * 3
    assert [pairs[n] for n in (5, 6, 7)] == [(4, 8)] * 3
    assert pairs[9] == (8, 9) and pairs[10] == (8, 10)  # after the last PQF: (PQF_m, frame, frame)
    assert _streamed(flags, 4) == _random_access(flags, 4)


def test_last_pqf_as_the_last_frame_and_leading_non_pqfs():
    flags = _flags([2, 5], 6)
    assert [triplet_for(n, flags, 4) for n in range(6)] == [(0, 2), (1, 2), (2, 5), (2, 5), (2, 5), (2, 5)]
    assert triplet_for(5, flags, 4) == (2, 5)  # last PQF = last frame: (PQF_{m-1}, PQF_m, PQF_m)


def test_lookahead_cap_uses_the_farthest_frame_held():
    flags = _flags([0, 10], 12)
    assert triplet_for(1, flags, 4) == (0, 5)
    assert triplet_for(6, flags, 4) == (0, 10)  # the next PQF is within reach again
    assert triplet_for(5, flags, 4) == (0, 9)
    assert triplet_for(0, flags, 4) == (0, 4)  # a PQF with its next PQF out of reach
    assert triplet_for(11, flags, 4) == (10, 11) and triplet_for(11, flags, 1) == (10, 11)
    assert triplet_for(10, flags, 1) == (0, 11)  # the cap frame is the clip's last frame
    assert _streamed(flags, 4) == _random_access(flags, 4)
    assert triplet_for(0, [False], 3) == (0, 0) and _streamed([False], 3) == [(0, 0, 0, False)]
    assert list(schedule(iter(()), 4)) == []
    with pytest.raises(ValueError):
        triplet_for(0, [True], 0)
    with pytest.raises(IndexError):
        triplet_for(1, [True], 4)


def test_streaming_equals_random_access_on_random_flags():
    rng = random.Random(6)
    for _ in range(300):
        length = rng.randint(1, 40)
        density = rng.choice((0.05, 0.2, 0.5, 0.9))
        flags = [rng.random() < density for _ in range(length)]
        lookahead = rng.randint(1, 9)
        assert _streamed(flags, lookahead) == _random_access(flags, lookahead), (flags, lookahead)


def test_streaming_equals_random_access_on_hm_city_pqfs():
    from pqf_data import data_file

    from vsqe.pqf.detect import indices, pqfs_from_qp
    from vsqe.pqf.stream import display_pictures, read_pictures

    pics = display_pictures(read_pictures(data_file("city_416x240_hm_ldp_qp37.hevc")))
    flags = pqfs_from_qp([p.qp for p in pics])
    assert indices(flags) == list(range(0, len(flags), 4))
    lookahead = default_lookahead(flags)
    assert lookahead == 8
    out = _streamed(flags, lookahead)
    assert out == _random_access(flags, lookahead)
    assert [o[0] for o in out] == list(range(len(flags)))
    assert out[5] == (5, 4, 8, False) and out[8] == (8, 4, 12, True) and out[0] == (0, 0, 4, True)
    last_pqf = indices(flags)[-1]
    assert out[last_pqf][1:] == (last_pqf - 4, last_pqf, True)
    assert all(out[n][1:3] == (last_pqf, n) for n in range(last_pqf + 1, len(flags)))


def test_default_lookahead():
    assert default_lookahead([]) == 4
    assert default_lookahead(_flags([0, 8, 16, 24], 30)) == 16
    assert default_lookahead(_flags([0, 1, 2, 3], 4)) == 4


class _Frame:
    live = 0

    def __init__(self) -> None:
        _Frame.live += 1

    def __del__(self) -> None:
        _Frame.live -= 1


@pytest.mark.parametrize("pqfs,lookahead", [([0, 4, 8, 12, 16, 20], 4), ([0, 15], 5), ([], 3), ([7, 8, 9], 2)])
def test_bounded_delay_and_memory(pqfs: list[int], lookahead: int):
    length = 24
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(length):
            pulled += 1
            yield _Frame(), i in pqfs

    gc.disable()
    try:
        _Frame.live = 0
        emitted = 0
        peak = 0
        for frame, left, right, _ in schedule(source(), lookahead):
            emitted += 1
            assert pulled - emitted <= lookahead  # delay: frame n out by the time n + L is read
            del frame, left, right
            peak = max(peak, _Frame.live)
        assert emitted == length and _Frame.live == 0
        assert peak <= lookahead + 2
    finally:
        gc.enable()
