"""Peak-quality frame (PQF) detection: local quality peaks in display order.

One rule serves every signal (higher value = better quality):

* Runs of equal values (plateaus) are one unit; a plateau is a peak when it is strictly better
  than every frame within `radius` frames outside it, on each side that exists (the first and
  last frames of a clip are compared with their one side only). The PQF of a peak plateau is
  its first frame (the earliest frame at that quality: the least look-ahead for the scheduler).
* From PSNR (MFQEv2's labels, given a reference): radius 1, i.e. a frame better than both
  neighbours (MFQEv2 section 3: "PSNR higher than the previous and next frames").
* From QP (quality = -QP): radius 2. Radius 1 would also mark the QP-39 frames of HM's LDP
  GOP (40, 39, 40 around them), whose PSNR is not a peak: quality also decays along the GOP,
  so a one-step QP dip does not lift a frame above its neighbours. Radius 2 gives the I frame
  and POC 4, 8, 12, ... (QP 38) on HM LDP, POC 0, 8, 16, 24 (QP 39) on vvenc's GOP 8, and the
  layer-0/1/2 pictures (every 4th) of a hierarchical-B GOP.
"""
from __future__ import annotations

from typing import Sequence

PSNR_RADIUS = 1
QP_RADIUS = 2


def peak_flags(values: Sequence[float], radius: int = 1, plateau_cap: int | None = None) -> list[bool]:
    """True at the first frame of each plateau that beats every frame within `radius` outside it.

    plateau_cap: a plateau longer than this is judged on the frames before it only, so that a
    streaming caller knows each flag after a bounded delay (pipeline/pqf_schedule.py).
    """
    n = len(values)
    flags = [False] * n
    if n == 0:
        return flags
    if radius < 1:
        raise ValueError("radius must be at least 1")
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[j + 1] == values[i]:
            j += 1
        left = values[max(0, i - radius) : i]
        long_plateau = plateau_cap is not None and j - i + 1 > plateau_cap
        right = [] if long_plateau else values[j + 1 : j + 1 + radius]
        if all(v < values[i] for v in left) and all(v < values[i] for v in right):
            flags[i] = True
        i = j + 1
    return flags


def pqfs_from_qp(qps: Sequence[int | None], radius: int = QP_RADIUS) -> list[bool]:
    """PQF flags from per-frame QPs in display order; raises ValueError if a QP is unknown
    (the caller then falls back to the estimator)."""
    if any(q is None for q in qps):
        missing = [i for i, q in enumerate(qps) if q is None]
        raise ValueError(f"QP unknown for frames {missing[:10]}{'...' if len(missing) > 10 else ''}")
    return peak_flags([-float(q) for q in qps], radius)  # type: ignore[arg-type]


def pqfs_from_psnr(psnrs: Sequence[float], radius: int = PSNR_RADIUS) -> list[bool]:
    """MFQEv2 labels: frames whose PSNR beats their neighbours (needs the reference)."""
    return peak_flags(list(psnrs), radius)


def pqfs_from_scores(scores: Sequence[float], radius: int = QP_RADIUS) -> list[bool]:
    """PQF flags from a no-reference per-frame quality estimate (higher = better)."""
    return peak_flags(list(scores), radius)


def indices(flags: Sequence[bool]) -> list[int]:
    return [i for i, f in enumerate(flags) if f]


def precision_recall(predicted: Sequence[bool], truth: Sequence[bool]) -> tuple[float, float]:
    """Precision and recall of predicted PQF flags against reference flags (1.0 when empty)."""
    if len(predicted) != len(truth):
        raise ValueError("flag sequences differ in length")
    tp = sum(1 for p, t in zip(predicted, truth) if p and t)
    n_pred, n_true = sum(map(bool, predicted)), sum(map(bool, truth))
    return (tp / n_pred if n_pred else 1.0, tp / n_true if n_true else 1.0)
