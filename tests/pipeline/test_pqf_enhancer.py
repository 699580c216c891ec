"""The PQF mode of the Enhancer: the bounded flag rule, the streamed schedule against random
access, the two networks, and the options that do not apply."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vsqe.errors import FormatError, ModelError
from vsqe.io.formats import PixelFormat, VideoFrame
from vsqe.pipeline.enhancer import Enhancer
from vsqe.pipeline.pqf_schedule import (
    PLATEAU_CAP,
    bounded_peak_flags,
    flag_delay,
    flags_every,
    parse_every,
    qp_flags,
    stream_peak_flags,
    triplet_for,
)
from vsqe.pqf.detect import peak_flags, pqfs_from_qp

from pqf_weights import save_random_mfqev2

HM_LDP_QPS = [37, 40, 39, 40, 38, 40, 39, 40, 38, 40, 39, 40, 38]  # city/birds/phone HM LDP, POC 0..12


def _longest_run(values) -> int:
    best = run = 1 if values else 0
    for a, b in zip(values, values[1:]):
        run = run + 1 if a == b else 1
        best = max(best, run)
    return best


def test_bounded_rule_equals_peak_flags_without_long_plateaus_and_streams_with_bounded_delay():
    rng = random.Random(3)
    for _ in range(2000):
        values = [rng.choice([1.0, 2.0, 3.0]) for _ in range(rng.randint(0, 25))]
        want = bounded_peak_flags(values)
        if _longest_run(values) <= PLATEAU_CAP:
            assert want == peak_flags(values, 2)
        read = []

        def source():
            for i, v in enumerate(values):
                read.append(i)
                yield i, v

        got = []
        for i, flag in stream_peak_flags(source()):
            got.append(flag)
            if len(read) < len(values):  # before the end: decided within the flag delay
                assert read[-1] <= i + flag_delay(), (values, i, read[-1])
        assert got == want, values


def test_qp_rule_on_hm_low_delay_and_constant_qp():
    assert [i for i, f in enumerate(qp_flags(HM_LDP_QPS)) if f] == [0, 4, 8, 12]
    assert qp_flags(HM_LDP_QPS) == pqfs_from_qp(HM_LDP_QPS)
    # One long plateau: frame 0, as pqfs_from_qp says; a long plateau after a better frame: none.
    assert qp_flags([30] * 20) == pqfs_from_qp([30] * 20)
    assert qp_flags([34] + [37] * 20) == pqfs_from_qp([34] + [37] * 20)


def test_every_rule():
    assert [i for i, f in enumerate(flags_every(13, 4)) if f] == [0, 4, 8, 12]
    assert parse_every("every:4") == 4
    for bad in ("every:0", "every:", "every:x", "period:4", "4"):
        with pytest.raises(ValueError):
            parse_every(bad)


def _frames(n: int, size=(16, 24)) -> list[VideoFrame]:
    fmt = PixelFormat("420", 8)
    rng = np.random.default_rng(5)
    h, w = size
    return [
        VideoFrame(
            [rng.integers(16, 235, (h, w), dtype=np.uint8), rng.integers(16, 240, (h // 2, w // 2), dtype=np.uint8),
             rng.integers(16, 240, (h // 2, w // 2), dtype=np.uint8)],
            fmt,
            index=i,
            qp=HM_LDP_QPS[i % len(HM_LDP_QPS)],
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def two_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mfqev2_weights")
    return save_random_mfqev2(folder / "non_pqf.safetensors", 1), save_random_mfqev2(folder / "pqf.safetensors", 2)


def test_stream_equals_random_access_and_uses_the_pqf_model_on_pqfs(two_weights):
    non_pqf, pqf = two_weights
    frames = _frames(11)
    flags = qp_flags([f.qp for f in frames])
    lookahead = 3  # below the PQF gap + 1: the cap rule is exercised too
    enh = Enhancer("mfqev2", weights=str(non_pqf), pqf_weights=str(pqf), pqf_lookahead=lookahead)
    assert not enh.pqf_weights_shared
    streamed = list(enh.enhance_stream(iter(frames), pqf_flags=flags))
    from_qp = list(enh.enhance_stream(iter(frames)))  # flags found on the fly from frame.qp (the hook)
    assert [f.index for f in streamed] == list(range(11))
    for n in random.Random(1).sample(range(11), 11):
        left, right = triplet_for(n, flags, lookahead)
        want = enh.enhance_pqf_triplet(frames[left], frames[n], frames[right], flags[n])
        for p in range(3):
            assert np.array_equal(streamed[n].planes[p], want.planes[p]), n
            assert np.array_equal(from_qp[n].planes[p], want.planes[p]), n
    # PQFs went through the PQF network, the others through the non-PQF one.
    other = enh.enhance_pqf_triplet(frames[0], frames[4], frames[8], False)
    assert not np.array_equal(other.planes[0], streamed[4].planes[0])
    assert np.array_equal(enh.enhance_pqf_triplet(frames[4], frames[5], frames[8], False).planes[0], streamed[5].planes[0])


def test_one_set_of_weights_serves_both_and_says_so_once(two_weights, caplog):
    with caplog.at_level("WARNING", logger="vsqe.pipeline"):
        enh = Enhancer("mfqev2", weights=str(two_weights[0]))
    assert enh.pqf_weights_shared and enh.pqf_backend is enh.backend
    assert len([r for r in caplog.records if "no PQF weights given" in r.getMessage()]) == 1
    out = list(enh.enhance_stream(iter(_frames(3)), pqf_flags=[True, False, False]))
    assert len(out) == 3 and len([r for r in caplog.records if "no PQF weights" in r.getMessage()]) == 1


def test_the_same_file_for_both_networks_is_one_network_without_a_warning(two_weights, caplog, tmp_path):
    """--pqf-weights naming the --weights file (by any path) loads one network, quietly: the shipped
    mfqev2-y default is one network for both classes."""
    link = tmp_path / "again.safetensors"
    link.symlink_to(two_weights[0])
    with caplog.at_level("WARNING", logger="vsqe.pipeline"):
        enh = Enhancer("mfqev2", weights=str(two_weights[0]), pqf_weights=str(link))
    assert enh.pqf_weights_shared and enh.pqf_backend is enh.backend
    assert enh.pqf_weights_path == enh.weights_path
    assert not [r for r in caplog.records if "PQF" in r.getMessage()]


def test_options_that_do_not_apply_and_bad_values():
    with pytest.raises(ModelError, match="does not use PQFs"):
        Enhancer("stdf", require_weights=False, pqf_lookahead=4)
    with pytest.raises(ModelError, match="not a recurrent segment model"):
        Enhancer("stdf", require_weights=False, segment_length=4)
    with pytest.raises(ModelError, match="look-ahead must be at least 1"):
        Enhancer("mfqev2", require_weights=False, pqf_lookahead=0)
    enh = Enhancer("mfqev2", require_weights=False)
    with pytest.raises(ModelError, match="PQF-scheduled"):
        enh.enhance_window(_frames(3))
    # More frames than flags, or fewer: misaligned flags are an error, not a silent shift.
    with pytest.raises(FormatError, match=r"the PQF flags cover 1 frames, the decoder gave more \(frame 1\)"):
        list(enh.enhance_stream(iter(_frames(3)), pqf_flags=[True]))
    with pytest.raises(FormatError, match="the PQF flags cover 4 frames, the decoder gave 3"):
        list(enh.enhance_stream(iter(_frames(3)), pqf_flags=[True, False, False, True]))
    frames = _frames(2)
    frames[1].qp = None
    with pytest.raises(FormatError, match="slice QP unknown"):
        list(enh.enhance_stream(iter(frames)))


def test_stream_delay_is_bounded_by_the_reported_delay():
    enh = Enhancer("mfqev2", require_weights=False, pqf_lookahead=4)
    enh.enhance_pqf_triplet = lambda left, frame, right, is_pqf: frame  # scheduling only
    frames = _frames(30, size=(4, 4))
    rng = random.Random(2)
    for f in frames:
        f.qp = rng.choice([37, 38, 40])
    read = []

    def source():
        for f in frames:
            read.append(f.index)
            yield f

    for out in enh.enhance_stream(source()):
        if len(read) < len(frames):
            assert read[-1] - out.index <= enh.pqf_stream_delay, (out.index, read[-1])
    assert enh.pqf_stream_delay == flag_delay() + 4
