"""The VapourSynth face of vsqe: `vsqe.vs.enhance(clip, model="stdf", ...)` returns an enhanced clip.

Frames are requested in any order and from several threads. Each output frame n is computed from
the frames that `pipeline.window.window_indices` names, through the same `Enhancer.enhance_window`
that `vsqe run` uses, so frame n is identical bit for bit to frame n of the CLI's output. The model
is loaded once per call of `enhance`; the enhancer's lock serialises inference so that
`core.num_threads` worker threads do not multiply activation memory.

Recurrent models (BasicVSR++) run in segments (pipeline/segments.py): frame n is taken from the
enhancer's segment cache, which computes segment n // L once, reading its frames with
`clip.get_frame` inside the callback, and keeps the last two segments.

PQF models (MFQEv2) take their PQF flags at evaluation time: from the slice QPs of the bitstream
the clip was decoded from (`pqf_source`), from the no-reference estimator, or every N frames.
Frame n is then enhanced from the (left, right) references that `pqf_schedule.triplet_for` names,
the pairing `vsqe run` streams with `schedule`, through the same `Enhancer.enhance_pqf_tensor`.

Clips shorter than a model's temporal window replicate their edge frames, as `vsqe run` and the
HM hook do (`window_indices`): one rule for every front end.

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

__all__ = ["enhance", "stdf", "basicvsrpp", "mfqev2"]

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
    pqf: str | None = None,
    pqf_source: str | None = None,
    pqf_lookahead: int | None = None,
    pqf_weights: str | None = None,
) -> vs.VideoNode:
    """Enhances `clip` with a vsqe model; same format, size, length and frame properties.

    Y models take YUV420P8/P10/P16 and GRAY8/10/16 (chroma passes through untouched); RGB models
    take RGBS/RGBH. `tiles` is the tile size in pixels (None: automatic by frame size), `overlap`
    the tile overlap (default 64). Recurrent models (BasicVSR++) take `segment_length` and
    `segment_overlap` (defaults from the model). PQF models (MFQEv2) take `pqf` ("auto", "qp",
    "estimate" or "every:N"; auto = qp when `pqf_source` is given, else estimate), `pqf_source`
    (the bitstream the clip was decoded from; frame n of the clip must be its output frame n),
    `pqf_lookahead` and `pqf_weights` (docs/mfqev2.md). All checks run here, at script evaluation
    time.
    """
    try:
        _check_model_options(model, pqf, pqf_source)
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
            pqf_weights=pqf_weights,
            pqf_lookahead=pqf_lookahead,
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
    if spec.temporal == "pqf":
        return _enhance_pqf(clip, enhancer, pqf or "auto", pqf_source)

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


def _check_model_options(model: str, pqf: str | None, pqf_source: str | None) -> None:
    from vsqe.errors import ModelError
    from vsqe.models import get_model_spec
    from vsqe.pipeline.pqf_schedule import parse_every

    spec = get_model_spec(model)
    if spec.temporal != "pqf" and (pqf is not None or pqf_source is not None):
        raise ModelError(f"model {model!r} does not use PQFs: pqf and pqf_source do not apply")
    if pqf is not None and pqf not in ("auto", "qp", "estimate"):
        try:
            parse_every(pqf)
        except ValueError:
            raise ModelError(f"pqf must be auto, qp, estimate or every:N (N >= 1), got {pqf!r}") from None
    if pqf == "qp" and pqf_source is None:
        raise ModelError("pqf='qp' needs pqf_source, the bitstream the clip was decoded from")


def _rgb_tensor(frame: vs.VideoFrame) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(frame[p], dtype=np.float32) for p in range(3)]))


def _pqf_flags(clip: vs.VideoNode, mode: str, source: str | None) -> tuple[list[bool], str]:
    """The clip's PQF flags, computed once here at evaluation time; (flags, where from)."""
    from vsqe.pipeline import pqf_schedule as ps

    length = clip.num_frames
    if mode.startswith("every:"):
        period = ps.parse_every(mode)
        return ps.flags_every(length, period), f"every {period}"
    if mode in ("auto", "qp") and source is not None:
        try:
            qps = ps.bitstream_qps(source)
            if len(qps) < length:
                raise ps.PqfUnavailable(f"{source}: its slice headers give {len(qps)} output frames, the clip has {length}")
            return ps.qp_flags(qps[:length]), "slice QPs"
        except ps.PqfUnavailable as exc:
            print(f"vsqe: WARNING: {exc}; PQFs from the no-reference estimator instead", file=sys.stderr)
    return ps.score_flags([_frame_score(clip.get_frame(n)) for n in range(length)]), "estimate"


