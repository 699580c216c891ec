"""The VapourSynth face of vsqe: `vsqe.vs.enhance(clip, model="stdf", ...)` returns an enhanced clip.

Frames are requested in any order and from several threads. Each output frame n is computed from
the frames that `pipeline.window.window_indices` names, through the same `Enhancer.enhance_window`
that `vsqe run` uses, so frame n is identical bit for bit to frame n of the CLI's output. The model
is loaded once per call of `enhance`; the enhancer's lock serialises inference so that
`core.num_threads` worker threads do not multiply activation memory.

Recurrent models (BasicVSR++) run in segments (pipeline/segments.py): frame n is taken from the
enhancer's segment cache, which computes segment n // L once, reading its frames with
`clip.get_frame` inside the callback, and keeps the last two segments.

Logs go to stderr: under vspipe, stdout is the y4m pipe.
"""
from __future__ import annotations

import logging
import sys

import numpy as np
import torch
import vapoursynth as vs

from vsqe.errors import VsqeError
from vsqe.io.formats import PixelFormat, VideoFrame
from vsqe.pipeline.enhancer import Enhancer
from vsqe.pipeline.window import window_indices

log = logging.getLogger("vsqe.vs")

__all__ = ["enhance", "stdf", "basicvsrpp"]

# Preset ids, compared by value: format names differ in case between versions ("Gray8").
_Y_FORMATS = {vs.YUV420P8: "YUV420P8", vs.YUV420P10: "YUV420P10", vs.YUV420P16: "YUV420P16",
              vs.GRAY8: "GRAY8", vs.GRAY10: "GRAY10", vs.GRAY16: "GRAY16"}
_RGB_FORMATS = {vs.RGBS: "RGBS", vs.RGBH: "RGBH"}


def _pixel_format(fmt: vs.VideoFormat) -> PixelFormat:
    chroma = "400" if fmt.color_family == vs.GRAY else "420"
    return PixelFormat(chroma, fmt.bits_per_sample)


def _index_runs(index_of: list[int]) -> list[tuple[int, int]]:
    """Compresses a frame-index map into runs (start, stop) of consecutive source frames."""
    runs: list[tuple[int, int]] = []
    for i in index_of:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _shifted_clip(clip: vs.VideoNode, index_of: list[int]) -> vs.VideoNode:
    """A clip whose frame n is clip[index_of[n]], built from a few trims (O(radius) pieces)."""
    pieces = [clip[start:stop] for start, stop in _index_runs(index_of)]
    return pieces[0] if len(pieces) == 1 else vs.core.std.Splice(pieces)


def _as_video_frame(frame: vs.VideoFrame, fmt: PixelFormat, n: int) -> VideoFrame:
    planes = [np.array(frame[p], copy=True) for p in range(frame.format.num_planes)]
    return VideoFrame(planes=planes, fmt=fmt, index=n)


