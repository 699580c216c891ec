"""The enhancer: a model, its weights and a backend, applied to windows of decoded frames.

Every front end (vsqe run, the VapourSynth filter, the HM hook) calls `Enhancer.enhance_window`
with the frames chosen by `window.window_indices`, one output frame at a time; that is what makes
their outputs identical bit for bit.
"""
from __future__ import annotations

import threading
from typing import Iterable, Iterator, Sequence

import torch

from vsqe.backends import create_backend
from vsqe.errors import FormatError
from vsqe.io.formats import (
    VideoFrame,
    float_to_plane,
    frames_to_luma_tensor,
    frames_to_rgb_tensor,
    rgb_tensor_to_planes,
)
from vsqe.models import build_model
from vsqe.pipeline.tiles import run_tiled
from vsqe.pipeline.window import sliding_windows

# Above this many pixels a frame is processed in tiles, to bound activation memory (STDF keeps
# about 64 + 189 + 48 float channels per pixel alive: ~1.2 KB/px, ~2.5 GB at 1080p untiled).
DEFAULT_TILE_PIXELS = 1280 * 720


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
    ) -> None:
        self.module, self.spec, self.weights_path = build_model(model, weights, require_weights=require_weights)
        self.backend = create_backend(backend, self.module, threads=threads)
        self.tile = tile
        self.overlap = overlap
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
        """Streams enhanced frames in display order; memory bounded by the window."""
        for _, window in sliding_windows(frames, self.spec.radius, self.spec.border):
            yield self.enhance_window(window)
