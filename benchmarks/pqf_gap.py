"""How far quality dips between peak-quality frames (PQFs) in an encode: the mean Y-PSNR of the PQFs
(POC 4, 8, ...) minus that of the other P frames, for HM's dev streams and for vsqe's training
encoders on the same raw clips (docs/training.md §10; vsqe.data.codec's `x265-ldp-hm` factor).

  python benchmarks/pqf_gap.py [--codecs x265-ldp,x265-ldp-hm] [--qp 37]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from vsqe.data.codec import decode_luma, encode
from vsqe.train.validate import DEV_CLIPS, DEV_DIR, read_y4m_luma


def gap_and_psnr(raw: np.ndarray, dec: np.ndarray) -> tuple[float, float]:
    err = ((dec.astype(np.float64) - raw) ** 2).mean(axis=(1, 2))
    psnr = 10 * np.log10(255.0 ** 2 / err)
    poc = np.arange(len(psnr))
    gap = psnr[(poc > 0) & (poc % 4 == 0)].mean() - psnr[(poc > 0) & (poc % 4 != 0)].mean()
    return float(gap), float(psnr.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codecs", default="x265-ldp,x265-ldp-hm")
    ap.add_argument("--qp", type=int, default=37)
    a = ap.parse_args()
    print("| encode | " + " | ".join(f"{c} gap / Y-PSNR / bytes" for c in DEV_CLIPS) + " |")
    rows: dict[str, list[str]] = {"HM (dev stream)": []}
    for clip in DEV_CLIPS:
        y4m = DEV_DIR / f"{clip}.y4m"
        raw = read_y4m_luma(y4m).astype(np.float64)
        hm = DEV_DIR / f"{clip}_hm_ldp_qp{a.qp}.hevc"
        gap, mean = gap_and_psnr(raw, decode_luma(hm))
        rows["HM (dev stream)"].append(f"{gap:.3f} / {mean:.3f} / {hm.stat().st_size}")
        for codec in a.codecs.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                bitstream, _ = encode(codec, y4m, Path(tmp), a.qp, len(raw))
                gap, mean = gap_and_psnr(raw, decode_luma(bitstream))
                rows.setdefault(codec, []).append(f"{gap:.3f} / {mean:.3f} / {bitstream.stat().st_size}")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