def _frame_score(frame: vs.VideoFrame) -> float:
    """The estimator on the frame's luma, on the scale `vsqe run` scores (its decoded Y plane /
    peak): a YUV/GRAY frame's own Y plane; for RGB, BT.601 Y of the samples put on the
    limited-range scale, so flags agree up to rounding."""
    from vsqe.pqf.estimator import frame_score

    if frame.format.color_family != vs.RGB:
        return frame_score(np.asarray(frame[0], dtype=np.float64) / ((1 << frame.format.bits_per_sample) - 1))
    r, g, b = (np.asarray(frame[p], dtype=np.float64) for p in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return frame_score((16.0 + 219.0 * np.clip(y, 0.0, 1.0)) / 255.0)


def _enhance_pqf(clip: vs.VideoNode, enhancer: Enhancer, mode: str, source: str | None) -> vs.VideoNode:
    """RGBS/RGBH, frame n from (left, n, right) = triplet_for(n): the pairing of `vsqe run`.

    Flags (and estimator scores) are computed up front: the left reference of frame n is the last
    PQF before n, however far back, so random access to any frame needs the flags of all earlier
    ones anyway, and a score costs milliseconds next to the model's seconds. The references are
    fetched inside the frame callback (no spliced index clips: those would take one piece per frame).
    """
    from vsqe.pipeline.pqf_schedule import default_lookahead, triplet_for

    flags, where = _pqf_flags(clip, mode, source)
    lookahead = enhancer.pqf_lookahead if enhancer.pqf_lookahead is not None else default_lookahead(flags)
    refs = [triplet_for(n, flags, lookahead) for n in range(clip.num_frames)]
    pqfs = [n for n, f in enumerate(flags) if f]
    log.info("vsqe: PQFs from %s: %s, look-ahead %d", where, pqfs, lookahead)

    if enhancer.spec.color == "y":  # luma through the network (vsqe run's YUV path), chroma kept
        pix = _pixel_format(clip.format)

        def enhance_luma(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
            left, right = refs[n]
            centre = _as_video_frame(f, pix, n)
            ref = lambda i: centre if i == n else _as_video_frame(clip.get_frame(i), pix, i)  # noqa: E731
            result = enhancer.enhance_pqf_triplet(ref(left), centre, ref(right), flags[n])
            out = f.copy()
            np.copyto(np.asarray(out[0]), result.planes[0])
            return out

        return clip.std.ModifyFrame(clips=clip, selector=enhance_luma)

    def enhance_frame(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        left, right = refs[n]
        centre = _rgb_tensor(f)
        triplet = [
            centre if left == n else _rgb_tensor(clip.get_frame(left)),
            centre,
            centre if right == n else _rgb_tensor(clip.get_frame(right)),
        ]
        rgb = enhancer.enhance_pqf_tensor(torch.stack(triplet).unsqueeze(0), flags[n])[0].clamp(0, 1).numpy()
        out = f.copy()  # keeps the frame's properties
        for p in range(3):
            np.copyto(np.asarray(out[p]), rgb[p].astype(np.asarray(out[p]).dtype))
        return out

    return clip.std.ModifyFrame(clips=clip, selector=enhance_frame)


def _enhance_recurrent(clip: vs.VideoNode, enhancer: Enhancer) -> vs.VideoNode:
    """Through the enhancer's segment cache (the same segments as `vsqe run`): RGBS/RGBH clips as
    tensors; Y models take the YUV/GRAY clip's luma, chroma kept."""
    scale = enhancer.spec.scale
    if enhancer.spec.color == "y":
        if scale != 1:  # chroma would need resampling too; no such model is registered
            raise vs.Error(f"vsqe: model {enhancer.spec.name!r}: Y models that change the size are not supported")
        pix = _pixel_format(clip.format)
        frames = enhancer.random_access(lambda i: _as_video_frame(clip.get_frame(i), pix, i), clip.num_frames)

        def enhance_luma(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
            out = f.copy()
            np.copyto(np.asarray(out[0]), frames.get(n).planes[0])
            return out

        return clip.std.ModifyFrame(clips=clip, selector=enhance_luma)

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


def mfqev2(clip: vs.VideoNode, **kwargs) -> vs.VideoNode:
    """MFQEv2 (RGBS/RGBH) with PQF scheduling; keywords as for `enhance` (pqf, pqf_source, ...)."""
    return enhance(clip, model="mfqev2", **kwargs)
