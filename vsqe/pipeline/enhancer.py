"""The enhancer: a model, its weights and a backend, applied to windows of decoded frames.

Every front end (vsqe run, the VapourSynth filter, the HM hook) calls `Enhancer.enhance_window`
with the frames chosen by `window.window_indices`, one output frame at a time; that is what makes
their outputs identical bit for bit.

Recurrent models (spec.temporal == "recurrent", BasicVSR++) go through pipeline/segments.py
instead: `enhance_stream` streams segments, `random_access` / `random_access_tensors` give the
VapourSynth filter a segment cache; both run the same `enhance_segment*` per segment.
"""
from __future__ import annotations

import threading
from typing import Callable, Iterable, Iterator, Sequence

import torch

from vsqe.backends import create_backend
from vsqe.errors import FormatError, ModelError
from vsqe.io.formats import (
    VideoFrame,
    float_to_plane,
    frames_to_luma_tensor,
    frames_to_rgb_tensor,
    rgb_tensor_to_planes,
)
from vsqe.models import build_model
from vsqe.pipeline.segments import SegmentCache, SegmentPlan, run_segment, stream_segments
from vsqe.pipeline.tiles import run_tiled
from vsqe.pipeline.window import sliding_windows

# Above this many pixels a frame is processed in tiles, to bound activation memory (STDF keeps
# about 64 + 189 + 48 float channels per pixel alive: ~1.2 KB/px, ~2.5 GB at 1080p untiled).
DEFAULT_TILE_PIXELS = 1280 * 720
# Recurrent models hold ~100 B per pixel per segment frame (BasicVSR++ C64); frames above
# DEFAULT_TILE_PIXELS run in tiles of at most this size (docs/basicvsrpp.md, memory).
DEFAULT_SEGMENT_TILE = 720


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
    ) -> None:
        self.module, self.spec, self.weights_path = build_model(model, weights, require_weights=require_weights)
        self.backend = create_backend(backend, self.module, threads=threads)
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
        # One inference at a time: VapourSynth calls from several threads, and parallel forward
        # passes would multiply activation memory without adding speed on two cores.
        self._lock = threading.Lock()

    @property
    def radius(self) -> int:
        return self.spec.radius

    def _tile_for(self, height: int, width: int) -> int | None:
        if self.tile is not None:
            return self.tile
        if height * width <= DEFAULT_TILE_PIXELS:
            return None
        return 512

    def enhance_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, C, H, W] float in [0, 1], any H, W -> [N, C, H, W] float (unclipped)."""
        _, t, c, h, w = x.shape
        if t != self.spec.window:
            raise FormatError(f"model {self.spec.name!r} needs {self.spec.window} frames, got {t}")
        with self._lock:
            return run_tiled(
                self.backend,
                x,
                multiple=self.spec.size_multiple,
                min_size=self.spec.min_size,
                tile=self._tile_for(h, w),
                overlap=self.overlap,
            )

    def enhance_window(self, window: Sequence[VideoFrame]) -> VideoFrame:
        """Enhances the centre frame of `window` (2*radius+1 frames); chroma kept for Y models."""
        if self.segment_plan is not None:
            raise ModelError(f"model {self.spec.name!r} is recurrent: use enhance_stream or random_access")
        centre = window[self.spec.radius]
        frames = list(window)
        if self.spec.color == "y":
            out = self.enhance_tensor(frames_to_luma_tensor(frames))
            planes = [float_to_plane(out[0, 0], centre.fmt), *centre.planes[1:]]
        else:
            out = self.enhance_tensor(frames_to_rgb_tensor(frames))
            planes = rgb_tensor_to_planes(out[0], centre)
        return centre.with_planes(planes)

    def enhance_stream(self, frames: Iterable[VideoFrame]) -> Iterator[VideoFrame]:
        """Streams enhanced frames in display order; memory bounded by the window (or segment)."""
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
        if height * width <= DEFAULT_TILE_PIXELS:
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
        """Enhances every frame of one segment of decoded frames (RGB models: YUV -> RGB -> YUV)."""
        if self.spec.color != "rgb":
            raise ModelError(f"recurrent model {self.spec.name!r} must be an RGB model")
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
