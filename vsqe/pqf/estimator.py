"""No-reference per-frame quality estimate, for streams whose QP cannot be read.

Two measures on the luma plane, both vectorised over all patches of a frame (numpy reshapes
and batched matmuls, no per-patch Python loop):

* `tchebichef_iqa`: the RBQE (ECCV 2020) Tchebichef-moment NR-IQA (research/models.md section 7).
  B x B patches on a grid shifted by B/2, so each straddles a coding-block edge at its centre;
  each patch is normalised (unit L2 norm, zero mean) and its 2-D discrete Tchebichef moments
  M = T p T^T taken. Textured patches (AC energy > 0.004) score sharpness, 1 - mean SSIM-like
  similarity of M to the moments of the 3x3-Gaussian (sigma 5) blurred patch; smooth patches
  score the absence of blocking from the energy share of the highest-order moment row and
  column (a step at the centre loads it, a ramp does not): 1 - log(1 - Q)/log(1 - 0.05) with Q
  clipped to 0.05. Frame quality = smooth^0.9 * textured^0.1, in [0, 1], higher is better.
  (Orientation note: we score "1 = no blocking" so that the product rises with quality.)
* `grid_blockiness`: mean absolute luma step across the 4- (or 8-) sample grid divided by the
  mean step elsewhere; 1 means no visible grid. The estimate is its negative (higher = better).

PQFs are local peaks of the estimate (vsqe.pqf.detect.pqfs_from_scores). docs/pqf.md reports
how well they match the QP-based PQFs and how the estimate correlates with true PSNR.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator

import numpy as np

from vsqe.errors import InputError

log = logging.getLogger("vsqe.pqf")

TEXTURE_THRESHOLD = 0.004
SIMILARITY_C = 1e-5
BLOCK_T = 0.05


def tchebichef_matrix(n: int) -> np.ndarray:
    """Orthonormal discrete Tchebichef polynomials t_0..t_{n-1} on x = 0..n-1 (rows).

    Built by Gram-Schmidt on the monomials, which yields exactly the normalised discrete
    Tchebichef basis (the orthonormal polynomials for the uniform weight on n points)."""
    x = np.arange(n, dtype=np.float64)
    basis = np.vander(x, n, increasing=True).T  # rows: x^0, x^1, ...
    q, _ = np.linalg.qr(basis.T)
    t = q.T
    # Fix signs: leading coefficient positive (t_k increasing for large x).
    for k in range(n):
        if t[k, -1] < 0:
            t[k] = -t[k]
    return t


def _patches(y: np.ndarray, block: int) -> np.ndarray:
    """Non-overlapping block x block patches on the grid shifted by block/2: (N, B, B)."""
    off = block // 2
    h, w = y.shape
    nh, nw = (h - off) // block, (w - off) // block
    if nh < 1 or nw < 1:
        return np.empty((0, block, block), dtype=np.float64)
    p = y[off : off + nh * block, off : off + nw * block]
    return p.reshape(nh, block, nw, block).transpose(0, 2, 1, 3).reshape(-1, block, block)


def _gaussian3(sigma: float) -> np.ndarray:
    g = np.exp(-(np.arange(-1, 2) ** 2) / (2 * sigma * sigma))
    k = np.outer(g, g)
    return k / k.sum()


def _blur_operator(block: int, sigma: float = 5.0) -> np.ndarray:
    """The 3x3 Gaussian blur of a block x block patch (edge samples replicated) as a matrix
    acting on the row-major vectorised patch."""
    k = _gaussian3(sigma)
    g = np.zeros((block * block, block * block))
    for i in range(block):
        for j in range(block):
            for dy in range(3):
                for dx in range(3):
                    si = min(max(i + dy - 1, 0), block - 1)
                    sj = min(max(j + dx - 1, 0), block - 1)
                    g[i * block + j, si * block + sj] += k[dy, dx]
    return g


def tchebichef_iqa(y: np.ndarray, block: int = 4) -> float:
    """RBQE-style quality in [0, 1] of one luma plane with values in [0, 1].

    Patches are handled as rows of an (N, B*B) matrix; the moment transform and the blur are
    (B*B x B*B) matrices, so a frame costs two GEMMs and a few elementwise passes."""
    p = _patches(np.asarray(y, dtype=np.float64), block).reshape(-1, block * block)
    if len(p) == 0:
        return 1.0
    t = tchebichef_matrix(block)
    moment_op = np.kron(t, t)  # vec(T p T^T) = (T kron T) vec(p)
    norm = np.sqrt(np.einsum("ij,ij->i", p, p))[:, None]
    p = np.divide(p, norm, out=np.zeros_like(p), where=norm > 0)
    p -= p.mean(axis=1, keepdims=True)
    m = p @ moment_op.T
    energy = np.einsum("ij,ij->i", m, m) - m[:, 0] ** 2
    textured = energy > TEXTURE_THRESHOLD

    # Textured patches: similarity of the moments to those of the blurred patch.
    if textured.any():
        mt = m[textured]
        mb = p[textured] @ (moment_op @ _blur_operator(block)).T
        sim = (2 * mt * mb + SIMILARITY_C) / (mt * mt + mb * mb + SIMILARITY_C)
        texture_score = float(np.mean(1.0 - sim.mean(axis=1)))
    else:
        texture_score = 1.0

    # Smooth patches: share of the highest-order row / column of moments.
    smooth = ~textured
    if smooth.any():
        ms = np.abs(m[smooth])
        denom = ms.sum(axis=1) - ms[:, 0] + SIMILARITY_C
        last_row = ms[:, (block - 1) * block :].sum(axis=1)
        last_col = ms[:, block - 1 :: block].sum(axis=1)
        qv = np.minimum(last_row / denom, BLOCK_T)
        qh = np.minimum(last_col / denom, BLOCK_T)
        blocking = np.log(1.0 - (qv + qh) / 2) / np.log(1.0 - BLOCK_T)
        smooth_score = float(np.mean(1.0 - blocking))
    else:
        smooth_score = 1.0
    return float(max(smooth_score, 0.0) ** 0.9 * max(texture_score, 0.0) ** 0.1)


def grid_blockiness(y: np.ndarray, grid: int = 4) -> float:
    """Mean |step| across grid lines over mean |step| between other columns/rows (1 = none)."""
    y = np.asarray(y, dtype=np.float64)
    dx = np.abs(np.diff(y, axis=1))  # dx[:, j] is the step between columns j and j+1
    dy = np.abs(np.diff(y, axis=0))
    on_x = (np.arange(dx.shape[1]) % grid) == grid - 1
    on_y = (np.arange(dy.shape[0]) % grid) == grid - 1
    at_grid = dx[:, on_x].sum() + dy[on_y, :].sum()
    n_grid = dx[:, on_x].size + dy[on_y, :].size
    off_grid = dx[:, ~on_x].sum() + dy[~on_y, :].sum()
    n_off = dx[:, ~on_x].size + dy[~on_y, :].size
    if n_grid == 0 or n_off == 0 or off_grid == 0:
        return 1.0
    return float((at_grid / n_grid) / (off_grid / n_off))


METHODS = ("tchebichef", "blockiness")


def frame_score(y: np.ndarray, method: str = "tchebichef") -> float:
    """Per-frame quality estimate, higher = better."""
    if method == "tchebichef":
        return tchebichef_iqa(y)
    if method == "blockiness":
        return -grid_blockiness(y)
    raise ValueError(f"unknown estimator {method!r} (one of {', '.join(METHODS)})")


def decode_luma(path: str | os.PathLike, max_frames: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """Luma planes of a video in display order, as (uint8/uint16 array, bit depth), via PyAV."""
    import av

    try:
        container = av.open(str(path))
    except (OSError, av.FFmpegError) as exc:
        raise InputError(f"{path}: cannot decode ({getattr(exc, 'strerror', None) or exc})") from None
    with container:
        if not container.streams.video:
            raise InputError(f"{path}: no video stream")
        stream = container.streams.video[0]
        try:
            for i, frame in enumerate(container.decode(stream)):
                if max_frames is not None and i >= max_frames:
                    break
                depth = frame.format.components[0].bits
                if frame.format.is_rgb or depth > 16:
                    raise InputError(f"{path}: unsupported pixel format {frame.format.name}")
                plane = frame.planes[0]
                dtype = np.uint8 if depth <= 8 else np.dtype("<u2")
                rows = np.frombuffer(plane, dtype=dtype).reshape(plane.height, -1)
                plane = rows[:, : plane.width]
                yield np.ascontiguousarray(plane), depth
        except av.FFmpegError as exc:
            # Frames decoded so far were yielded; a broken tail ends the sequence early.
            log.warning(f"{path}: decoding stopped early ({exc})")


def estimate_scores(path: str | os.PathLike, method: str = "tchebichef") -> list[float]:
    """Per-frame NR quality estimates of a whole video, in display order."""
    return [frame_score(plane.astype(np.float64) / ((1 << depth) - 1), method) for plane, depth in decode_luma(path)]
