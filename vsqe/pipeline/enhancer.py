"""The enhancer: a model, its weights and a backend, applied to windows of decoded frames.

Every front end (vsqe run, the VapourSynth filter, the HM hook) calls `Enhancer.enhance_window`
with the frames chosen by `window.window_indices`, one output frame at a time; that is what makes
their outputs identical bit for bit.

Recurrent models (spec.temporal == "recurrent", BasicVSR++) go through pipeline/segments.py
instead: `enhance_stream` streams segments, `random_access` / `random_access_tensors` give the
VapourSynth filter a segment cache; both run the same `enhance_segment*` per segment.

PQF models (spec.temporal == "pqf", MFQEv2) take (left PQF, frame, right PQF) triplets chosen by
pipeline/pqf_schedule.py: `enhance_stream(frames, pqf_flags)` streams through `schedule` (flags
given, or found from each frame's slice QP with `stream_peak_flags`: the HM hook), and random
access (VapourSynth) uses `triplet_for`; both end in `enhance_pqf_tensor`, which runs the PQF
model on PQFs and the non-PQF model on the others.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable, Iterator, Sequence

import torch

from vsqe.backends import create_backend
from vsqe.backends.choice import FALLBACK_UNTILED_PIXELS, tile_for
from vsqe.errors import FormatError, ModelError
from vsqe.io.atomic import same_file
from vsqe.io.formats import (
    VideoFrame,
    float_to_plane,
    frames_to_luma_tensor,
    frames_to_rgb_tensor,
    rgb_tensor_to_planes,
)
from vsqe.models import build_model
from vsqe.pipeline.pqf_schedule import (
    DEFAULT_STREAM_LOOKAHEAD,
    QP_RADIUS,
    PqfMisaligned,
    flag_delay,
    schedule,
    stream_peak_flags,
)
from vsqe.pipeline.segments import SegmentCache, SegmentPlan, run_segment, stream_segments
from vsqe.pipeline.tiles import run_tiled
from vsqe.pipeline.window import sliding_windows

# Window models: how large a frame runs whole depends on the backend's memory per pixel
# (OpenVINO ~4x torch's); the table and the ~4 GB budget live in vsqe/backends/choice.py.
# Kept for backends outside that table: the old fixed limit (1080p whole, 512-px tiles above).
DEFAULT_TILE_PIXELS = FALLBACK_UNTILED_PIXELS
# Recurrent models hold ~100 B per pixel per segment frame (BasicVSR++ C64); frames above
# SEGMENT_TILE_PIXELS run in tiles of at most DEFAULT_SEGMENT_TILE (docs/basicvsrpp.md, memory).
SEGMENT_TILE_PIXELS = 1280 * 720
DEFAULT_SEGMENT_TILE = 720

log = logging.getLogger("vsqe.pipeline")


class Enhancer:
    def __init__(
        self,
        model: str = "stdf",
        weights: str | None = None,
        backend: str = "auto",
        tile: int | None = None,
        overlap: int = 64,
        threads: int | None = None,
        require_weights: bool = True,
        segment_length: int | None = None,
        segment_overlap: int | None = None,
        pqf_weights: str | None = None,
        pqf_lookahead: int | None = None,
    ) -> None:
        self.module, self.spec, self.weights_path = build_model(model, weights, require_weights=require_weights)
        self.backend = create_backend(backend, self.module, threads=threads, model_name=self.spec.name,
                                      recurrent=self.spec.temporal == "recurrent")
        self.tile = tile
        self.overlap = overlap
        self.segment_plan: SegmentPlan | None = None
        if self.spec.temporal == "recurrent":
            try:
                self.segment_plan = SegmentPlan(
                    self.spec.segment_length if segment_length is None else segment_length,
                    self.spec.segment_overlap if segment_overlap is None else segment_overlap,
                )
            except ValueError as exc:
                raise ModelError(str(exc)) from None
        elif segment_length is not None or segment_overlap is not None:
            raise ModelError(f"model {model!r} is not a recurrent segment model: segment length/overlap do not apply")
        self._init_pqf(model, backend, threads, require_weights, pqf_weights, pqf_lookahead)
        # One inference at a time: VapourSynth calls from several threads, and parallel forward
        # passes would multiply activation memory without adding speed on two cores.
        self._lock = threading.Lock()

    def _init_pqf(
        self,
        model: str,
        backend: str,
        threads: int | None,
        require_weights: bool,
        pqf_weights: str | None,
        pqf_lookahead: int | None,
    ) -> None:
        """The second network of a PQF model (PQF weights) and the look-ahead of its scheduler."""
        self.pqf_backend = self.backend
        self.pqf_weights_path: str | None = self.weights_path
        self.pqf_lookahead = pqf_lookahead
        self.pqf_weights_shared = False
        if self.spec.temporal != "pqf":
            if pqf_weights is not None or pqf_lookahead is not None:
                raise ModelError(f"model {model!r} does not use PQFs: PQF weights and look-ahead do not apply")
            return
        if pqf_lookahead is not None and pqf_lookahead < 1:
            raise ModelError(f"PQF look-ahead must be at least 1 frame, got {pqf_lookahead}")
        if pqf_weights is None and self.weights_path is not None and self.weights_path == self.spec.default_weights_path():
            # Shipped non-PQF weights come with their shipped PQF partner (when it is installed).
            default_pqf = self.spec.default_pqf_weights_path()
            pqf_weights = None if default_pqf is None else str(default_pqf)
        if pqf_weights is not None and self.weights_path is not None and same_file(pqf_weights, self.weights_path):
            # One network for both classes, by choice (mfqev2-y's default: its non-PQF network
            # beats a PQF-trained one on PQFs, docs/training.md §7): one backend, no second copy.
            self.pqf_weights_shared = True
            return
        if pqf_weights is None:
            # PowerVQE trains a second (PQF) checkpoint; with one set of weights the non-PQF
            # network enhances PQFs too: usable, but say so (once per enhancer).
            self.pqf_weights_shared = True
            log.warning(
                "model %s: no PQF weights given; the %s weights enhance PQFs and non-PQFs alike",
                model,
                "untrained" if self.weights_path is None else "non-PQF",
            )
            return
        pqf_module, _, self.pqf_weights_path = build_model(model, pqf_weights, require_weights=require_weights)
        self.pqf_backend = create_backend(backend, pqf_module, threads=threads, model_name=self.spec.name)

    @property
    def radius(self) -> int:
        return self.spec.radius

    def _tile_for(self, height: int, width: int, backend=None) -> int | None:
        """--tile, else whole frames up to the backend's memory limit (backends/choice.py)."""
        if self.tile is not None:
            return self.tile
        backend = self.backend if backend is None else backend
        if hasattr(backend, "tile_for"):  # auto: the limit of the backend it picks for this frame
            return backend.tile_for(height, width)
        return tile_for(backend.name, height, width, self.spec.name)

    def enhance_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, C, H, W] float in [0, 1], any H, W -> [N, C, H, W] float (unclipped)."""
        return self._run_window_model(self.backend, x)

    def _run_window_model(self, backend, x: torch.Tensor) -> torch.Tensor:
        _, t, c, h, w = x.shape
        if t != self.spec.window:
            raise FormatError(f"model {self.spec.name!r} needs {self.spec.window} frames, got {t}")
        with self._lock:
            return run_tiled(
                backend,
                x,
                multiple=self.spec.size_multiple,
                min_size=self.spec.min_size,
                tile=self._tile_for(h, w, backend),
                overlap=self.overlap,
            )

    def enhance_window(self, window: Sequence[VideoFrame]) -> VideoFrame:
        """Enhances the centre frame of `window` (2*radius+1 frames); chroma kept for Y models."""
        if self.segment_plan is not None:
            raise ModelError(f"model {self.spec.name!r} is recurrent: use enhance_stream or random_access")
        if self.spec.temporal == "pqf":
            raise ModelError(f"model {self.spec.name!r} is PQF-scheduled: use enhance_stream or enhance_pqf_triplet")
        centre = window[self.spec.radius]
        frames = list(window)
        if self.spec.color == "y":
            out = self.enhance_tensor(frames_to_luma_tensor(frames))
            planes = [float_to_plane(out[0, 0], centre.fmt), *centre.planes[1:]]
        else:
            out = self.enhance_tensor(frames_to_rgb_tensor(frames))
            planes = rgb_tensor_to_planes(out[0], centre)
        return centre.with_planes(planes)

    def enhance_stream(
        self,
        frames: Iterable[VideoFrame],
        pqf_flags: Iterable[bool] | None = None,
        pqf_score: Callable[[VideoFrame], float] | None = None,
    ) -> Iterator[VideoFrame]:
        """Streams enhanced frames in display order; memory bounded by the window (or segment).

        PQF models: `pqf_flags` are the frames' PQF flags in display order; without them the
        flags are found on the fly (`stream_peak_flags`) from `pqf_score(frame)` (higher =
        better), by default minus the frame's slice QP (`frame.qp`: the HM hook).
        """
        if self.spec.temporal == "pqf":
            yield from self.enhance_pqf_stream(frames, pqf_flags, pqf_score)
            return
        if pqf_flags is not None or pqf_score is not None:
            raise ModelError(f"model {self.spec.name!r} does not use PQFs")
        if self.segment_plan is not None:
            for _, out in stream_segments(frames, self.enhance_segment, self.segment_plan):
                yield out
            return
        for _, window in sliding_windows(frames, self.spec.radius, self.spec.border):
            yield self.enhance_window(window)

    # -- recurrent models ---------------------------------------------------------------------
    def _segment_tile_for(self, height: int, width: int) -> int | None:
        if self.tile is not None:
            return self.tile
        if height * width <= SEGMENT_TILE_PIXELS:
            return None
        return DEFAULT_SEGMENT_TILE

    def enhance_segment_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """[1, T, C, H, W] float in [0, 1], any H, W -> [1, T, C, scale*H, scale*W] (unclipped)."""
        _, _, _, h, w = x.shape
        with self._lock:
            return run_segment(
                self.backend,
                x,
                multiple=self.spec.size_multiple,
                min_size=self.spec.min_size,
                scale=self.spec.scale,
                tile=self._segment_tile_for(h, w),
                overlap=self.overlap,
            )

    def enhance_segment(self, frames: Sequence[VideoFrame]) -> list[VideoFrame]:
        """Enhances every frame of one segment of decoded frames (RGB models: YUV -> RGB -> YUV;
        Y models: the luma planes, chroma kept)."""
        if self.spec.color == "y":
            out = self.enhance_segment_tensor(frames_to_luma_tensor(list(frames)))[0]
            return [f.with_planes([float_to_plane(out[i, 0], f.fmt), *f.planes[1:]]) for i, f in enumerate(frames)]
        out = self.enhance_segment_tensor(frames_to_rgb_tensor(list(frames)))[0]
        return [f.with_planes(rgb_tensor_to_planes(out[i], f)) for i, f in enumerate(frames)]

    def enhance_segment_tensors(self, frames: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Enhances every frame of one segment given as [C, H, W] RGB tensors in [0, 1]."""
        out = self.enhance_segment_tensor(torch.stack(list(frames)).unsqueeze(0))[0]
        return list(out)

    def random_access(
        self, get_frame: Callable[[int], VideoFrame], length: int, max_segments: int = 2
    ) -> SegmentCache[VideoFrame, VideoFrame]:
        """A segment cache over decoded frames: `.get(n)` equals frame n of `enhance_stream`."""
        return SegmentCache(get_frame, length, self.enhance_segment, self._require_plan(), max_segments)

    def random_access_tensors(
        self, get_tensor: Callable[[int], torch.Tensor], length: int, max_segments: int = 2
    ) -> SegmentCache[torch.Tensor, torch.Tensor]:
        """A segment cache over [C, H, W] RGB tensors (VapourSynth RGBS/RGBH clips)."""
        return SegmentCache(get_tensor, length, self.enhance_segment_tensors, self._require_plan(), max_segments)

    def _require_plan(self) -> SegmentPlan:
        if self.segment_plan is None:
            raise ModelError(f"model {self.spec.name!r} is not recurrent: use enhance_window")
        return self.segment_plan

    # -- PQF models ---------------------------------------------------------------------------
    def enhance_pqf_tensor(self, x: torch.Tensor, is_pqf: bool) -> torch.Tensor:
        """[N, 3, C, H, W] (left PQF, frame, right PQF) in [0, 1] -> [N, C, H, W] (unclipped), by
        the PQF network for a PQF and the non-PQF network otherwise (PowerVQE's testing scheme)."""
        return self._run_window_model(self.pqf_backend if is_pqf else self.backend, x)

    def enhance_pqf_triplet(self, left: VideoFrame, frame: VideoFrame, right: VideoFrame, is_pqf: bool) -> VideoFrame:
        """Enhances `frame` from its two reference frames (YUV in, YUV out: RGB models convert)."""
        if self.spec.color == "y":
            out = self.enhance_pqf_tensor(frames_to_luma_tensor([left, frame, right]), is_pqf)
            return frame.with_planes([float_to_plane(out[0, 0], frame.fmt), *frame.planes[1:]])
        out = self.enhance_pqf_tensor(frames_to_rgb_tensor([left, frame, right]), is_pqf)
        return frame.with_planes(rgb_tensor_to_planes(out[0], frame))

    @property
    def pqf_stream_lookahead(self) -> int:
        """The look-ahead of a stream whose flags are not known up front (the HM hook)."""
        return self.pqf_lookahead if self.pqf_lookahead is not None else DEFAULT_STREAM_LOOKAHEAD

    @property
    def pqf_stream_delay(self) -> int:
        """Frames a stream holds back when flags come from slice QPs: the flag rule's delay (the
        plateau cap plus the QP radius) plus the scheduler's look-ahead."""
        return flag_delay(QP_RADIUS) + self.pqf_stream_lookahead

    def enhance_pqf_stream(
        self,
        frames: Iterable[VideoFrame],
        pqf_flags: Iterable[bool] | None = None,
        pqf_score: Callable[[VideoFrame], float] | None = None,
    ) -> Iterator[VideoFrame]:
        """PQF-scheduled frames in display order, delay bounded by the look-ahead (docs/mfqev2.md).

        With `pqf_flags` the look-ahead is `pqf_lookahead` (the caller's default_lookahead);
        without, the flags come from `pqf_score` (default: minus `frame.qp`) and the look-ahead
        is `pqf_stream_lookahead`.
        """
        if pqf_flags is None:
            score = pqf_score or _qp_score
            lookahead = self.pqf_stream_lookahead
            flagged: Iterable[tuple[VideoFrame, bool]] = stream_peak_flags((f, score(f)) for f in frames)
        else:
            lookahead = self.pqf_lookahead if self.pqf_lookahead is not None else DEFAULT_STREAM_LOOKAHEAD
            flagged = _zip_flags(frames, pqf_flags)
        for frame, left, right, is_pqf in schedule(flagged, lookahead):
            yield self.enhance_pqf_triplet(left, frame, right, is_pqf)


def _qp_score(frame: VideoFrame) -> float:
    if frame.qp is None:
        raise FormatError(f"frame {frame.index}: slice QP unknown; PQFs from QPs need every picture's QP")
    return -float(frame.qp)


def _zip_flags(frames: Iterable[VideoFrame], flags: Iterable[bool]) -> Iterator[tuple[VideoFrame, bool]]:
    """Pairs frames with their flags. Flags made up front (slice QPs) must match the decoded frames
    one for one: running out of flags, or of frames while a finite flag list has more, raises
    PqfMisaligned before the stream ends, so `vsqe run` can drop its output and fall back."""
    it = iter(flags)
    paired = 0
    for frame in frames:
        try:
            flag = next(it)
        except StopIteration:
            raise PqfMisaligned(
                f"the PQF flags cover {paired} frames, the decoder gave more (frame {frame.index})"
            ) from None
        paired += 1
        yield frame, bool(flag)
    if isinstance(flags, Sequence) and paired != len(flags):
        raise PqfMisaligned(f"the PQF flags cover {len(flags)} frames, the decoder gave {paired}")
