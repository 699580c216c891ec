"""Real encoders for training pairs: x265 forced to the HM low-delay P QP schedule, and x264.

The x265 recipe is the one in /work/shared/data/README.md (the dev clips' `*_x265_ldp_qp37.hevc`):
a qpfile with `0 I qp`, then `i P q` with q = qp+3, qp+2, qp+3, qp+1 for i mod 4 = 1, 2, 3, 0
(QP 37: 40, 39, 40, 38 - HM-16.5's low-delay P GOP4 table).

`x265-ldp-hm` is the same encode with HM's rate-distortion weighting of the non-PQFs added. HM
codes them with QPFactor 0.4624 and, at GOP depth > 0, a further lambda x4 (Clip3(2, 4, (QP-12)/6)),
against QPFactor 0.578 for the PQF: the non-PQFs are starved of bits and mostly skipped, so quality
dips between PQFs more than the QP offsets alone make it. x265 takes lambda only per QP, through
`--lambda-file`; the schedule's QPs qp+2 and qp+3 are used by non-PQFs only, so scaling their
entries weights exactly those frames. x265 3.5 does not reproduce its own defaults from a
lambda file (tables of 2^(q/6-2) and 0.85 x its square code about 8% fewer bytes), so the factor
is calibrated on what HM does, not derived from its formula: HM_LAMBDA_FACTOR 1.5 gives
PQF-minus-non-PQF Y-PSNR gaps of 0.74 / 0.42 / 0.26 dB on the shared city / phone / birds clips
against HM's 0.65 / 0.39 / 0.20 (plain x265-ldp: 0.41 / 0.20 / 0.09; the formula's 3.2: 1.18 /
0.88 / 0.55). benchmarks/pqf_gap.py measures them; docs/training.md §10 has the table.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np

from vsqe.errors import InputError

CODECS = ("x265-ldp", "x265-ldp-hm", "x264")
_LDP_OFFSETS = {1: 3, 2: 2, 3: 3, 0: 1}
HM_LAMBDA_FACTOR = 1.5
_ENCODER = {"x265-ldp": "x265", "x265-ldp-hm": "x265", "x264": "x264"}
SCHEDULES = {
    "x265-ldp": "HM LDP GOP4 (I qp; P qp+3,+2,+3,+1)",
    "x265-ldp-hm": f"HM LDP GOP4 (I qp; P qp+3,+2,+3,+1), non-PQF lambda x{HM_LAMBDA_FACTOR}",
    "x264": "x264 --qp (I qp-3)",
}


def hm_lambda_file(qp: int, factor: float = HM_LAMBDA_FACTOR) -> str:
    """x265 `--lambda-file` text: x265's tables (lambda = 2^(q/6-2), lambda2 = 0.85 lambda^2),
    with the non-PQF QPs' (qp+2, qp+3) SSE lambda times `factor` (the SAD lambda times its root)."""
    lam = [round(2 ** (q / 6 - 2), 4) for q in range(70)]
    lam2 = [round(v * v * 0.85, 4) for v in lam]
    for q in (qp + 2, qp + 3):
        if q < 70:
            lam[q] *= factor ** 0.5
            lam2[q] *= factor
    return "# x265 lambda then lambda2, QP 0..69 (vsqe.data.codec.hm_lambda_file)\n" + \
        "\n".join(f"{v:.6f}" for v in lam + lam2) + "\n"


def ldp_qps(qp: int, frames: int) -> list[int]:
    """Per-frame QPs of the HM low-delay P GOP4 schedule for base QP `qp`."""
    return [qp if i == 0 else qp + _LDP_OFFSETS[i % 4] for i in range(frames)]


def x264_qps(qp: int, frames: int) -> list[int]:
    # x264 --qp Q: P frames at Q, the I frame at Q - 3 (ipratio 1.4 -> 6*log2(1.4) = 2.9).
    return [qp - 3 if i == 0 else qp for i in range(frames)]


def check_encoders(codecs: list[str]) -> None:
    for codec in codecs:
        exe = _ENCODER.get(codec)
        if exe is None:
            raise InputError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
        if shutil.which(exe) is None:
            raise InputError(f"{exe} not found; install it (apt-get install -y {exe})")


def encode(codec: str, y4m: Path, out_dir: Path, qp: int, frames: int) -> tuple[Path, list[int]]:
    """Encodes y4m with `codec`; returns (bitstream path, per-frame QPs)."""
    if codec in ("x265-ldp", "x265-ldp-hm"):
        qps = ldp_qps(qp, frames)
        qpfile = out_dir / "ldp.qpfile"
        qpfile.write_text("".join(f"{i} {'I' if i == 0 else 'P'} {q}\n" for i, q in enumerate(qps)))
        out = out_dir / "x265.hevc"
        cmd = [
            "x265", "--input", str(y4m), "--y4m", "--qpfile", str(qpfile), "--qp", str(qp),
            "--bframes", "0", "--keyint", "-1", "--no-scenecut", "--ref", "4", "--aq-mode", "0",
            "--no-cutree", "--no-weightp", "--tune", "psnr", "--frame-threads", "1",
            "--log-level", "error", "-o", str(out),
        ]
        if codec == "x265-ldp-hm":
            lambda_file = out_dir / "hm.lambda"
            lambda_file.write_text(hm_lambda_file(qp))
            cmd[-2:-2] = ["--lambda-file", str(lambda_file)]
    elif codec == "x264":
        qps = x264_qps(qp, frames)
        out = out_dir / "x264.264"
        cmd = [
            "x264", "--qp", str(qp), "--bframes", "0", "--keyint", "infinite", "--no-scenecut",
            "--tune", "psnr", "--threads", "1", "--quiet", "-o", str(out), str(y4m),
        ]
    else:
        raise InputError(f"unknown codec {codec!r}")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise InputError(f"{cmd[0]} failed: {msg[-1] if msg else 'no output'}")
    return out, qps


def decode_luma(path: Path) -> np.ndarray:
    """All frames' Y planes of a bitstream, [T, H, W] uint8, in display order."""
    planes = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.format.name not in ("yuv420p", "yuvj420p"):
                frame = frame.reformat(format="yuv420p")
            p = frame.planes[0]
            arr = np.frombuffer(p, dtype=np.uint8).reshape(p.height, p.line_size)[:, : frame.width]
            planes.append(arr.copy())
    if not planes:
        raise InputError(f"no frames decoded from {path}")
    return np.stack(planes)
