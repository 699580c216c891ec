"""Segmented inference for recurrent (bidirectional) models such as BasicVSR++.

A recurrent model sees a whole sequence at once, so memory grows with the clip. vsqe cuts the clip
into segments with deterministic starts, independent of who asks for the frames:

    segment k outputs frames [k*L, (k+1)*L) and reads frames [k*L - O, (k+1)*L + O),
    both clipped to the clip [0, N).

The O context frames on each side are computed and discarded, so each output frame comes from
exactly one segment and sees at least O frames of context in both directions (except at the ends
of the clip, where the whole-clip model has no context either). Memory is bounded by L + 2*O
frames of features, whatever N is.

Two drivers run the same per-segment computation, so their outputs are identical bit for bit:

- `stream_segments` (vsqe run, the HM hook): frames arrive in display order, segment k is run as
  soon as its right context has been read (or the stream ended); at most L + 2*O input frames are
  held, and output frame n leaves at most L + O - 1 frames after input frame n arrived.
- `SegmentCache` (VapourSynth): random access; frame n -> segment n // L, computed once and kept in
  a small thread-safe LRU of finished segments.

`run_segment` applies a model to one segment tensor with replicate padding to the model's size
multiple / minimum and optional spatial tiles (each tile runs the whole segment), reusing
pipeline/tiles.py's spans.
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Iterator, Sequence, TypeVar

import torch

from vsqe.pipeline.tiles import pad_to, round_up, tile_spans

In = TypeVar("In")
Out = TypeVar("Out")

# process(inputs of one segment, in display order) -> one output per input
SegmentFn = Callable[[list[In]], Sequence[Out]]


@dataclass(frozen=True)
class Segment:
    index: int
    out_start: int  # first output frame of the segment
    out_stop: int  # one past its last output frame
    in_start: int  # first input frame read (out_start - overlap, clipped)
    in_stop: int  # one past the last input frame read

    @property
    def num_inputs(self) -> int:
        return self.in_stop - self.in_start


@dataclass(frozen=True)
class SegmentPlan:
    """Segment length L (output frames per segment) and overlap O (context frames per side)."""

    length: int
    overlap: int

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"segment length must be at least 1, got {self.length}")
        if self.overlap < 0:
            raise ValueError(f"segment overlap must be at least 0, got {self.overlap}")

    @property
    def max_inputs(self) -> int:
        return self.length + 2 * self.overlap

    def segment_of(self, n: int) -> int:
        return n // self.length

    def num_segments(self, num_frames: int) -> int:
        return -(-num_frames // self.length)

    def segment(self, k: int, num_frames: int) -> Segment:
        """Segment k of a clip of `num_frames` frames."""
        out_start = k * self.length
        if not 0 <= out_start < num_frames:
            raise IndexError(f"segment {k} outside a clip of {num_frames} frames")
        out_stop = min(num_frames, out_start + self.length)
        in_start = max(0, out_start - self.overlap)
        in_stop = min(num_frames, out_stop + self.overlap)
        return Segment(k, out_start, out_stop, in_start, in_stop)

    def segments(self, num_frames: int) -> list[Segment]:
        return [self.segment(k, num_frames) for k in range(self.num_segments(num_frames))]


def stream_segments(
    items: Iterable[In], process: SegmentFn, plan: SegmentPlan
) -> Iterator[tuple[In, Out]]:
    """Yields (input item, output) in display order, running `process` once per segment.

    The clip length is learned only when `items` ends; segment k runs once input frame
    (k+1)*L + O - 1 has been read or the stream has ended, which gives it the same inputs as
    `plan.segment(k, N)`. Holds at most L + 2*O input items.
    """
    it = iter(items)
    buffer: deque[In] = deque()
    first = 0  # display index of buffer[0]
    read = 0
    exhausted = False
    k = 0
    while True:
        out_start = k * plan.length
        in_start = max(0, out_start - plan.overlap)
        while first < in_start and buffer:
            buffer.popleft()
            first += 1
        need = out_start + plan.length + plan.overlap
        while not exhausted and read < need:
            try:
                buffer.append(next(it))
            except StopIteration:
                exhausted = True
            else:
                read += 1
        if out_start >= read:
            return
        seg = plan.segment(k, read if exhausted else max(read, need))
        inputs = [buffer[i - first] for i in range(seg.in_start, seg.in_stop)]
        outputs = process(inputs)
        if len(outputs) != len(inputs):
            raise ValueError(f"segment function returned {len(outputs)} outputs for {len(inputs)} inputs")
        for n in range(seg.out_start, seg.out_stop):
            yield inputs[n - seg.in_start], outputs[n - seg.in_start]
        del inputs, outputs
        k += 1


class _Pending:
    __slots__ = ("done", "outputs", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outputs: Sequence | None = None
        self.error: BaseException | None = None


class SegmentCache(Generic[In, Out]):
    """Random access to the outputs of a segmented recurrent model (the VapourSynth path).

    `get(n)` computes segment n // L on first use (reading its inputs with `get_input`), keeps the
    outputs of the last `max_segments` segments used, and is safe to call from many threads: a
    segment being computed by one thread is waited for, never computed twice at the same time.
    """

    def __init__(
        self,
        get_input: Callable[[int], In],
        num_frames: int,
        process: SegmentFn,
        plan: SegmentPlan,
        max_segments: int = 2,
    ) -> None:
        if num_frames < 1:
            raise ValueError("a clip needs at least one frame")
        self.get_input = get_input
        self.num_frames = num_frames
        self.process = process
        self.plan = plan
        self.max_segments = max(1, max_segments)
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, _Pending] = OrderedDict()
        self.computed = 0  # number of segment computations (for tests and logs)

    def get(self, n: int) -> Out:
        if not 0 <= n < self.num_frames:
            raise IndexError(f"frame {n} outside a clip of {self.num_frames} frames")
        seg = self.plan.segment(self.plan.segment_of(n), self.num_frames)
        with self._lock:
            entry = self._entries.get(seg.index)
            owner = entry is None
            if owner:
                entry = _Pending()
                self._entries[seg.index] = entry
                self._evict()
            else:
                self._entries.move_to_end(seg.index)
        assert entry is not None
        if owner:
            try:
                inputs = [self.get_input(i) for i in range(seg.in_start, seg.in_stop)]
                outputs = self.process(inputs)
                if len(outputs) != len(inputs):
                    raise ValueError(
                        f"segment function returned {len(outputs)} outputs for {len(inputs)} inputs"
                    )
                # Keep only the frames this segment is responsible for; tensors are copied out of
                # the segment's output so that its overlap frames are freed.
                entry.outputs = [
                    o.clone() if isinstance(o, torch.Tensor) else o
                    for o in outputs[seg.out_start - seg.in_start : seg.out_stop - seg.in_start]
                ]
                del outputs
                with self._lock:
                    self.computed += 1
            except BaseException as exc:
                entry.error = exc
                with self._lock:  # a failed segment is retried by the next request
                    if self._entries.get(seg.index) is entry:
                        del self._entries[seg.index]
                raise
            finally:
                entry.done.set()
        else:
            entry.done.wait()
            if entry.error is not None:
                raise entry.error
        assert entry.outputs is not None
        return entry.outputs[n - seg.out_start]

    def _evict(self) -> None:
        """Drops the least recently used finished segments beyond max_segments (lock held)."""
        finished = [k for k, e in self._entries.items() if e.done.is_set()]
        excess = len(self._entries) - self.max_segments
        for k in finished:
            if excess <= 0:
                break
            del self._entries[k]
            excess -= 1

    def cached_segments(self) -> list[int]:
        with self._lock:
            return list(self._entries)


def balanced_tile(size: int, tile: int, overlap: int, multiple: int) -> int:
    """The smallest tile (a multiple of `multiple`) that covers `size` with as few tiles as `tile`
    would, so that the tiles share the frame evenly instead of leaving a sliver for the last one
    (1920 px with tile 720 and overlap 64: 4 tiles of 576 px rather than 4 of 720)."""
    overlap = round_up(overlap, multiple)
    tile = max(multiple, round_up(tile, multiple))
    if tile >= size or tile <= 2 * overlap:
        return tile
    count = -(-(size - 2 * overlap) // (tile - 2 * overlap))
    return min(tile, round_up(-(-(size - 2 * overlap) // count) + 2 * overlap, multiple))


def run_segment(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    multiple: int,
    min_size: int = 1,
    scale: int = 1,
    tile: int | None = None,
    overlap: int = 64,
) -> torch.Tensor:
    """Applies a recurrent model fn ([N,T,C,h,w] -> [N,T,C,s*h,s*w]) to x of any size.

    Replicate-pads to the size multiple and minimum, optionally cuts spatial tiles of at most
    `tile` pixels a side (at least `min_size`; sized per dimension by `balanced_tile`; every tile
    runs all T frames), keeps each tile's centre (`overlap` pixels dropped on inner sides) and
    crops back to s*H x s*W. Tiles are not exact for a recurrent model: features travel with the
    motion over the segment, so `overlap` should exceed the motion and the receptive field it
    matters for (docs/basicvsrpp.md has measurements).
    """
    n, t, c, h, w = x.shape
    min_size = round_up(min_size, multiple)
    ph = max(round_up(h, multiple), min_size)
    pw = max(round_up(w, multiple), min_size)
    padded = pad_to(x, ph, pw)
    if tile is None or (tile >= ph and tile >= pw):
        return fn(padded)[..., : h * scale, : w * scale]
    tile = max(tile, min_size)
    tile_h = max(balanced_tile(ph, tile, overlap, multiple), min_size)
    tile_w = max(balanced_tile(pw, tile, overlap, multiple), min_size)
    out = torch.empty(n, t, c, ph * scale, pw * scale, dtype=torch.float32)
    for ys in tile_spans(ph, tile_h, overlap, multiple):
        for xs in tile_spans(pw, tile_w, overlap, multiple):
            part = fn(padded[..., ys.start : ys.stop, xs.start : xs.stop])
            out[..., ys.keep_start * scale : ys.keep_stop * scale, xs.keep_start * scale : xs.keep_stop * scale] = part[
                ...,
                (ys.keep_start - ys.start) * scale : (ys.keep_stop - ys.start) * scale,
                (xs.keep_start - xs.start) * scale : (xs.keep_stop - xs.start) * scale,
            ]
    return out[..., : h * scale, : w * scale]
