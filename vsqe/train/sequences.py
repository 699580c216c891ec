"""Clip segments for training recurrent models (BasicVSR++): T consecutive frames of one encode
and the matching raw frames, from `vsqe data build` folders.

A recurrent network enhances every frame of the sequence it is given, so a sample is a sequence,
not a window: frames [t0, t0 + T) of one encode (T = `frames`, e.g. 7..15), a patch on the 8x8
grid, and the raw frames as T targets. Everything else is PatchSampler's: the clip weighted by its
pixels, the codec weights, the flat / untouched / no-edge rejection rules (applied to the middle
frame of the segment), flips / transpose / temporal reversal (of input and target together: the
network runs both directions anyway), and an RNG state that saves and restores exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vsqe.errors import InputError
from vsqe.train.dataset import PatchSampler


class SegmentSampler(PatchSampler):
    def __init__(self, data_dir: str | Path, frames: int = 7, **kwargs) -> None:
        if frames < 2:
            raise ValueError(f"a clip segment needs at least 2 frames, got {frames}")
        kwargs.setdefault("radius", 0)
        super().__init__(data_dir, **kwargs)
        self.frames = frames
        short = [c["id"] for c in self.clips if c["frames"] < frames]
        self.clips = [c for c in self.clips if c["frames"] >= frames]
        if not self.clips:
            raise InputError(f"no clip in {self.data_dir} has {frames} frames (shortest skipped: {short[:3]})")
        w = np.array([c["pixels"] for c in self.clips], dtype=np.float64)
        self.clip_p = w / w.sum()

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One (segment [T, P, P] uint8 decoded frames, target [T, P, P] uint8 raw frames)."""
        rng = self.rng
        p, n = self.patch, self.frames
        for _ in range(20):
            clip, raw, k, enc = self._draw_encode()
            t_len, h, w = raw.shape
            t0 = int(rng.integers(t_len - n + 1))
            y0, x0 = self._draw_origin(h, w)
            mid = t0 + n // 2
            if self._keep(np.asarray(raw[mid, y0 : y0 + p, x0 : x0 + p]), np.asarray(enc[mid, y0 : y0 + p, x0 : x0 + p])):
                break
        window = np.asarray(enc[t0 : t0 + n, y0 : y0 + p, x0 : x0 + p])
        target = np.asarray(raw[t0 : t0 + n, y0 : y0 + p, x0 : x0 + p])
        # augmentation: temporal reversal, flips, transpose (all keep the 8x8 grid phase); the
        # targets follow the inputs frame for frame.
        if rng.random() < 0.5:
            window, target = window[::-1], target[::-1]
        self.last = (clip["id"], k, t0)  # for tests and debugging
        return self._flip_stacks(window, target)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x [n, T, 1, P, P] float in [0, 1] (decoded), y [n, T, 1, P, P] (raw)."""
        return self._stacks_batch(n)
