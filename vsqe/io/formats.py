"""The one place that knows pixel formats.

Everything before this module sees planes of integer samples (uint8 / uint16 numpy arrays at the
stream's bit depth); everything after it sees float tensors in [0, 1]. Conversions back round to
the bit depth and clip, as the PowerVQE protocol does before measuring PSNR.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Literal

import numpy as np
import torch

from vsqe.errors import FormatError

Chroma = Literal["400", "420", "422", "444"]

# PyAV / FFmpeg pixel format name -> (chroma layout, bit depth). Only planar YUV / gray formats:
# the models work on luma (or RGB converted from these), and passing chroma through untouched
# needs planar access.
_AV_FORMATS: dict[str, tuple[Chroma, int]] = {
    "gray": ("400", 8),
    "gray10le": ("400", 10),
    "gray12le": ("400", 12),
    "gray16le": ("400", 16),
    "yuv420p": ("420", 8),
    "yuvj420p": ("420", 8),
    "yuv420p10le": ("420", 10),
    "yuv420p12le": ("420", 12),
    "yuv420p16le": ("420", 16),
}
SUPPORTED_AV_FORMATS = tuple(_AV_FORMATS)


@dataclass(frozen=True)
class PixelFormat:
    chroma: Chroma
    bit_depth: int

    @property
    def peak(self) -> int:
        return (1 << self.bit_depth) - 1

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint8 if self.bit_depth <= 8 else np.uint16

    @property
    def num_planes(self) -> int:
        return 1 if self.chroma == "400" else 3

    def chroma_shift(self) -> tuple[int, int]:
        """(horizontal, vertical) log2 subsampling of the chroma planes."""
        return {"400": (0, 0), "420": (1, 1), "422": (1, 0), "444": (0, 0)}[self.chroma]

    def plane_shapes(self, width: int, height: int) -> list[tuple[int, int]]:
        sx, sy = self.chroma_shift()
        luma = (height, width)
        if self.chroma == "400":
            return [luma]
        chroma = ((height + (1 << sy) - 1) >> sy, (width + (1 << sx) - 1) >> sx)
        return [luma, chroma, chroma]

    @property
    def av_name(self) -> str:
        if self.chroma == "400":
            return "gray" if self.bit_depth == 8 else f"gray{self.bit_depth}le"
        base = f"yuv{self.chroma}p"
        return base if self.bit_depth == 8 else f"{base}{self.bit_depth}le"

    @property
    def y4m_tag(self) -> str:
        if self.chroma == "400":
            return "mono" if self.bit_depth == 8 else f"mono{self.bit_depth}"
        return self.chroma if self.bit_depth == 8 else f"{self.chroma}p{self.bit_depth}"


def pixel_format_from_av(name: str) -> PixelFormat:
    try:
        chroma, depth = _AV_FORMATS[name]
    except KeyError:
        raise FormatError(
            f"unsupported pixel format {name!r} (supported: {', '.join(SUPPORTED_AV_FORMATS)})"
        ) from None
    return PixelFormat(chroma, depth)


@dataclass
class VideoFrame:
    """One decoded picture: integer planes plus what the pipeline and the writers need to know."""

    planes: list[np.ndarray]
    fmt: PixelFormat
    index: int  # display order, 0-based
    pts: int | None = None
    time_base: Fraction | None = None
    pict_type: str | None = None  # "I", "P", "B" where known
    qp: int | None = None  # slice QP where known (bitstream or the HM hook)
    poc: int | None = None
    # Per-frame metadata to carry to the output (colour description, interlacing, ...).
    extra: dict | None = None

    @property
    def width(self) -> int:
        return self.planes[0].shape[1]

    @property
    def height(self) -> int:
        return self.planes[0].shape[0]

    def with_planes(self, planes: list[np.ndarray]) -> "VideoFrame":
        return replace(self, planes=planes)


def check_frame_size(width: int, height: int) -> None:
    if width < 2 or height < 2:
        raise FormatError(f"frame size {width}x{height} is too small (at least 2x2)")


def plane_to_float(plane: np.ndarray, fmt: PixelFormat) -> torch.Tensor:
    """One integer plane -> float32 [H, W] tensor in [0, 1] (samples / (2^bitdepth - 1))."""
    return torch.from_numpy(plane.astype(np.float32, copy=False)).mul_(1.0 / fmt.peak)


def float_to_plane(values: torch.Tensor, fmt: PixelFormat) -> np.ndarray:
    """Float [H, W] in [0, 1] -> integer plane: scaled, rounded half to even, clipped."""
    scaled = torch.round(values.detach().float() * fmt.peak).clamp_(0, fmt.peak)
    return scaled.to(torch.int32).numpy().astype(fmt.dtype)


def frames_to_luma_tensor(frames: list[VideoFrame]) -> torch.Tensor:
    """A temporal window of frames -> [1, T, 1, H, W] float32 luma."""
    planes = [plane_to_float(f.planes[0], f.fmt) for f in frames]
    return torch.stack(planes).unsqueeze(0).unsqueeze(2)


# BT.601 / BT.709 limited-range YCbCr <-> RGB, for RGB models. Chroma is upsampled by sample
# replication (nearest) and downsampled by 2x2 averaging; luma of an unchanged picture survives
# a round trip up to rounding.
_KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def _matrix(name: str) -> tuple[float, float]:
    return _KR_KB["bt709" if name == "bt709" else "bt601"]


def frames_to_rgb_tensor(frames: list[VideoFrame], matrix: str = "bt601") -> torch.Tensor:
    """A window of YUV frames -> [1, T, 3, H, W] float32 RGB in [0, 1] (limited-range input)."""
    kr, kb = _matrix(matrix)
    out = []
    for f in frames:
        if f.fmt.chroma == "400":
            raise FormatError("an RGB model needs colour input; got a gray (4:0:0) stream")
        sx, sy = f.fmt.chroma_shift()
        scale = float(1 << (f.fmt.bit_depth - 8))
        y = torch.from_numpy(f.planes[0].astype(np.float32)) / scale
        u, v = (torch.from_numpy(p.astype(np.float32)) / scale for p in f.planes[1:])
        u = u.repeat_interleave(1 << sy, 0).repeat_interleave(1 << sx, 1)[: f.height, : f.width]
        v = v.repeat_interleave(1 << sy, 0).repeat_interleave(1 << sx, 1)[: f.height, : f.width]
        yn = (y - 16.0) / 219.0
        pb = (u - 128.0) / 224.0
        pr = (v - 128.0) / 224.0
        r = yn + 2 * (1 - kr) * pr
        b = yn + 2 * (1 - kb) * pb
        g = (yn - kr * r - kb * b) / (1 - kr - kb)
        out.append(torch.stack([r, g, b]).clamp_(0, 1))
    return torch.stack(out).unsqueeze(0)


def rgb_tensor_to_planes(rgb: torch.Tensor, like: VideoFrame, matrix: str = "bt601") -> list[np.ndarray]:
    """[3, H, W] RGB in [0, 1] -> YUV planes in the format of `like` (limited range)."""
    kr, kb = _matrix(matrix)
    fmt = like.fmt
    r, g, b = rgb.float().clamp(0, 1)
    yn = kr * r + (1 - kr - kb) * g + kb * b
    pb = (b - yn) / (2 * (1 - kb))
    pr = (r - yn) / (2 * (1 - kr))
    sx, sy = fmt.chroma_shift()
    scale = float(1 << (fmt.bit_depth - 8))

    def sub(p: torch.Tensor) -> torch.Tensor:
        if sx or sy:
            h, w = p.shape
            ph, pw = (-h) % (1 << sy), (-w) % (1 << sx)
            p = torch.nn.functional.pad(p[None, None], (0, pw, 0, ph), mode="replicate")
            p = torch.nn.functional.avg_pool2d(p, (1 << sy, 1 << sx))[0, 0]
        return p

    def quant(p: torch.Tensor) -> np.ndarray:
        return torch.round(p * scale).clamp_(0, fmt.peak).to(torch.int32).numpy().astype(fmt.dtype)

    return [quant(16 + 219 * yn), quant(128 + 224 * sub(pb)), quant(128 + 224 * sub(pr))]
