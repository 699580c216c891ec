"""ΔY-PSNR on the dev clips through the inference path (vsqe.pipeline.enhancer.Enhancer).

The compressed streams are decoded with PyAV into VideoFrames, windows are formed by
vsqe.pipeline.window.window_indices (the rule every front end uses), enhanced by Enhancer and
measured by vsqe.eval.psnr against the y4m references. 10-bit output (VVC) is rounded to 8 bit
before measuring, as /work/shared/data/psnr.txt does.

PQF models (MFQEv2) go through `evaluate_pqf`: PQF flags from the stream's slice-header QPs and
the look-ahead as `vsqe run` finds them (pqf_schedule.qp_flags, default_lookahead), references by
the scheduler's `triplet_for` (what `schedule` pairs), each frame by
`Enhancer.enhance_pqf_triplet` (PQF network on PQFs, non-PQF network on the others).

Recurrent models (BasicVSR++) go through `evaluate_recurrent`: each clip streamed through
`Enhancer.enhance_stream`, i.e. the segments (length, overlap) that `vsqe run` uses.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from vsqe.errors import InputError
from vsqe.eval.psnr import psnr
from vsqe.io.formats import VideoFrame, pixel_format_from_av
from vsqe.pipeline.window import window_indices

DEV_DIR = Path("/work/shared/data")
DEV_CLIPS = ("city_416x240", "phone_832x480", "birds_640x360")
STREAM_SUFFIX = {
    "hm": "_hm_ldp_qp37.hevc",
    "x265": "_x265_ldp_qp37.hevc",
    "vvenc": "_vvenc_ldp_qp37.266",
    "x264": "_x264_qp37.264",
    # test sets (`vsqe data build --held-out`): x265 with HM's rate-distortion weighting (§10)
    "x265-hm": "_x265_ldp_hm_qp37.hevc",
}


def read_y4m_luma(path: Path) -> np.ndarray:
    """Y planes of an 8-bit 4:2:0 y4m file, [T, H, W] uint8."""
    data = Path(path).read_bytes()
    header_end = data.index(b"\n")
    header = data[:header_end].decode().split()
    if header[0] != "YUV4MPEG2":
        raise InputError(f"{path} is not a y4m file")
    w = int(next(t[1:] for t in header if t.startswith("W")))
    h = int(next(t[1:] for t in header if t.startswith("H")))
    frame_bytes = w * h * 3 // 2
    out = []
    pos = header_end + 1
    while pos < len(data):
        nl = data.index(b"\n", pos)
        pos = nl + 1
        out.append(np.frombuffer(data, np.uint8, w * h, pos).reshape(h, w))
        pos += frame_bytes
    return np.stack(out)


def decode_frames(path: Path) -> list[VideoFrame]:
    """Decodes a bitstream with PyAV into VideoFrames (display order)."""
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            fmt = pixel_format_from_av(frame.format.name)
            planes = []
            for pi, plane in enumerate(frame.planes):
                ph, pw = fmt.plane_shapes(frame.width, frame.height)[pi]
                itemsize = np.dtype(fmt.dtype).itemsize
                arr = np.frombuffer(plane, dtype=fmt.dtype).reshape(plane.height, plane.line_size // itemsize)
                planes.append(arr[:ph, :pw].copy())
            pict = frame.pict_type.name if hasattr(frame.pict_type, "name") else str(frame.pict_type)
            frames.append(VideoFrame(planes=planes, fmt=fmt, index=i, pict_type=pict))
    if not frames:
        raise InputError(f"no frames decoded from {path}")
    return frames


def to_8bit(plane: np.ndarray, bit_depth: int) -> np.ndarray:
    if bit_depth == 8:
        return plane
    shift = bit_depth - 8
    return np.clip((plane.astype(np.int32) + (1 << (shift - 1))) >> shift, 0, 255).astype(np.uint8)


@dataclass
class ClipResult:
    clip: str
    stream: str
    frames: list[int]
    psnr_in: list[float]
    psnr_out: list[float]
    pqf: list[bool] | None = None  # PQF models: the PQF flag of each measured frame

    @property
    def delta(self) -> float:
        return float(np.mean(self.psnr_out) - np.mean(self.psnr_in))

    def delta_by_class(self) -> dict[str, float]:
        """ΔPSNR by frame class: I (frame 0), and P frames by POC mod 4 (QP 40/39/40/38 in LDP)."""
        groups: dict[str, list[int]] = {}
        for j, n in enumerate(self.frames):
            key = "I" if n == 0 else f"P{n % 4}"
            groups.setdefault(key, []).append(j)
        return {
            k: float(np.mean([self.psnr_out[j] for j in v]) - np.mean([self.psnr_in[j] for j in v]))
            for k, v in sorted(groups.items())
        }


    def delta_by_pqf(self) -> dict[str, float | None]:
        """ΔPSNR on the measured PQFs and non-PQFs (None: no frame of that class measured)."""
        out: dict[str, float | None] = {}
        for key, want in (("pqf", True), ("nonpqf", False)):
            js = [j for j, f in enumerate(self.pqf or []) if f == want]
            out[key] = float(np.mean([self.psnr_out[j] - self.psnr_in[j] for j in js])) if js else None
        return out


_cache: dict[tuple, tuple] = {}


def _decoded(clip: str, stream: str, dev_dir: Path) -> tuple[np.ndarray, list[VideoFrame]]:
    key = (str(dev_dir), clip, stream)
    if key not in _cache:
        ref = read_y4m_luma(dev_dir / f"{clip}.y4m")
        dec = decode_frames(dev_dir / f"{clip}{STREAM_SUFFIX[stream]}")
        if len(dec) != len(ref):
            raise InputError(f"{clip} {stream}: {len(dec)} decoded frames vs {len(ref)} reference frames")
        _cache[key] = (ref, dec)
    return _cache[key]


def _score(
    clip: str,
    stream: str,
    ref: np.ndarray,
    dec: list[VideoFrame],
    enhanced: Iterable[tuple[int, VideoFrame | None]],
    pqf: list[bool] | None = None,
) -> ClipResult:
    """Y-PSNR of decoded and enhanced frame n against reference frame n, for each (n, enhanced)
    of `enhanced` in its order (None: the frame is left as decoded, so its gain is exactly 0).

    `enhanced` is consumed lazily, one frame at a time, so a stream is never held whole."""
    idx, p_in, p_out = [], [], []
    for n, out in enhanced:
        depth = dec[n].fmt.bit_depth
        idx.append(n)
        p_in.append(psnr(ref[n], to_8bit(dec[n].planes[0], depth), 255))
        p_out.append(p_in[-1] if out is None else psnr(ref[n], to_8bit(out.planes[0], depth), 255))
    return ClipResult(clip, stream, idx, p_in, p_out, pqf)


def evaluate(
    enhancer,
    clips: tuple[str, ...] = DEV_CLIPS,
    stream: str = "hm",
    frame_step: int = 1,
    dev_dir: Path = DEV_DIR,
) -> list[ClipResult]:
    """ΔY-PSNR of `enhancer` on frames 0, step, 2*step, ... of each clip's `stream` encode."""
    results = []
    for clip in clips:
        ref, dec = _decoded(clip, stream, dev_dir)
        n_frames = len(dec)
        windows = ((n, window_indices(n, enhancer.radius, n_frames, enhancer.spec.border)) for n in range(0, n_frames, frame_step))
        enhanced = ((n, enhancer.enhance_window([dec[i] for i in w])) for n, w in windows)
        results.append(_score(clip, stream, ref, dec, enhanced))
    return results