def enhance(
    clip: vs.VideoNode,
    model: str = "stdf",
    backend: str = "auto",
    weights: str | None = None,
    tiles: int | None = None,
    overlap: int | None = None,
    threads: int | None = None,
    allow_untrained: bool = False,
    segment_length: int | None = None,
    segment_overlap: int | None = None,
) -> vs.VideoNode:
    """Enhances `clip` with a vsqe model; same format, size, length and frame properties.

    Y models take YUV420P8/P10/P16 and GRAY8/10/16 (chroma passes through untouched); RGB models
    take RGBS/RGBH. `tiles` is the tile size in pixels (None: automatic by frame size), `overlap`
    the tile overlap (default 64). Recurrent models (BasicVSR++) take `segment_length` and
    `segment_overlap` (defaults from the model). All checks run here, at script evaluation time.
    """
    try:
        enhancer = Enhancer(
            model,
            weights=weights,
            backend=backend,
            tile=tiles,
            overlap=64 if overlap is None else overlap,
            threads=threads,
            require_weights=not allow_untrained,
            segment_length=segment_length,
            segment_overlap=segment_overlap,
        )
    except VsqeError as exc:
        raise vs.Error(f"vsqe: {exc}") from None
    if enhancer.weights_path is None:
        print(f"vsqe: WARNING: model {model!r} runs with untrained weights", file=sys.stderr)

    spec = enhancer.spec
    fmt = clip.format
    if fmt is None or clip.width == 0 or clip.height == 0:
        raise vs.Error("vsqe: variable-format or variable-size clips are not supported; resize to one size first")
    supported = _Y_FORMATS if spec.color == "y" else _RGB_FORMATS
    if fmt.id not in {int(preset) for preset in supported}:
        raise vs.Error(
            f"vsqe: model {model!r} does not take {fmt.name}; supported: {', '.join(supported.values())}"
            + ("" if spec.color == "y" else " (convert with core.resize.Bicubic(clip, format=vs.RGBS, matrix_in_s=...))")
        )
    if spec.temporal == "recurrent":
        return _enhance_recurrent(clip, enhancer)
    if clip.num_frames < spec.window:
        raise vs.Error(
            f"vsqe: clip has {clip.num_frames} frames; model {model!r} needs at least {spec.window} (its temporal window)"
        )

    length = clip.num_frames
    radius = spec.radius
    neighbours = [
        _shifted_clip(clip, [window_indices(n, radius, length, spec.border)[p] for n in range(length)])
        for p in range(spec.window)
    ]
    pix = _pixel_format(fmt) if spec.color == "y" else None

    def enhance_frame(n: int, f: list[vs.VideoFrame]) -> vs.VideoFrame:
        out = f[radius].copy()  # keeps the centre frame's properties
        if spec.color == "y":
            window = [_as_video_frame(frame, pix, n) for frame in f]
            result = enhancer.enhance_window(window)
            np.copyto(np.asarray(out[0]), result.planes[0])
        else:
            planes = [
                torch.from_numpy(np.stack([np.asarray(frame[p], dtype=np.float32) for p in range(3)]))
                for frame in f
            ]
            rgb = enhancer.enhance_tensor(torch.stack(planes).unsqueeze(0))[0].clamp_(0, 1).numpy()
            for p in range(3):
                np.copyto(np.asarray(out[p]), rgb[p].astype(np.asarray(out[p]).dtype))
        return out

    return clip.std.ModifyFrame(clips=neighbours, selector=enhance_frame)


def _enhance_recurrent(clip: vs.VideoNode, enhancer: Enhancer) -> vs.VideoNode:
    """RGBS/RGBH through the enhancer's segment cache (the same segments as `vsqe run`)."""
    scale = enhancer.spec.scale

    def get_tensor(i: int) -> torch.Tensor:
        frame = clip.get_frame(i)
        return torch.from_numpy(np.stack([np.asarray(frame[p], dtype=np.float32) for p in range(3)]))

    cache = enhancer.random_access_tensors(get_tensor, clip.num_frames)

    def enhance_frame(n: int, f: vs.VideoFrame | list[vs.VideoFrame]) -> vs.VideoFrame:
        if isinstance(f, vs.VideoFrame):
            out = f.copy()  # keeps the source frame's properties
        else:  # [source, blank of the output size]
            out = f[1].copy()
            out.props.clear()
            out.props.update(f[0].props)
        rgb = cache.get(n).clamp(0, 1).numpy()
        for p in range(3):
            np.copyto(np.asarray(out[p]), rgb[p].astype(np.asarray(out[p]).dtype))
        return out

    if scale == 1:
        return clip.std.ModifyFrame(clips=clip, selector=enhance_frame)
    blank = clip.std.BlankClip(width=clip.width * scale, height=clip.height * scale, keep=True)
    return blank.std.ModifyFrame(clips=[clip, blank], selector=enhance_frame)


def stdf(clip: vs.VideoNode, **kwargs) -> vs.VideoNode:
    """STDF (Y); keywords as for `enhance`."""
    return enhance(clip, model="stdf", **kwargs)


def basicvsrpp(clip: vs.VideoNode, **kwargs) -> vs.VideoNode:
    """BasicVSR++ QE (RGBS/RGBH); keywords as for `enhance`."""
    return enhance(clip, model="basicvsrpp", **kwargs)
