"""A training-time DCNv2 built from grid_sample: same function as torchvision/mmcv deform_conv2d.

On this CPU torchvision's deform_conv2d backward is a scalar loop and takes about two thirds of an
STDF training step; grid_sample's backward is vectorised. The result equals torchvision's
(offset layout [dy, dx] per group and kernel point, mask per group and kernel point, bilinear
sampling with zero outside the image) up to float rounding; tests/train check that.
Inference keeps using vsqe.ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def deform_conv2d_gs(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> torch.Tensor:
    if stride != 1:
        raise NotImplementedError("deform_conv2d_gs supports stride 1 only")
    n, cin, h, w = x.shape
    cout, cin_w, kh, kw = weight.shape
    k = kh * kw
    groups = offset.shape[1] // (2 * k)
    if cin % groups or cin_w != cin:
        raise ValueError("deform_conv2d_gs: unsupported channel/group layout")
    cpg = cin // groups
    ho, wo = h + 2 * padding - dilation * (kh - 1), w + 2 * padding - dilation * (kw - 1)
    dtype = torch.float32
    off = offset.to(dtype).reshape(n, groups, k, 2, ho, wo)
    ky, kx = torch.meshgrid(
        torch.arange(kh, dtype=dtype, device=x.device) * dilation - padding,
        torch.arange(kw, dtype=dtype, device=x.device) * dilation - padding,
        indexing="ij",
    )
    base_y = torch.arange(ho, dtype=dtype, device=x.device).view(1, ho, 1) + ky.reshape(k, 1, 1)  # [k, ho, 1]
    base_x = torch.arange(wo, dtype=dtype, device=x.device).view(1, 1, wo) + kx.reshape(k, 1, 1)  # [k, 1, wo]
    py = off[:, :, :, 0] + base_y  # [n, g, k, ho, wo]
    px = off[:, :, :, 1] + base_x
    # align_corners=True: pixel i <-> -1 + 2 i / (size - 1); zeros padding = DCN's zero corners.
    gy = py * (2.0 / max(h - 1, 1)) - 1.0
    gx = px * (2.0 / max(w - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).reshape(n * groups, k * ho, wo, 2)
    src = x.to(dtype).reshape(n * groups, cpg, h, w)
    sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    sampled = sampled.reshape(n, groups, cpg, k, ho * wo)
    m = mask.to(dtype).reshape(n, groups, 1, k, ho * wo)
    cols = (sampled * m).reshape(n, cin * k, ho * wo)  # channel order (g, c, ky, kx) = weight's (c, ky, kx)
    out = torch.matmul(weight.reshape(cout, cin * k).to(cols.dtype), cols).reshape(n, cout, ho, wo)
    if bias is not None:
        out = out + bias.to(out.dtype).view(1, -1, 1, 1)
    return out
