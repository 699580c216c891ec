"""Helpers for the pqf tests: the real clips in ../shared/data (override with VSQE_SHARED_DATA)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

DATA = Path(os.environ.get("VSQE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
CLIPS = ("city_416x240", "phone_832x480", "birds_640x360")


def data_file(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"shared clip {path} not available")
    return path


def log_rows(name: str) -> list[dict[str, str]]:
    """The encoder-log CSV (poc, slice_type, qp, bits, y_psnr)."""
    with open(data_file(name), newline="") as f:
        return list(csv.DictReader(f))


def hm_qp(poc: int) -> int:
    """HM-16.5 LDP GOP4 at QP 37 (and x265 forced to it): I 37, then 40, 39, 40, 38 by POC mod 4."""
    return 37 if poc == 0 else {1: 40, 2: 39, 3: 40, 0: 38}[poc % 4]


def split_nals(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte string (without start codes)."""
    import io

    from vsqe.pqf.nal import iter_nal_units

    return [n.data for n in iter_nal_units(io.BytesIO(data))]


def join_nals(nals: list[bytes]) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


def encode(codec: str, path, frames: int = 24, size: tuple[int, int] = (96, 64), options: dict | None = None,
           pix_fmt: str = "yuv420p", container: str | None = None) -> None:
    """A small raw stream from moving noise through PyAV's encoders (libx264 / libx265)."""
    import av
    import numpy as np

    rng = np.random.default_rng(1)
    w, h = size
    base = rng.integers(0, 256, (h + 64, w + 64), dtype=np.uint8)
    fmt = {"libx264": "h264", "libx265": "hevc"}[codec]
    with av.open(str(path), "w", format=container or fmt) as out:
        s = out.add_stream(codec, rate=25, options=options or {})
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        for i in range(frames):
            y = np.ascontiguousarray(base[i : i + h, 2 * i : 2 * i + w])
            f = av.VideoFrame.from_ndarray(np.stack([y, y, y], -1), format="rgb24")
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def decoded_types(path) -> list[str]:
    import av

    with av.open(str(path)) as c:
        return [{1: "I", 2: "P", 3: "B"}.get(int(f.pict_type), "?") for f in c.decode(video=0)]
