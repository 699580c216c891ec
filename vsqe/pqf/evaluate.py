"""Accuracy of the no-reference estimator against the bitstream QPs and the true PSNR.

    python -m vsqe.pqf.evaluate ../shared/data        # the table in docs/pqf.md

For every compressed clip with a NAME.y4m reference beside it: per-frame Y-PSNR, the QP-based
PQFs (the bitstream parsers), the estimator's per-frame scores, the Spearman correlation of the
scores with PSNR, and the precision/recall of the estimator's PQFs against the QP-based PQFs.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsqe.eval.psnr import psnr
from vsqe.pqf.detect import QP_RADIUS, pqfs_from_qp, pqfs_from_scores, precision_recall
from vsqe.pqf.estimator import METHODS, decode_luma, frame_score
from vsqe.pqf.stream import display_pictures, read_pictures


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x: list[float]) -> np.ndarray:
        x_arr = np.asarray(x, dtype=np.float64)
        order = np.argsort(x_arr, kind="mergesort")
        r = np.empty(len(x_arr))
        r[order] = np.arange(len(x_arr))
        for v in np.unique(x_arr):  # average the ranks of ties
            tie = x_arr == v
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def luma_psnr(ref: np.ndarray, ref_depth: int, dist: np.ndarray, dist_depth: int) -> float:
    """Y-PSNR at the reference's bit depth; a deeper decode is rounded down to it (as the
    shared psnr.txt does for 10-bit VVC output)."""
    d = dist.astype(np.int64)
    if dist_depth > ref_depth:
        shift = dist_depth - ref_depth
        d = np.clip((d + (1 << (shift - 1))) >> shift, 0, (1 << ref_depth) - 1)
    elif dist_depth < ref_depth:
        d = d << (ref_depth - dist_depth)
    return psnr(ref, d, (1 << ref_depth) - 1)


@dataclass
class ClipResult:
    name: str
    frames: int
    qp_pqfs: list[int]
    psnr: list[float]
    scores: dict[str, list[float]]


def evaluate_clip(stream: Path, ref: Path) -> ClipResult:
    pics = display_pictures(read_pictures(stream))
    qp_flags = pqfs_from_qp([p.qp for p in pics])
    psnrs: list[float] = []
    scores: dict[str, list[float]] = {m: [] for m in METHODS}
    for (r, rd), (d, dd) in zip(decode_luma(ref), decode_luma(stream)):
        psnrs.append(luma_psnr(r, rd, d, dd))
        y = d.astype(np.float64) / ((1 << dd) - 1)
        for m in METHODS:
            scores[m].append(frame_score(y, m))
    return ClipResult(stream.name, len(psnrs), [i for i, f in enumerate(qp_flags) if f], psnrs, scores)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="folder with NAME.y4m and NAME_*.{hevc,266,264}")
    args = ap.parse_args(argv)
    streams = sorted(p for p in args.data.iterdir() if p.suffix in (".hevc", ".266", ".264"))
    print("| stream | method | Spearman(score, PSNR) | PQF precision r1 / r2 | PQF recall r1 / r2 |")
    print("|---|---|---|---|---|")
    totals: dict[str, list[tuple[float, float, float, float, float]]] = {m: [] for m in METHODS}
    for s in streams:
        ref = args.data / (s.name.split("_")[0] + "_" + s.name.split("_")[1] + ".y4m")
        if not ref.exists():
            continue
        res = evaluate_clip(s, ref)
        truth = [i in res.qp_pqfs for i in range(res.frames)]
        for m, sc in res.scores.items():
            rho = spearman(sc, res.psnr)
            p1, r1 = precision_recall(pqfs_from_scores(sc, 1), truth)
            p2, r2 = precision_recall(pqfs_from_scores(sc, QP_RADIUS), truth)
            totals[m].append((rho, p1, p2, r1, r2))
            print(f"| {s.name} | {m} | {rho:.2f} | {p1:.2f} / {p2:.2f} | {r1:.2f} / {r2:.2f} |")
        sys.stdout.flush()
    for m, rows in totals.items():
        if rows:
            a = np.nanmean(np.array(rows), axis=0)
            print(f"| **mean** | {m} | {a[0]:.2f} | {a[1]:.2f} / {a[2]:.2f} | {a[3]:.2f} / {a[4]:.2f} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    raise SystemExit(main())