def evaluate_recurrent(
    enhancer,
    clips: tuple[str, ...] = DEV_CLIPS,
    stream: str = "hm",
    frame_step: int = 1,
    dev_dir: Path = DEV_DIR,
    max_frames: int | None = None,
) -> list[ClipResult]:
    """ΔY-PSNR of a recurrent-model `enhancer` (BasicVSR++): the first `max_frames` frames of each
    clip (all when None) streamed through `Enhancer.enhance_stream`, the segments of `vsqe run`;
    frames 0, step, 2*step, ... of that stream measured."""
    results = []
    for clip in clips:
        ref, dec = _decoded(clip, stream, dev_dir)
        dec = dec[:max_frames] if max_frames else dec
        wanted = set(range(0, len(dec), frame_step))
        # every frame goes through the stream (the recurrence needs them all); only `wanted` are scored
        enhanced = ((n, out) for n, out in enumerate(enhancer.enhance_stream(dec)) if n in wanted)
        results.append(_score(clip, stream, ref, dec, enhanced))
    return results


def dev_pqf_flags(clip: str, stream: str, dev_dir: Path, n_frames: int) -> tuple[list[bool], int]:
    """PQF flags of a dev stream from its slice QPs (as `vsqe run` finds them) and the scheduler's
    look-ahead; refused when the slice headers and the decoder disagree on the frame count."""
    from vsqe.pipeline.pqf_schedule import bitstream_qps, default_lookahead, qp_flags

    flags = qp_flags(bitstream_qps(str(dev_dir / f"{clip}{STREAM_SUFFIX[stream]}")))
    if len(flags) != n_frames:
        raise InputError(f"{clip} {stream}: {len(flags)} slice-header frames vs {n_frames} decoded frames")
    return flags, default_lookahead(flags)


