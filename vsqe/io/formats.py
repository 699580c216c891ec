"""The one place that knows pixel formats.

Everything before this module sees planes of integer samples (uint8 / uint16 numpy arrays at the
stream's bit depth); everything after it sees float tensors in [0, 1]. Conversions back round to
the bit depth and clip, as the PowerVQE protocol does before measuring PSNR.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Literal

import numpy as np

from vsqe.errors import FormatError

if TYPE_CHECKING:
    import av
    import torch

# torch is imported inside the tensor conversions only: decoding, encoding and `vsqe eval` do not
# need it, and importing it costs seconds at start-up.

Chroma = Literal["400", "420", "422", "444"]

# PyAV / FFmpeg pixel format name -> (chroma layout, bit depth). Only planar YUV / gray formats:
# the models work on luma (or RGB converted from these), and passing chroma through untouched
# needs planar access. 4:2:2 and 4:4:4 as well, so that FFmpeg inputs take what y4m inputs take
# (and `vsqe run`'s own 4:2:2/4:4:4 outputs can be read back by vsqe).
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
    "yuv422p": ("422", 8),
    "yuvj422p": ("422", 8),
    "yuv422p10le": ("422", 10),
    "yuv422p12le": ("422", 12),
    "yuv422p16le": ("422", 16),
    "yuv444p": ("444", 8),
    "yuvj444p": ("444", 8),
    "yuv444p10le": ("444", 10),
    "yuv444p12le": ("444", 12),
    "yuv444p16le": ("444", 16),
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


# The largest frame vsqe accepts: 16384 on a side (above HEVC level 6.2's 16888-pixel limit only
# in theory) and 8192x8192 pixels in all (8K UHD is 7680x4320). A header claiming more (a damaged
# or hostile y4m: "W60000 H60000" is 5.4 GB per frame) is refused before anything is allocated.
MAX_FRAME_SIDE = 16384
MAX_FRAME_PIXELS = 8192 * 8192


def check_frame_size(width: int, height: int) -> None:
    if width < 2 or height < 2:
        raise FormatError(f"frame size {width}x{height} is too small (at least 2x2)")
    if width > MAX_FRAME_SIDE or height > MAX_FRAME_SIDE or width * height > MAX_FRAME_PIXELS:
        raise FormatError(
            f"frame size {width}x{height} is too large (at most {MAX_FRAME_SIDE} pixels on a side and "
            f"{MAX_FRAME_PIXELS} pixels in all, 8192x8192)"
        )


def plane_to_float(plane: np.ndarray, fmt: PixelFormat) -> torch.Tensor:
    """One integer plane -> float32 [H, W] tensor in [0, 1] (samples / (2^bitdepth - 1))."""
    import torch

    return torch.from_numpy(plane.astype(np.float32, copy=False)).mul_(1.0 / fmt.peak)


def float_to_plane(values: torch.Tensor, fmt: PixelFormat) -> np.ndarray:
    """Float [H, W] in [0, 1] -> integer plane: scaled, rounded half to even, clipped."""
    import torch

    scaled = torch.round(values.detach().float() * fmt.peak).clamp_(0, fmt.peak)
    return scaled.to(torch.int32).numpy().astype(fmt.dtype)


def frames_to_luma_tensor(frames: list[VideoFrame]) -> torch.Tensor:
    """A temporal window of frames -> [1, T, 1, H, W] float32 luma."""
    import torch

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
    import torch

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
    import torch

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


# --- bit depth -------------------------------------------------------------------------------------


def convert_bit_depth(plane: np.ndarray, from_depth: int, to_depth: int) -> np.ndarray:
    """Integer samples at one bit depth -> another, the way HM and the data README compare them.

    Down: (v + 2^(s-1)) >> s, clipped (a 10-bit VVC output against an 8-bit reference:
    (v + 2) >> 2). Up: v << s (exact). Same depth: the plane itself, no copy.
    """
    if from_depth == to_depth:
        return plane
    out_dtype = np.uint8 if to_depth <= 8 else np.uint16
    if from_depth > to_depth:
        shift = from_depth - to_depth
        wide = (plane.astype(np.uint32) + (1 << (shift - 1))) >> shift
        return np.minimum(wide, (1 << to_depth) - 1).astype(out_dtype)
    return (plane.astype(np.uint32) << (to_depth - from_depth)).astype(out_dtype)


# --- y4m colour-space tags -------------------------------------------------------------------------

# 8-bit 4:2:0 y4m tags name the chroma siting; higher depths use "420p10" etc. (FFmpeg's set).
_Y4M_420_SITING = {"420jpeg": "center", "420mpeg2": "left", "420paldv": "topleft", "420": None}
_Y4M_TAG = re.compile(r"^(?:(420|422|444)(?:p(\d+))?|mono(\d+)?)$")
SUPPORTED_Y4M_TAGS = "420jpeg, 420mpeg2, 420paldv, 420, 422, 444, mono and their p9..p16 / mono9..mono16 forms"


def pixel_format_from_y4m(tag: str | None) -> tuple[PixelFormat, str | None]:
    """A y4m `C` tag (None when absent: 420jpeg) -> (format, chroma location or None)."""
    tag = "420jpeg" if tag is None else tag
    if tag in _Y4M_420_SITING:
        return PixelFormat("420", 8), _Y4M_420_SITING[tag]
    m = _Y4M_TAG.match(tag)
    depth = int((m.group(2) or m.group(3) or 8)) if m else 0
    if not m or not 8 <= depth <= 16:
        raise FormatError(f"unsupported y4m colour space C{tag} (supported: {SUPPORTED_Y4M_TAGS})")
    return PixelFormat(m.group(1) or "400", depth), None


def y4m_tag_for(fmt: PixelFormat, chroma_location: str | None = None) -> str:
    """The y4m `C` tag for a format; 8-bit 4:2:0 keeps its chroma siting when known."""
    if fmt.chroma == "420" and fmt.bit_depth == 8:
        return {"left": "420mpeg2", "topleft": "420paldv"}.get(chroma_location or "", "420jpeg")
    return fmt.y4m_tag


def frame_nbytes(fmt: PixelFormat, width: int, height: int) -> int:
    """Bytes of one planar frame (y4m payload, raw .yuv frame)."""
    itemsize = np.dtype(fmt.dtype).itemsize
    return sum(h * w for h, w in fmt.plane_shapes(width, height)) * itemsize


# --- colour description ----------------------------------------------------------------------------

# FFmpeg's enum values (AVColorRange, AVColorSpace, AVColorPrimaries, AVColorTransferCharacteristic,
# AVChromaLocation; part of its ABI, the same as the ITU-T H.273 code points for the middle three)
# -> FFmpeg's names. 2 / 0 = unspecified is represented as None.
_RANGES = {1: "tv", 2: "pc"}
_MATRICES = {0: "gbr", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "ycgco",
             9: "bt2020nc", 10: "bt2020c", 11: "smpte2085", 12: "chroma-derived-nc",
             13: "chroma-derived-c", 14: "ictcp"}
_PRIMARIES = {1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film",
              9: "bt2020", 10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "ebu3213"}
_TRANSFERS = {1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear",
              9: "log100", 10: "log316", 11: "iec61966-2-4", 12: "bt1361e", 13: "iec61966-2-1",
              14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 17: "smpte428", 18: "arib-std-b67"}
_CHROMA_LOCS = {1: "left", 2: "center", 3: "topleft", 4: "top", 5: "bottomleft", 6: "bottom"}
_UNSPECIFIED = {"range": 0, "matrix": 2, "primaries": 2, "transfer": 2, "chroma_location": 0}


@dataclass(frozen=True)
class ColorInfo:
    """Colour description of a stream, FFmpeg names; None = unspecified."""

    range: str | None = None  # "tv" (limited) or "pc" (full)
    matrix: str | None = None
    primaries: str | None = None
    transfer: str | None = None
    chroma_location: str | None = None

    @classmethod
    def from_av(cls, obj: object) -> "ColorInfo":
        """From an av.VideoFrame (or anything with its color_* attributes)."""
        return cls(
            range=_RANGES.get(getattr(obj, "color_range", 0)),
            matrix=_MATRICES.get(getattr(obj, "colorspace", 2)),
            primaries=_PRIMARIES.get(getattr(obj, "color_primaries", 2)),
            transfer=_TRANSFERS.get(getattr(obj, "color_trc", 2)),
            chroma_location=_CHROMA_LOCS.get(getattr(obj, "chroma_location", 0)),
        )

    def av_values(self) -> dict[str, int]:
        """FFmpeg enum values, keyed by the av.VideoFrame / codec context attribute names."""

        def code(table: dict[int, str], name: str | None, field: str) -> int:
            return next((k for k, v in table.items() if v == name), _UNSPECIFIED[field])

        return {
            "color_range": code(_RANGES, self.range, "range"),
            "colorspace": code(_MATRICES, self.matrix, "matrix"),
            "color_primaries": code(_PRIMARIES, self.primaries, "primaries"),
            "color_trc": code(_TRANSFERS, self.transfer, "transfer"),
            "chroma_location": code(_CHROMA_LOCS, self.chroma_location, "chroma_location"),
        }

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in vars(self).items() if v is not None]
        return " ".join(parts) if parts else "unspecified"


# --- PyAV frames <-> planes ------------------------------------------------------------------------


def planes_from_av(frame: "av.VideoFrame", fmt: PixelFormat) -> list[np.ndarray]:
    """Views of an av.VideoFrame's planes (no copy): the decoder's buffer, rows cropped to width.

    The arrays keep the frame alive; treat them as read-only (the pipeline never writes in place).
    """
    out = []
    itemsize = np.dtype(fmt.dtype).itemsize
    for plane, (h, w) in zip(frame.planes, fmt.plane_shapes(frame.width, frame.height)):
        flat = np.frombuffer(plane, dtype=fmt.dtype)
        rows = flat[: h * (plane.line_size // itemsize)].reshape(h, plane.line_size // itemsize)
        out.append(rows[:, :w])
    return out


def planes_to_av(planes: list[np.ndarray], fmt: PixelFormat) -> "av.VideoFrame":
    """Integer planes -> a new av.VideoFrame in fmt (one copy, into the frame's own buffers)."""
    import av

    height, width = planes[0].shape
    frame = av.VideoFrame(width, height, fmt.av_name)
    itemsize = np.dtype(fmt.dtype).itemsize
    for src, plane in zip(planes, frame.planes):
        h, w = src.shape
        rows = np.frombuffer(plane, dtype=fmt.dtype).reshape(-1, plane.line_size // itemsize)
        rows[:h, :w] = src
    return frame
