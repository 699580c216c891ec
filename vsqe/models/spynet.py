"""SpyNet optical flow, as mmedit/mmagic ship it (BasicVSR, BasicVSR++, PowerVQE MFQEv2).

Shared by every vsqe model that aligns with flow (../shared/research/models.md §3.2, §4): the
state-dict layout is the official one, so `spynet.*` keys of mmagic/PowerVQE checkpoints and the
stand-alone `spynet_20210409-c6c1bd09.pth` load key for key:

    basic_module.{0..5}.basic_module.{0..4}.conv.{weight,bias}   7x7 convs 8->32->64->32->16->2
    mean, std                                                    ImageNet normalisation buffers

Conventions:
- `SpyNet(ref, supp)` takes RGB [0, 1] images [N, 3, H, W] (any size; internally resized to
  multiples of 32) and returns the flow from `ref` to `supp`, [N, 2, H, W], channel 0 = x
  (horizontal), channel 1 = y, in pixels of the input size.
- `flow_warp(x, flow)` samples x at p + flow(p) (bilinear, align_corners=True, zero padding by
  default): warping `supp` with the flow from `ref` to `supp` aligns it to `ref`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPYNET_LEVELS = 6


def flow_warp(
    x: torch.Tensor,
    flow: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Backward-warps x [N, C, H, W] with flow [N, 2, H, W] (x, y in pixels).

    The same arithmetic as mmagic's flow_warp (pixel grid + flow, normalised by (W-1), (H-1),
    grid_sample with align_corners=True); flow is channels-first here.
    """
    n, _, h, w = x.shape
    if flow.shape[-2:] != (h, w) or flow.shape[1] != 2:
        raise ValueError(f"flow of shape {list(flow.shape)} does not fit features of shape {list(x.shape)}")
    ys = torch.arange(0, h, dtype=x.dtype, device=x.device)
    xs = torch.arange(0, w, dtype=x.dtype, device=x.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    gx = grid_x + flow[:, 0]
    gy = grid_y + flow[:, 1]
    grid = torch.stack((2.0 * gx / max(w - 1, 1) - 1.0, 2.0 * gy / max(h - 1, 1) - 1.0), dim=3)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


class _ConvAct(nn.Module):
    """mmcv ConvModule without norm: `conv` then an optional ReLU (key names `conv.*`)."""

    def __init__(self, cin: int, cout: int, relu: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 7, 1, 3)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x, inplace=True) if self.relu else x


class SpyNetBasicModule(nn.Module):
    """One pyramid level: [ref (3), warped supp (3), flow (2)] -> flow residual (2)."""

    def __init__(self) -> None:
        super().__init__()
        chans = (8, 32, 64, 32, 16, 2)
        self.basic_module = nn.Sequential(
            *[_ConvAct(chans[i], chans[i + 1], relu=i < 4) for i in range(5)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.basic_module(x)


class SpyNet(nn.Module):
    """Six-level coarse-to-fine flow network (1,440,300 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.basic_module = nn.ModuleList([SpyNetBasicModule() for _ in range(SPYNET_LEVELS)])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def compute_flow(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        """Flow ref -> supp for images whose H and W are multiples of 32."""
        n, _, h, w = ref.shape
        refs = [(ref - self.mean) / self.std]
        supps = [(supp - self.mean) / self.std]
        for _ in range(SPYNET_LEVELS - 1):
            refs.append(F.avg_pool2d(refs[-1], kernel_size=2, stride=2, count_include_pad=False))
            supps.append(F.avg_pool2d(supps[-1], kernel_size=2, stride=2, count_include_pad=False))
        refs.reverse()
        supps.reverse()
        flow = refs[0].new_zeros(n, 2, h // 32, w // 32)
        for level, module in enumerate(self.basic_module):
            if level == 0:
                flow_up = flow
            else:
                flow_up = F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=True) * 2.0
            warped = flow_warp(supps[level], flow_up, padding_mode="border")
            flow = flow_up + module(torch.cat([refs[level], warped, flow_up], dim=1))
        return flow

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        h, w = ref.shape[-2:]
        h_up = -(-h // 32) * 32
        w_up = -(-w // 32) * 32
        ref = F.interpolate(ref, size=(h_up, w_up), mode="bilinear", align_corners=False)
        supp = F.interpolate(supp, size=(h_up, w_up), mode="bilinear", align_corners=False)
        flow = F.interpolate(self.compute_flow(ref, supp), size=(h, w), mode="bilinear", align_corners=False)
        flow[:, 0] *= float(w) / float(w_up)
        flow[:, 1] *= float(h) / float(h_up)
        return flow


def as_spynet_input(x: torch.Tensor) -> torch.Tensor:
    """What SpyNet sees of a frame [N, C, H, W]: RGB as is, a Y plane replicated to 3 channels.

    Y models (mfqev2-y, basicvsrpp-y) keep SpyNet's 3-channel layers and keys (official SpyNet
    weights and RGB checkpoints stay loadable); `expand` costs no copy."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def fill_spynet_buffers(state: dict[str, torch.Tensor], prefix: str = "spynet.") -> dict[str, torch.Tensor]:
    """Adds the constant `mean`/`std` buffers when a checkpoint omits them (older mmedit saves,
    hand-converted weights); a checkpoint that has them keeps its own values."""
    if not any(k.startswith(prefix + "basic_module.") for k in state):
        return state
    out = dict(state)
    out.setdefault(prefix + "mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
    out.setdefault(prefix + "std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    return out
