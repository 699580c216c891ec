"""PSNR as the QE papers measure it: per frame, per plane, peak = 2^bitdepth - 1, no border crop.

Enhanced output is compared after rounding to the stream's bit depth (the PowerVQE protocol); the
frame average of per-frame PSNRs is the clip figure (STDF-PyTorch, MFQEv2, PowerVQE).
"""
from __future__ import annotations

import math

import numpy as np

# A frame identical to its reference has infinite PSNR; papers cap or skip it. We cap at 100 dB so
# averages stay finite, and say so in reports.
PSNR_CAP_DB = 100.0


def mse(ref: np.ndarray, dist: np.ndarray) -> float:
    if ref.shape != dist.shape:
        raise ValueError(f"plane shapes differ: {ref.shape} vs {dist.shape}")
    diff = ref.astype(np.float64) - dist.astype(np.float64)
    return float(np.mean(diff * diff))


def psnr(ref: np.ndarray, dist: np.ndarray, peak: float) -> float:
    err = mse(ref, dist)
    if err == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / err))
