"""The bad-input corpus, made at test time from the shared clips (nothing big is committed).

`build_corpus(folder, city_y4m)` writes every case into `folder` and returns {name: Case}. The
sources are small: a 96x64 crop of the first 8 frames of city_416x240.y4m, encoded with PyAV's
libx265 / libx264 (raw Annex-B) or written as y4m, so that every case that runs the model costs a
few 96x64 frames. Each Case says what the bytes are; the expected behaviour per front end lives in
the tests (tests/hardening/test_bad_inputs.py) and in docs/reliability.md.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vsqe.io.decode import open_video
from vsqe.io.formats import PixelFormat, VideoFrame
from vsqe.io.y4m import Y4MWriter
from vsqe.pqf.nal import iter_nal_units

W, H = 96, 64  # the crop every generated stream is made from
FRAMES = 8


@dataclass(frozen=True)
class Case:
    path: Path
    ref: Path | None  # the matching reference for `vsqe eval` (same size and frame count), if any
    what: str  # one line for docs/reliability.md


# --- sources ---------------------------------------------------------------------------------------


def _city_frames(city_y4m: Path, n: int) -> list[VideoFrame]:
    with open_video(city_y4m) as reader:
        return [VideoFrame(planes=[p.copy() for p in f.planes], fmt=f.fmt, index=f.index, pts=f.pts,
                           time_base=f.time_base) for _, f in zip(range(n), reader)]


def _crop(frame: VideoFrame, x: int = 160, y: int = 80, w: int = W, h: int = H) -> list[np.ndarray]:
    yy, u, v = frame.planes
    return [yy[y:y + h, x:x + w].copy(), u[y // 2:(y + h) // 2, x // 2:(x + w) // 2].copy(),
            v[y // 2:(y + h) // 2, x // 2:(x + w) // 2].copy()]


def _av_frame(planes: list[np.ndarray], fmt: str) -> av.VideoFrame:
    h, w = planes[0].shape
    frame = av.VideoFrame(w, h, fmt)
    for src, plane in zip(planes, frame.planes):
        dtype = src.dtype
        rows = np.frombuffer(plane, dtype).reshape(-1, plane.line_size // dtype.itemsize)
        rows[: src.shape[0], : src.shape[1]] = src
    return frame


def _to_format(planes: list[np.ndarray], fmt: str) -> list[np.ndarray]:
    """8-bit 4:2:0 planes -> planes of `fmt` (yuv420p10le, yuv422p, yuv444p, ...) via swscale."""
    frame = _av_frame(planes, "yuv420p").reformat(format=fmt)
    dtype = np.uint16 if "le" in fmt else np.uint8
    out = []
    for plane, (h, w) in zip(frame.planes, [(plane.height, plane.width) for plane in frame.planes]):
        rows = np.frombuffer(plane, dtype).reshape(-1, plane.line_size // np.dtype(dtype).itemsize)
        out.append(rows[:h, :w].copy())
    return out


def encode(path: Path, frames: list[list[np.ndarray]], codec: str, pix_fmt: str = "yuv420p",
           muxer: str | None = None, pts: list[int] | None = None, time_base: Fraction = Fraction(1, 25),
           options: dict[str, str] | None = None, gop: int = 4) -> Path:
    """Encodes planes with PyAV (libx265 / libx264 / ffv1) into a raw stream or a container."""
    opts = {"preset": "ultrafast", "qp": "32", **(options or {})}
    if codec == "libx265":
        opts["x265-params"] = "log-level=error:bframes=0"  # low delay, as the papers' streams
    if codec == "libx264":
        opts["bf"] = "0"
    if codec == "ffv1":
        opts = {}
    with av.open(str(path), "w", format=muxer) as out:
        stream = out.add_stream(codec, rate=25)
        h, w = frames[0][0].shape
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        stream.options = opts
        stream.codec_context.gop_size = gop  # an I frame every `gop` frames: cuts land in every part
        for i, planes in enumerate(frames):
            frame = _av_frame(planes, pix_fmt)
            frame.pts = pts[i] if pts is not None else i
            frame.time_base = time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_y4m(path: Path, frames: list[list[np.ndarray]], fmt: PixelFormat, rate: Fraction = Fraction(25)) -> Path:
    h, w = frames[0][0].shape
    with open(path, "wb") as f:
        writer = Y4MWriter(f, w, h, fmt, rate)
        for i, planes in enumerate(frames):
            writer.write(VideoFrame(planes=planes, fmt=fmt, index=i))
    return path


# --- NAL surgery -----------------------------------------------------------------------------------


def split_nals(data: bytes) -> list[bytes]:
    return [n.data for n in iter_nal_units(io.BytesIO(data))]


def join_nals(nals: list[bytes]) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


def nal_kind(codec: str, nal: bytes) -> str:
    """'param' (VPS/SPS/PPS), 'slice' (VCL) or 'other'."""
    if codec == "hevc":
        t = (nal[0] >> 1) & 0x3F
        return "param" if t in (32, 33, 34) else "slice" if t < 32 else "other"
    t = nal[0] & 0x1F
    return "param" if t in (7, 8) else "slice" if 1 <= t <= 5 else "other"


def drop_parameter_sets(data: bytes, codec: str) -> bytes:
    return join_nals([n for n in split_nals(data) if nal_kind(codec, n) != "param"])


def flip_slice_bytes(data: bytes, codec: str, seed: int, per_slice: int = 6, skip: int = 24) -> bytes:
    """XORs random bytes of every slice NAL's payload beyond its first `skip` bytes (the header
    survives, the CABAC data does not); never creates a start code."""
    rng = random.Random(seed)
    out = []
    for nal in split_nals(data):
        if nal_kind(codec, nal) == "slice" and len(nal) > skip + 8:
            b = bytearray(nal)
            for _ in range(per_slice):
                pos = rng.randrange(skip, len(b))
                b[pos] = (b[pos] ^ (1 << rng.randrange(8))) or 0x55
            # Keep the Annex-B framing intact: no 00 00 may appear in the changed part.
            tail = bytearray(bytes(b[skip:]).replace(b"\x00\x00", b"\x00\x55"))
            if tail[:1] == b"\x00":
                tail[0] = 0x55
            nal = bytes(b[:skip]) + bytes(tail)
        out.append(nal)
    return join_nals(out)


# --- the corpus ------------------------------------------------------------------------------------


def build_corpus(folder: Path, city_y4m: Path) -> dict[str, Case]:
    folder.mkdir(parents=True, exist_ok=True)
    city = _city_frames(city_y4m, FRAMES)
    crops = [_crop(f) for f in city]
    small_crops = [_crop(f, 40, 40, 64, 48) for f in city]
    cases: dict[str, Case] = {}

    def add(name: str, what: str, ref: Path | None = None) -> Path:
        cases[name] = Case(folder / name, ref, what)
        return folder / name

    f8 = PixelFormat("420", 8)
    ref = write_y4m(folder / "ref_96x64.y4m", crops, f8)
    hevc = encode(folder / "good.hevc", crops, "libx265", muxer="hevc")
    h264 = encode(folder / "good.264", crops, "libx264", muxer="h264")
    add("good.hevc", "intact 96x64 8-frame HEVC (x265), the control case", ref)
    hevc_bytes, h264_bytes = hevc.read_bytes(), h264.read_bytes()

    (folder / "empty.hevc").write_bytes(b"")
    add("empty.hevc", "zero bytes")
    (folder / "empty.y4m").write_bytes(b"")
    add("empty.y4m", "zero bytes, .y4m name")
    for pct in (10, 50, 90):
        (folder / f"cut{pct}.hevc").write_bytes(hevc_bytes[: len(hevc_bytes) * pct // 100])
        add(f"cut{pct}.hevc", f"the HEVC stream cut at {pct}% of its bytes", ref)
    (folder / "cut50.264").write_bytes(h264_bytes[: len(h264_bytes) // 2])
    add("cut50.264", "the H.264 stream cut at 50%", ref)
    mkv = encode(folder / "good.mkv", crops, "libx264", muxer="matroska").read_bytes()
    (folder / "good.mkv").unlink()
    (folder / "cut50.mkv").write_bytes(mkv[: len(mkv) // 2])
    add("cut50.mkv", "H.264 in Matroska cut at 50%: inside the first cluster, no frame is left", ref)
    (folder / "cut75.mkv").write_bytes(mkv[: len(mkv) * 3 // 4])
    add("cut75.mkv", "H.264 in Matroska cut at 75% (the header still declares the full duration)", ref)
    y4m_bytes = ref.read_bytes()
    (folder / "cut50.y4m").write_bytes(y4m_bytes[: len(y4m_bytes) // 2])
    add("cut50.y4m", "the y4m reference cut at 50% (inside frame 3)", ref)
    (folder / "flip.hevc").write_bytes(flip_slice_bytes(hevc_bytes, "hevc", seed=1))
    add("flip.hevc", "random bit flips in every slice's data (headers intact)", ref)
    (folder / "flip.264").write_bytes(flip_slice_bytes(h264_bytes, "h264", seed=2))
    add("flip.264", "random bit flips in every slice's data (headers intact)", ref)
    (folder / "noparams.hevc").write_bytes(drop_parameter_sets(hevc_bytes, "hevc"))
    add("noparams.hevc", "VPS/SPS/PPS NAL units removed", ref)
    (folder / "noparams.264").write_bytes(drop_parameter_sets(h264_bytes, "h264"))
    add("noparams.264", "SPS/PPS NAL units removed", ref)

    (folder / "text.mkv").write_text("this is not a video\n" * 50)
    add("text.mkv", "a text file named .mkv")
    png = folder / "still.png"
    av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24").to_image().save(png)
    add("still.png", "a PNG image")
    audio = folder / "audio.mka"
    with av.open(str(audio), "w") as out:
        stream = out.add_stream("flac", rate=8000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    add("audio.mka", "audio only (FLAC in Matroska)")

    # Odd sizes: 417x241 (chroma 209x121) from a resize of the city frames.
    odd = []
    for f in city[:1]:
        frame = _av_frame(f.planes, "yuv420p").reformat(width=417, height=241, format="yuv420p")
        odd.append([np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: p.height, : p.width].copy()
                    for p in frame.planes])
    odd_ref = write_y4m(folder / "odd_417x241.y4m", odd, f8)
    add("odd_417x241.y4m", "417x241 4:2:0 (odd luma, 209x121 chroma), 1 frame", odd_ref)
    encode(folder / "odd_417x241.mkv", odd, "ffv1", muxer="matroska")
    add("odd_417x241.mkv", "417x241 4:2:0 FFV1 in Matroska, 1 frame", odd_ref)

    # Bit depth and chroma layouts.
    encode(folder / "10bit.hevc", [_to_format(c, "yuv420p10le") for c in crops[:4]], "libx265",
           pix_fmt="yuv420p10le", muxer="hevc")
    add("10bit.hevc", "10-bit 4:2:0 HEVC (x265 Main10)")
    encode(folder / "422.mkv", [_to_format(c, "yuv422p") for c in crops[:4]], "libx264",
           pix_fmt="yuv422p", muxer="matroska")
    add("422.mkv", "4:2:2 H.264 (x264 High 4:2:2) in Matroska")
    encode(folder / "444.hevc", [_to_format(c, "yuv444p") for c in crops[:4]], "libx265",
           pix_fmt="yuv444p", muxer="hevc")
    add("444.hevc", "4:4:4 HEVC (x265 RExt)")
    write_y4m(folder / "422.y4m", [_to_format(c, "yuv422p") for c in crops[:3]], PixelFormat("422", 8))
    add("422.y4m", "4:2:2 8-bit y4m, 3 frames")
    write_y4m(folder / "444p10.y4m", [_to_format(c, "yuv444p10le") for c in crops[:3]], PixelFormat("444", 10))
    add("444p10.y4m", "4:4:4 10-bit y4m, 3 frames")

    # Variable frame rate: irregular pts in Matroska (ms time base).
    vfr_pts = [0, 40, 120, 130, 250, 260, 400, 440]
    encode(folder / "vfr.mkv", crops, "libx264", muxer="matroska", pts=vfr_pts, time_base=Fraction(1, 1000))
    add("vfr.mkv", "variable frame rate: pts 0, 40, 120, 130, 250, 260, 400, 440 ms", ref)

    # A stream whose size changes midway: two Annex-B streams of different sizes, concatenated.
    second = encode(folder / "part2.hevc", small_crops[:4], "libx265", muxer="hevc")
    (folder / "sizechange.hevc").write_bytes(
        encode(folder / "part1.hevc", crops[:4], "libx265", muxer="hevc").read_bytes() + second.read_bytes())
    (folder / "part1.hevc").unlink()
    second.unlink()
    add("sizechange.hevc", "96x64 for 4 frames, then 64x48 (two streams concatenated)")

    # Shorter than STDF's 7-frame window.
    ref1 = write_y4m(folder / "ref1.y4m", crops[:1], f8)
    ref2 = write_y4m(folder / "ref2.y4m", crops[:2], f8)
    encode(folder / "one.hevc", crops[:1], "libx265", muxer="hevc")
    add("one.hevc", "1 frame", ref1)
    encode(folder / "two.264", crops[:2], "libx264", muxer="h264")
    add("two.264", "2 frames", ref2)
    add("ref1.y4m", "1 frame, y4m", ref1)

    # A header that claims 60000x60000 (5.4 GB per frame), followed by a few bytes.
    (folder / "huge.y4m").write_bytes(b"YUV4MPEG2 W60000 H60000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(4096))
    add("huge.y4m", "y4m header claiming 60000x60000")
    return cases
