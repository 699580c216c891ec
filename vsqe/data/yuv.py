"""R'G'B' -> Y'CbCr BT.601 limited range (16-235 / 16-240), 4:2:0, and raw y4m writing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

KR, KB = 0.299, 0.114


def rgb_to_yuv420(rgb: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[3, H, W] float R'G'B' in [0, 1] (H, W even) -> uint8 Y [H, W], Cb, Cr [H/2, W/2]."""
    rgb = rgb.clamp(0, 1)
    r, g, b = rgb[0], rgb[1], rgb[2]
    y = KR * r + (1 - KR - KB) * g + KB * b
    pb = (b - y) / (2 * (1 - KB))
    pr = (r - y) / (2 * (1 - KR))
    # Chroma sited between the luma rows/columns: 2x2 mean (what a 4:2:0 broadcast encoder does).
    pb = F.avg_pool2d(pb[None, None], 2)[0, 0]
    pr = F.avg_pool2d(pr[None, None], 2)[0, 0]

    def q(v: torch.Tensor) -> np.ndarray:
        return torch.round(v).clamp_(0, 255).to(torch.uint8).numpy()

    return q(16 + 219 * y), q(128 + 224 * pb), q(128 + 224 * pr)


def write_y4m(path: Path, frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]], fps: int = 25) -> None:
    h, w = frames[0][0].shape
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420mpeg2 XCOLORRANGE=LIMITED\n".encode())
        for y, u, v in frames:
            f.write(b"FRAME\n")
            f.write(np.ascontiguousarray(y).tobytes())
            f.write(np.ascontiguousarray(u).tobytes())
            f.write(np.ascontiguousarray(v).tobytes())
