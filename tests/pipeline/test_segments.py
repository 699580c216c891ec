"""Segmented inference for recurrent models: the plan, the streaming driver (order, bounded memory and
delay), the random-access cache (bit-identical to streaming, thread-safe, one computation per
segment), spatial padding and tiles, and the Enhancer / VapourSynth paths. A cheap bidirectional
recurrent stand-in keeps most tests fast; one test runs a narrow BasicVSR++."""
from __future__ import annotations

import random
import threading
import weakref

import numpy as np
import pytest
import torch

from vsqe.errors import ModelError
from vsqe.io.formats import PixelFormat, VideoFrame
from vsqe.models import registry
from vsqe.models.registry import ModelSpec
from vsqe.pipeline.segments import SegmentCache, SegmentPlan, balanced_tile, run_segment, stream_segments
from vsqe.pipeline.tiles import tile_spans


class BiRecurrent(torch.nn.Module):
    """[N, T, C, H, W] -> same: x + a forward and a backward exponential recurrence (memory ~ 1/(1-a))."""

    def __init__(self, decay: float = 0.6) -> None:
        super().__init__()
        self.decay = decay
        self.gain = torch.nn.Parameter(torch.tensor(0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        fwd, bwd = [], [None] * t
        state = torch.zeros_like(x[:, 0])
        for i in range(t):
            state = self.decay * state + (1 - self.decay) * x[:, i]
            fwd.append(state)
        state = torch.zeros_like(x[:, 0])
        for i in range(t - 1, -1, -1):
            state = self.decay * state + (1 - self.decay) * x[:, i]
            bwd[i] = state
        return x + self.gain * (torch.stack(fwd, 1) + torch.stack(bwd, 1) - 2 * x)


class Item:
    """A source frame that counts how many of its kind are alive."""

    alive = 0

    def __init__(self, index: int) -> None:
        self.index = index
        Item.alive += 1
        weakref.finalize(self, Item._gone)

    @staticmethod
    def _gone() -> None:
        Item.alive -= 1


def _index_process(calls: list[list[int]]):
    def process(items):
        calls.append([it.index for it in items])
        return [f"out{it.index}" for it in items]

    return process


@pytest.mark.parametrize("length,overlap", [(1, 0), (3, 0), (4, 2), (7, 5), (5, 9)])
def test_plan_gives_every_frame_to_one_segment_with_its_context(length, overlap):
    plan = SegmentPlan(length, overlap)
    for n in range(1, 30):
        owners = []
        for seg in plan.segments(n):
            assert seg.out_start == seg.index * length
            assert seg.in_start == max(0, seg.out_start - overlap)
            assert seg.in_stop == min(n, seg.out_stop + overlap)
            assert seg.num_inputs <= plan.max_inputs
            owners += range(seg.out_start, seg.out_stop)
        assert owners == list(range(n))
        assert all(plan.segment(plan.segment_of(f), n).out_start <= f < plan.segment(plan.segment_of(f), n).out_stop for f in range(n))


def test_plan_rejects_bad_values():
    with pytest.raises(ValueError):
        SegmentPlan(0, 2)
    with pytest.raises(ValueError):
        SegmentPlan(4, -1)
    with pytest.raises(IndexError):
        SegmentPlan(4, 1).segment(3, 12)


@pytest.mark.parametrize("num_frames", [0, 1, 5, 23, 24, 25])
def test_stream_runs_the_planned_segments_in_order_with_bounded_memory_and_delay(num_frames):
    plan = SegmentPlan(6, 3)
    produced = 0
    peak_alive = 0

    def source():
        nonlocal produced
        for i in range(num_frames):
            produced += 1
            yield Item(i)

    calls: list[list[int]] = []
    got = []
    Item.alive = 0
    for item, out in stream_segments(source(), _index_process(calls), plan):
        n = len(got)
        assert item.index == n and out == f"out{n}"
        # Delay: frame n leaves before the source has gone further than n + L + O.
        assert produced <= n + plan.length + plan.overlap
        got.append(n)
        del item
        peak_alive = max(peak_alive, Item.alive)
    assert got == list(range(num_frames))
    assert calls == [list(range(s.in_start, s.in_stop)) for s in plan.segments(num_frames)]
    assert peak_alive <= plan.max_inputs


def test_stream_memory_does_not_grow_with_the_clip():
    plan = SegmentPlan(5, 2)
    Item.alive = 0
    peak = 0
    for item, _ in stream_segments((Item(i) for i in range(500)), _index_process([]), plan):
        del item
        peak = max(peak, Item.alive)
    assert peak <= plan.max_inputs == 9


def _frames_tensor(n: int, h: int = 12, w: int = 10, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=gen) for _ in range(n)]


def _tensor_process(model: torch.nn.Module, multiple: int = 4, min_size: int = 16):
    def process(frames: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            return list(run_segment(model, torch.stack(frames).unsqueeze(0), multiple, min_size)[0])

    return process


def test_random_access_equals_streaming_bit_for_bit_in_any_order():
    frames = _frames_tensor(23)
    plan = SegmentPlan(5, 3)
    process = _tensor_process(BiRecurrent())
    streamed = [out for _, out in stream_segments(frames, process, plan)]
    cache = SegmentCache(lambda i: frames[i], len(frames), process, plan, max_segments=2)
    order = list(range(len(frames)))
    random.Random(1).shuffle(order)
    for n in order + order[::-1]:
        assert torch.equal(cache.get(n), streamed[n]), n
    assert len(cache.cached_segments()) <= 2
    # A cached frame owns its memory: the segment's overlap frames are not kept alive with it.
    frame = cache.get(7)
    assert frame.untyped_storage().nbytes() == frame.numel() * frame.element_size()
    # Sequential playback computes every segment once.
    seq = SegmentCache(lambda i: frames[i], len(frames), process, plan, max_segments=1)
    for n in range(len(frames)):
        seq.get(n)
    assert seq.computed == plan.num_segments(len(frames))


def test_segment_cache_is_thread_safe_and_never_computes_a_segment_twice_at_once():
    frames = _frames_tensor(40)
    plan = SegmentPlan(8, 2)
    inner = _tensor_process(BiRecurrent())
    index_of = {id(f): i for i, f in enumerate(frames)}
    in_flight: set[int] = set()
    overlapping = []
    lock = threading.Lock()

    def process(batch):
        first = index_of[id(batch[0])]
        with lock:
            if first in in_flight:
                overlapping.append(first)
            in_flight.add(first)
        out = inner(batch)
        with lock:
            in_flight.discard(first)
        return out

    cache = SegmentCache(lambda i: frames[i], 40, process, plan, max_segments=8)
    reference = [out for _, out in stream_segments(frames, inner, plan)]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        order = list(range(40))
        random.Random(seed).shuffle(order)
        try:
            for n in order:
                assert torch.equal(cache.get(n), reference[n])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert cache.computed == plan.num_segments(40) == 5  # all fit in the cache: each computed once
    assert not overlapping


def test_a_failed_segment_raises_in_every_waiter_and_is_retried():
    plan = SegmentPlan(4, 1)
    attempts = []

    def process(items):
        attempts.append(list(items))
        if len(attempts) == 1:
            raise RuntimeError("out of memory")
        return [i * 10 for i in items]

    cache = SegmentCache(lambda i: i, 10, process, plan)
    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get(5)
    assert cache.get(5) == 50 and cache.get(4) == 40
    assert len(attempts) == 2


def test_run_segment_pads_to_the_minimum_and_crops_back():
    seen = []

    def fn(x):
        seen.append(tuple(x.shape))
        return x * 2

    x = torch.rand(1, 3, 3, 30, 70)
    out = run_segment(fn, x, multiple=4, min_size=64)
    assert seen == [(1, 3, 3, 64, 72)]
    assert torch.equal(out, x * 2)


def test_tiles_with_scale_equal_the_untiled_result_for_a_pointwise_model():
    def sr(x):  # nearest x4 upsample of 2*x: pointwise, so tiles must be exact
        n, t, c, h, w = x.shape
        y = torch.nn.functional.interpolate(x.reshape(n * t, c, h, w) * 2, scale_factor=4, mode="nearest")
        return y.reshape(n, t, c, 4 * h, 4 * w)

    x = torch.rand(1, 2, 3, 50, 90)
    whole = run_segment(sr, x, multiple=1, min_size=8, scale=4)
    tiled = run_segment(sr, x, multiple=1, min_size=8, scale=4, tile=32, overlap=8)
    assert whole.shape == (1, 2, 3, 200, 360)
    assert torch.equal(whole, tiled)


@pytest.fixture
def tiny_basicvsrpp(single_thread):
    from vsqe.models.basicvsrpp import BasicVSRPlusPlus

    class ShiftFlow(torch.nn.Module):
        def forward(self, ref, supp):
            flow = torch.zeros(ref.shape[0], 2, *ref.shape[-2:])
            flow[:, 0], flow[:, 1] = 0.6, 0.2
            return flow

    torch.manual_seed(0)
    model = BasicVSRPlusPlus(mid_channels=8, num_blocks=1, hr_channels=8).eval()
    model.spynet = ShiftFlow()
    return model


@pytest.fixture
def fake_recurrent_model(monkeypatch):
    """Registers a cheap recurrent RGB model for the Enhancer and VapourSynth paths."""
    registry._load_builtin_models()
    spec = ModelSpec(
        name="test-recurrent",
        description="bidirectional exponential recurrence (tests)",
        build=lambda: BiRecurrent(decay=0.5),
        color="rgb",
        radius=0,
        size_multiple=4,
        min_size=16,
        temporal="recurrent",
        segment_length=4,
        segment_overlap=2,
    )
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    monkeypatch.setitem(
        registry._REGISTRY,
        "test-recurrent-x4",
        ModelSpec(
            name="test-recurrent-x4",
            description="x4 nearest upsample of the recurrence (tests)",
            build=lambda: torch.nn.Sequential(BiRecurrent(decay=0.5), _Upsample4()),
            color="rgb",
            radius=0,
            min_size=8,
            scale=4,
            temporal="recurrent",
            segment_length=3,
            segment_overlap=1,
        ),
    )
    return spec.name


class _Upsample4(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)


def _yuv_frames(n: int, h: int = 18, w: int = 22) -> list[VideoFrame]:
    rng = np.random.default_rng(5)
    fmt = PixelFormat("420", 8)
    return [
        VideoFrame(
            planes=[
                rng.integers(16, 236, (h, w), dtype=np.uint8),
                rng.integers(16, 241, (h // 2, w // 2), dtype=np.uint8),
                rng.integers(16, 241, (h // 2, w // 2), dtype=np.uint8),
            ],
            fmt=fmt,
            index=i,
        )
        for i in range(n)
    ]


def test_enhancer_streams_and_serves_random_access_identically(fake_recurrent_model):
    from vsqe.pipeline.enhancer import Enhancer

    enhancer = Enhancer(fake_recurrent_model, require_weights=False, segment_overlap=1)
    assert enhancer.segment_plan == SegmentPlan(4, 1)
    frames = _yuv_frames(11)
    streamed = list(enhancer.enhance_stream(iter(frames)))
    assert [f.index for f in streamed] == list(range(11))
    cache = enhancer.random_access(lambda i: frames[i], len(frames))
    for n in (10, 0, 5, 4, 3, 9, 1):
        got = cache.get(n)
        for a, b in zip(got.planes, streamed[n].planes):
            assert np.array_equal(a, b)
    assert any(not np.array_equal(s.planes[0], f.planes[0]) for s, f in zip(streamed, frames))
    with pytest.raises(ModelError, match="recurrent"):
        enhancer.enhance_window(frames[:1])


@pytest.mark.parametrize("size", [256, 720, 1080, 1280, 1920, 2160, 3840])
def test_balanced_tiles_cover_the_frame_evenly_with_no_more_tiles(size):
    tile = balanced_tile(size, 720, 64, 4)
    assert tile % 4 == 0 and tile <= max(720, 4)
    spans = tile_spans(size, tile, 64, 4)
    assert len(spans) <= len(tile_spans(size, 720, 64, 4))
    assert spans[0].keep_start == 0 and spans[-1].keep_stop == size
    assert all(a.keep_stop == b.keep_start for a, b in zip(spans, spans[1:]))
    assert all(s.stop - s.start == min(tile, size) for s in spans)
    widths = [s.keep_stop - s.keep_start for s in spans]
    assert max(widths) - min(widths) <= 64 + 4  # no sliver at the end


def test_basicvsrpp_segments_against_the_whole_clip(tiny_basicvsrpp):
    """A narrow random-init BasicVSR++ (constant flow): an overlap covering the clip reproduces
    whole-clip inference bit for bit; a short overlap stays close and beats no overlap."""
    gen = torch.Generator().manual_seed(2)
    base = torch.rand(3, 64, 64, generator=gen)
    # A slowly panning texture, so every frame differs from its neighbours.
    frames = [torch.roll(base, shifts=(i, 2 * i), dims=(1, 2)) for i in range(6)]
    process = _tensor_process(tiny_basicvsrpp, multiple=4, min_size=256)
    whole = process(frames)

    def errors(plan: SegmentPlan) -> list[float]:
        outs = [out for _, out in stream_segments(frames, process, plan)]
        return [(a - b).abs().max().item() for a, b in zip(outs, whole)]

    assert errors(SegmentPlan(3, 6)) == [0.0] * 6  # every segment reads the whole clip
    with_overlap, without = errors(SegmentPlan(3, 2)), errors(SegmentPlan(3, 0))
    assert 0 < max(with_overlap) < 1e-3 and max(without) < 1e-2, (with_overlap, without)
    assert sum(with_overlap) < sum(without), (with_overlap, without)


def test_vapoursynth_recurrent_filter_matches_the_segment_cache(fake_recurrent_model):
    vs = pytest.importorskip("vapoursynth")
    import vsqe.vs
    from vsqe.pipeline.enhancer import Enhancer

    core = vs.core
    n_frames, h, w = 9, 20, 24
    inputs = _frames_tensor(n_frames, h, w, seed=9)
    blank = core.std.BlankClip(format=vs.RGBS, width=w, height=h, length=n_frames)

    def fill(n, f):
        out = f.copy()
        for p in range(3):
            np.copyto(np.asarray(out[p]), inputs[n][p].numpy())
        return out

    clip = blank.std.ModifyFrame(clips=blank, selector=fill)
    out = vsqe.vs.enhance(clip, model=fake_recurrent_model, allow_untrained=True, segment_length=3, segment_overlap=2)
    assert (out.width, out.height, out.num_frames, out.format.id) == (w, h, n_frames, vs.RGBS)
    enhancer = Enhancer(fake_recurrent_model, require_weights=False, segment_length=3, segment_overlap=2)
    expected = [
        o.clamp(0, 1).numpy()
        for _, o in stream_segments(inputs, enhancer.enhance_segment_tensors, enhancer.segment_plan)
    ]
    order = list(range(n_frames))
    random.Random(3).shuffle(order)
    for n in order:
        got = np.stack([np.asarray(out.get_frame(n)[p]) for p in range(3)])
        assert np.array_equal(got, expected[n]), n
    # Concurrent requests (VapourSynth's worker threads) on a fresh node give the same frames.
    out2 = vsqe.vs.enhance(clip, model=fake_recurrent_model, allow_untrained=True, segment_length=3, segment_overlap=2)
    for n, frame in enumerate(out2.frames()):
        assert np.array_equal(np.stack([np.asarray(frame[p]) for p in range(3)]), expected[n]), n


def test_vapoursynth_recurrent_filter_with_a_scaling_model(fake_recurrent_model):
    vs = pytest.importorskip("vapoursynth")
    import vsqe.vs

    core = vs.core
    clip = core.std.BlankClip(format=vs.RGBS, width=10, height=6, length=5, color=[0.25, 0.5, 0.75])
    clip = clip.std.SetFrameProp(prop="_Matrix", intval=0)
    out = vsqe.vs.enhance(clip, model="test-recurrent-x4", allow_untrained=True)
    assert (out.width, out.height, out.num_frames) == (40, 24, 5)
    frame = out.get_frame(3)
    assert frame.props["_Matrix"] == 0  # the source frame's properties
    from vsqe.pipeline.enhancer import Enhancer

    source = torch.tensor([0.25, 0.5, 0.75]).view(3, 1, 1).expand(3, 6, 10).contiguous()
    expected = Enhancer("test-recurrent-x4", require_weights=False).random_access_tensors(lambda i: source, 5).get(3)
    assert np.array_equal(np.stack([np.asarray(frame[p]) for p in range(3)]), expected.clamp(0, 1).numpy())
