"""Seed inputs for the fuzz targets, made from the shared clips (nothing is committed).

    .venv/bin/python fuzz/seeds.py build/fuzz/seeds [SHARED_DATA]

pqf_*: the first few kilobytes of every shared raw stream of the codec (parameter sets, SEI and
the first slices: what the parsers read), whole small streams made with PyAV (x264/x265 with
B-frames, several slices, 10-bit, 4:4:4 -- more syntax paths than the shared LDP streams), and
cuts at NAL boundaries. y4m: small headers in every colour space, with one or two frames.
"""
from __future__ import annotations

import io
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vsqe.io.formats import PixelFormat, VideoFrame  # noqa: E402
from vsqe.io.y4m import Y4MWriter  # noqa: E402
from vsqe.pqf.nal import iter_nal_units  # noqa: E402

SUFFIX = {"pqf_h264": ".264", "pqf_hevc": ".hevc", "pqf_vvc": ".266"}


def _encode(codec: str, options: dict[str, str], pix_fmt: str = "yuv420p", frames: int = 6,
            size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with av.open(buf, "w", format="h264" if codec == "libx264" else "hevc") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], pix_fmt
        stream.options = options
        base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        for i in range(frames):
            img = np.roll(base, 2 * i, axis=1)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _nal_cut(data: bytes, count: int) -> bytes:
    nals = list(iter_nal_units(io.BytesIO(data)))
    if len(nals) <= count:
        return data
    return data[: nals[count].offset - 4]


def pqf_seeds(shared: Path) -> dict[str, dict[str, bytes]]:
    seeds: dict[str, dict[str, bytes]] = {t: {} for t in SUFFIX}
    for target, suffix in SUFFIX.items():
        for path in sorted(shared.glob(f"*{suffix}")):
            data = path.read_bytes()
            seeds[target][f"{path.stem}_head"] = _nal_cut(data, 8)[:16384]
            seeds[target][f"{path.stem}_cut"] = _nal_cut(data, 12)[:32768]
    x264 = {"preset": "ultrafast", "qp": "30"}
    seeds["pqf_h264"]["bframes"] = _encode("libx264", {"preset": "medium", "bf": "3", "qp": "28"})
    seeds["pqf_h264"]["slices"] = _encode("libx264", {**x264, "slices": "3"})
    seeds["pqf_h264"]["cavlc_interlaced"] = _encode("libx264", {**x264, "coder": "0", "flags": "+ilme+ildct"})
    seeds["pqf_h264"]["high10"] = _encode("libx264", x264, pix_fmt="yuv420p10le")
    seeds["pqf_h264"]["high444"] = _encode("libx264", x264, pix_fmt="yuv444p")
    x265 = {"preset": "ultrafast", "qp": "30"}
    quiet = "log-level=error"
    seeds["pqf_hevc"]["bframes_open_gop"] = _encode(
        "libx265", {"preset": "medium", "x265-params": f"{quiet}:bframes=3:keyint=4:open-gop=1"})
    seeds["pqf_hevc"]["slices_tiles"] = _encode(
        "libx265", {**x265, "x265-params": f"{quiet}:slices=2"}, size=(128, 96))
    seeds["pqf_hevc"]["main10"] = _encode("libx265", {**x265, "x265-params": quiet}, pix_fmt="yuv420p10le")
    seeds["pqf_hevc"]["rext444"] = _encode("libx265", {**x265, "x265-params": quiet}, pix_fmt="yuv444p")
    seeds["pqf_hevc"]["weightp_sao"] = _encode(
        "libx265", {"preset": "slow", "x265-params": f"{quiet}:weightp=1:sao=1:bframes=2"})
    return seeds


def y4m_seeds() -> dict[str, bytes]:
    seeds = {}
    rng = np.random.default_rng(1)
    for tag, fmt in [("420", PixelFormat("420", 8)), ("420p10", PixelFormat("420", 10)),
                     ("422", PixelFormat("422", 8)), ("444p16", PixelFormat("444", 16)),
                     ("mono", PixelFormat("400", 8)), ("mono12", PixelFormat("400", 12))]:
        w, h = (5, 3) if "mono" not in tag else (4, 2)
        buf = io.BytesIO()
        writer = Y4MWriter(buf, w, h, fmt, Fraction(30000, 1001))
        for i in range(2):
            planes = [rng.integers(0, fmt.peak + 1, s, dtype=np.uint32).astype(fmt.dtype) for s in fmt.plane_shapes(w, h)]
            writer.write(VideoFrame(planes=planes, fmt=fmt, index=i))
        seeds[tag] = buf.getvalue()
    seeds["params"] = b"YUV4MPEG2 W4 H2 F25:1 It A1:1 C420paldv XCOLORRANGE=FULL XYSCSS=420\nFRAME Ixyz\n" + bytes(12)
    return seeds


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "build" / "fuzz" / "seeds")
    shared = Path(sys.argv[2] if len(sys.argv) > 2 else REPO.parent / "shared" / "data")
    all_seeds = pqf_seeds(shared)
    all_seeds["y4m"] = y4m_seeds()
    for target, seeds in all_seeds.items():
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (folder / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds in {folder}")


if __name__ == "__main__":
    main()
