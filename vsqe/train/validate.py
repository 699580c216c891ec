"""ΔY-PSNR on the dev clips through the inference path (vsqe.pipeline.enhancer.Enhancer).

The compressed streams are decoded with PyAV into VideoFrames, windows are formed by
vsqe.pipeline.window.window_indices (the rule every front end uses), enhanced by Enhancer and
measured by vsqe.eval.psnr against the y4m references. 10-bit output (VVC) is rounded to 8 bit
before measuring, as /work/shared/data/psnr.txt does.
"""
from __future__ import annotations

import math
import time
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


_cache: dict[tuple, tuple] = {}


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
        key = (str(dev_dir), clip, stream)
        if key not in _cache:
            ref = read_y4m_luma(dev_dir / f"{clip}.y4m")
            dec = decode_frames(dev_dir / f"{clip}{STREAM_SUFFIX[stream]}")
            if len(dec) != len(ref):
                raise InputError(f"{clip} {stream}: {len(dec)} decoded frames vs {len(ref)} reference frames")
            _cache[key] = (ref, dec)
        ref, dec = _cache[key]
        n_frames = len(dec)
        idx = list(range(0, n_frames, frame_step))
        p_in, p_out = [], []
        for n in idx:
            window = [dec[i] for i in window_indices(n, enhancer.radius, n_frames, enhancer.spec.border)]
            out = enhancer.enhance_window(window)
            depth = dec[n].fmt.bit_depth
            p_in.append(psnr(ref[n], to_8bit(dec[n].planes[0], depth), 255))
            p_out.append(psnr(ref[n], to_8bit(out.planes[0], depth), 255))
        results.append(ClipResult(clip, stream, idx, p_in, p_out))
    return results


def summarize(results: list[ClipResult]) -> dict:
    per_clip = {r.clip: round(r.delta, 4) for r in results}
    worst_class = min(min(r.delta_by_class().values()) for r in results)
    worst_frame = min(min(o - i for o, i in zip(r.psnr_out, r.psnr_in)) for r in results)
    return {
        "delta_mean": round(float(np.mean([r.delta for r in results])), 4),
        "per_clip": per_clip,
        "worst_class": round(worst_class, 4),
        "worst_frame": round(worst_frame, 4),
        "by_class": {r.clip: {k: round(v, 4) for k, v in r.delta_by_class().items()} for r in results},
        "psnr_in": {r.clip: round(float(np.mean(r.psnr_in)), 4) for r in results},
    }