def evaluate_pqf(
    enhancer,
    clips: tuple[str, ...] = DEV_CLIPS,
    stream: str = "hm",
    frame_step: int = 1,
    dev_dir: Path = DEV_DIR,
    enhance: tuple[str, ...] = ("pqf", "nonpqf"),
    all_of: str | None = None,
) -> list[ClipResult]:
    """ΔY-PSNR of a PQF-model `enhancer` on frames 0, step, 2*step, ... of each clip (plus every
    frame of class `all_of`, "pqf" or "nonpqf", when given: PQFs are too few at step 3).

    Frames whose class ("pqf" / "nonpqf") is not in `enhance` are left as decoded (0 gain):
    a run that trains one network is measured without the other.
    """
    from vsqe.pipeline.pqf_schedule import triplet_for

    results = []
    for clip in clips:
        ref, dec = _decoded(clip, stream, dev_dir)
        n_frames = len(dec)
        flags, lookahead = dev_pqf_flags(clip, stream, dev_dir, n_frames)
        wanted = set(range(0, n_frames, frame_step))
        if all_of is not None:
            wanted |= {n for n, f in enumerate(flags) if f == (all_of == "pqf")}
        idx = sorted(wanted)

        def enhanced_frame(n: int) -> VideoFrame | None:
            if ("pqf" if flags[n] else "nonpqf") not in enhance:
                return None  # the other run's class: left as decoded
            left, right = triplet_for(n, flags, lookahead)
            return enhancer.enhance_pqf_triplet(dec[left], dec[n], dec[right], flags[n])

        enhanced = ((n, enhanced_frame(n)) for n in idx)
        results.append(_score(clip, stream, ref, dec, enhanced, [flags[n] for n in idx]))
    return results


def summarize(results: list[ClipResult]) -> dict:
    per_clip = {r.clip: round(r.delta, 4) for r in results}
    worst_class = min(min(r.delta_by_class().values()) for r in results)
    worst_frame = min(min(o - i for o, i in zip(r.psnr_out, r.psnr_in)) for r in results)
    summary = {
        "delta_mean": round(float(np.mean([r.delta for r in results])), 4),
        "per_clip": per_clip,
        "worst_class": round(worst_class, 4),
        "worst_frame": round(worst_frame, 4),
        "by_class": {r.clip: {k: round(v, 4) for k, v in r.delta_by_class().items()} for r in results},
        "psnr_in": {r.clip: round(float(np.mean(r.psnr_in)), 4) for r in results},
    }
    if results and all(r.pqf is not None for r in results):
        by_pqf = {r.clip: r.delta_by_pqf() for r in results}
        summary["by_pqf"] = {c: {k: _round(v) for k, v in d.items()} for c, d in by_pqf.items()}
        # Mean over clips of each clip's class gain (None unless every clip measured the class).
        summary["pqf_class"] = {
            k: _round(float(np.mean([d[k] for d in by_pqf.values()])) if all(d[k] is not None for d in by_pqf.values()) else None)
            for k in ("pqf", "nonpqf")
        }
    return summary


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)
