"""Photos -> short clips by a smooth synthetic camera motion (pan, zoom, slight rotation).

Each frame is an affine warp of the photo rendered with bicubic sampling at twice the output
resolution from a Lanczos-reduced copy (so no aliasing), then box-filtered 2x down: a slightly soft,
camera-like picture. Optional foreground patches (cut from elsewhere in the photo, soft-edged) move
on their own paths, giving local motion and occlusions.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _lanczos_reduce(img: Image.Image, scale: float) -> Image.Image:
    if scale >= 1.0:
        return img
    w, h = img.size
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)


def gaussian_blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W] (reflect padding), sigma in pixels.

    Stands in for a camera's optics: a photo reduced 2-4x has texture up to the Nyquist limit,
    which no codec keeps at QP 37 and no network can restore, so the error to learn would be
    mostly lost texture. Camera footage (the dev clips) is softer; its QP 37 error is mostly
    ringing and blocking at edges, which is what a QE network can remove.
    """
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=frames.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = frames.shape[1]
    out = F.pad(frames, (r, r, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, r, r), mode="reflect")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def motion_clip(
    img: Image.Image,
    out_w: int,
    out_h: int,
    frames: int,
    rng: np.random.Generator,
    foreground: bool = True,
    blur_sigma: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """Renders [T, 3, out_h, out_w] float R'G'B' in [0, 1] and returns (clip, motion parameters).

    Tries a few random camera paths; each retry shrinks the crop scale and drops rotation.
    """
    last: Exception | None = None
    shrink = 1.0
    for attempt in range(6):
        try:
            return _motion_clip(
                img, out_w, out_h, frames, rng, foreground, shrink, allow_rot=attempt < 2, blur_sigma=blur_sigma
            )
        except ValueError as exc:
            if "too small" in str(exc):
                raise
            last = exc
            shrink *= 0.75
    raise ValueError(str(last))


def _motion_clip(
    img: Image.Image,
    out_w: int,
    out_h: int,
    frames: int,
    rng: np.random.Generator,
    foreground: bool,
    shrink: float,
    allow_rot: bool,
    blur_sigma: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    src_w, src_h = img.size
    # Output pixels per source pixel: between "whole photo" and a 1:1.5 crop, never upscaling.
    fit = min(src_w / out_w, src_h / out_h)  # how many source px per output px at full view
    if fit < 1.15:
        raise ValueError(f"photo {src_w}x{src_h} too small for {out_w}x{out_h} clips")
    # Source px per output px: from 1.5 (a detailed crop) to 0.85 * fit (nearly the whole frame).
    # Biased to strong downscaling (dense texture, like the dev clips); `shrink` on retries.
    hi = 0.85 * fit * shrink
    lo = min(max(1.5, 0.3 * fit), hi)
    s = max(1.0, float(math.exp(rng.uniform(math.log(lo), math.log(max(lo, hi))))))
    # Work image: source reduced so that 2x-oversampled rendering is close to 1:1.
    work_scale = min(1.0, 2.0 / s)
    work = _lanczos_reduce(img, work_scale)
    ww, wh = work.size
    s_work = s * work_scale  # work px per output px
    t = torch.from_numpy(np.array(work, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)[None]

    # Motion: constant velocity + a gentle sinusoid (hand-held sway), zoom and rotation drift.
    speed = rng.uniform(0.2, 4.0)  # output px per frame
    angle = rng.uniform(0, 2 * math.pi)
    vx, vy = speed * math.cos(angle), speed * math.sin(angle)
    sway_amp, sway_f, sway_ph = rng.uniform(0, 1.5), rng.uniform(0.05, 0.25), rng.uniform(0, 2 * math.pi)
    zoom_rate = rng.uniform(-0.006, 0.006) if rng.random() < 0.5 else 0.0
    rot_rate = math.radians(rng.uniform(-0.15, 0.15)) if allow_rot and rng.random() < 0.4 else 0.0
    # Centre path must stay inside the work image with the zoomed, rotated footprint.
    half_w, half_h = out_w * s_work / 2, out_h * s_work / 2
    max_zoom = math.exp(abs(zoom_rate) * frames)
    reach = math.hypot(half_w, half_h) * max_zoom if rot_rate else max(half_w, half_h) * max_zoom
    path_x = [vx * i + sway_amp * math.sin(sway_f * i + sway_ph) for i in range(frames)]
    path_y = [vy * i + sway_amp * math.cos(0.7 * sway_f * i + sway_ph) for i in range(frames)]
    span_x = (max(path_x) - min(path_x)) * s_work
    span_y = (max(path_y) - min(path_y)) * s_work
    ext_x = (half_w * max_zoom if not rot_rate else reach) + 2
    ext_y = (half_h * max_zoom if not rot_rate else reach) + 2
    free_x, free_y = ww - 2 * ext_x - span_x, wh - 2 * ext_y - span_y
    if free_x < 0 or free_y < 0:
        # Too much motion for this crop: slow down to fit.
        shrink = max(0.05, min((ww - 2 * ext_x) / max(span_x, 1e-6), (wh - 2 * ext_y) / max(span_y, 1e-6), 1.0))
        if ww - 2 * ext_x < 0 or wh - 2 * ext_y < 0:
            raise ValueError("crop does not fit the photo")
        path_x = [p * shrink for p in path_x]
        path_y = [p * shrink for p in path_y]
        span_x, span_y = span_x * shrink, span_y * shrink
        free_x, free_y = max(0.0, ww - 2 * ext_x - span_x), max(0.0, wh - 2 * ext_y - span_y)
    x0 = ext_x + rng.uniform(0, free_x) - min(path_x) * s_work
    y0 = ext_y + rng.uniform(0, free_y) - min(path_y) * s_work

    # Oversampled output grid (2x), in output pixel units centred on the frame centre.
    gh, gw = 2 * out_h, 2 * out_w
    ys = (torch.arange(gh, dtype=torch.float64) + 0.5) / 2 - out_h / 2
    xs = (torch.arange(gw, dtype=torch.float64) + 0.5) / 2 - out_w / 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")

    fg = None
    if foreground and rng.random() < 0.5:
        fsz = int(rng.uniform(0.15, 0.35) * min(out_w, out_h) * s_work)
        fx = rng.uniform(0, ww - fsz)
        fy = rng.uniform(0, wh - fsz)
        patch = t[:, :, int(fy) : int(fy) + fsz, int(fx) : int(fx) + fsz]
        ramp = torch.linspace(-1, 1, fsz)
        r2 = ramp[None, :] ** 2 + ramp[:, None] ** 2
        alpha = torch.clamp((1.0 - r2) * 3.0, 0, 1)[None, None]
        fspeed = rng.uniform(0.5, 5.0)
        fang = rng.uniform(0, 2 * math.pi)
        fg = {
            "patch": patch,
            "alpha": alpha,
            "pos": (rng.uniform(0.2, 0.8) * out_w, rng.uniform(0.2, 0.8) * out_h),
            "vel": (fspeed * math.cos(fang), fspeed * math.sin(fang)),
            "scale": s_work,
        }

    out = []
    for i in range(frames):
        z = math.exp(zoom_rate * i) * s_work
        a = rot_rate * i
        ca, sa = math.cos(a), math.sin(a)
        cx = x0 + path_x[i] * s_work
        cy = y0 + path_y[i] * s_work
        sx = cx + z * (ca * gx - sa * gy)
        sy = cy + z * (sa * gx + ca * gy)
        grid = torch.stack([(sx + 0.5) / ww * 2 - 1, (sy + 0.5) / wh * 2 - 1], -1).float()[None]
        frame = F.grid_sample(t, grid, mode="bicubic", padding_mode="border", align_corners=False)
        if fg is not None:
            fpx = fg["pos"][0] + fg["vel"][0] * i
            fpy = fg["pos"][1] + fg["vel"][1] * i
            psz = fg["patch"].shape[-1]
            # patch pixel coords for each grid point (patch drawn at 1:1 of the work scale)
            u = (gx + out_w / 2 - fpx) * s_work + psz / 2
            v = (gy + out_h / 2 - fpy) * s_work + psz / 2
            pg = torch.stack([(u + 0.5) / psz * 2 - 1, (v + 0.5) / psz * 2 - 1], -1).float()[None]
            pcol = F.grid_sample(fg["patch"], pg, mode="bicubic", padding_mode="zeros", align_corners=False)
            pal = F.grid_sample(fg["alpha"], pg, mode="bilinear", padding_mode="zeros", align_corners=False)
            frame = frame * (1 - pal) + pcol * pal
        frame = F.avg_pool2d(frame, 2)
        if blur_sigma > 0:
            frame = gaussian_blur(frame, blur_sigma)
        out.append(frame[0].clamp_(0, 1))
    params = {
        "source_px_per_output_px": round(s, 3),
        "pan_px_per_frame": [round(vx, 3), round(vy, 3)],
        "sway_px": round(sway_amp, 3),
        "zoom_per_frame": round(zoom_rate, 5),
        "rotation_deg_per_frame": round(math.degrees(rot_rate), 4),
        "foreground": fg is not None,
        "optics_blur_sigma_px": round(blur_sigma, 3),
    }
    return torch.stack(out), params
