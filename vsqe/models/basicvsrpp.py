"""BasicVSR++ (Chan et al., CVPR 2022): bidirectional second-order grid propagation with
flow-guided deformable alignment (../shared/research/models.md §4).

One module covers the three official configurations; parameter names and shapes are the official
ones (mmagic `BasicVSRPlusPlusNet`, PowerVQE `BasicVSRPlusPlusNoMirror`, without `generator.`):

- "basicvsrpp" (default QE model): PowerVQE `basicvsr_pp_no_mirror`, C=64, B=7, same-size output
  (is_low_res_input=False): two stride-2 convs then 5 residual blocks (`feat_extract.{0,2,4}`),
  flows by SpyNet on a bicubic x1/4 downsample, PixelShuffle x2 twice back to full resolution,
  + the input frame. 7,396,783 parameters. Input H, W multiples of 4 and >= 256.
- "basicvsrpp-ntire": mmagic's NTIRE 2021 decompression model, C=128, B=25, same layout as the
  QE model. 44,075,631 parameters.
- "basicvsrpp-mmagic-sr": mmagic's x4 video super-resolution model (REDS4 / Vimeo-90K), C=64, B=7,
  features at input resolution (`feat_extract.main.*`), output 4x the input size + a bilinear x4
  upsample of the input. 7,322,927 parameters. Input >= 64.
- "basicvsrpp-y": vsqe's own narrow QE model on Y (C=32, B=2, 2/2 extraction/reconstruction
  blocks, hr 32; SpyNet whole, fed Y replicated), trained by `vsqe train` (docs/training.md §8).
  2,702,413 parameters. Only vsqe-trained weights; official checkpoints load into "basicvsrpp".

Forward contract (ModelSpec temporal="recurrent"): lqs [N, T, 3, H, W] RGB in [0, 1] ->
[N, T, 3, scale*H, scale*W], every frame of the sequence (the pipeline cuts long clips into
overlapping segments, pipeline/segments.py).

Numerically this is the official forward (no mirror-extension shortcut: forward flows are always
computed, as in PowerVQE). Two memory-only departures that do not change any value: features and
flows are computed frame by frame rather than for the whole batch of frames at once, and each
frame is reconstructed as soon as the last branch (forward_2) has passed it, so the propagated
features of earlier branches are freed as the last branch advances.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vsqe.models.registry import ModelSpec, register
from vsqe.models.spynet import SpyNet, as_spynet_input, fill_spynet_buffers, flow_warp
from vsqe.ops import deform_conv2d

BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")
DEFORM_GROUPS = 16


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope=0.1, inplace=True)


class ResidualBlockNoBN(nn.Module):
    """x + conv2(relu(conv1(x)))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        # mmagic's init for res_scale 1: Kaiming normal (fan_in, ReLU) scaled by 0.1, zero bias.
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in", nonlinearity="relu")
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class ResidualBlocksWithInputConv(nn.Module):
    """conv (cin -> cout) + LeakyReLU(0.1) + `num_blocks` residual blocks; keys `main.0`, `main.2.{i}`."""

    def __init__(self, cin: int, cout: int, num_blocks: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(cin, cout, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Sequential(*[ResidualBlockNoBN(cout) for _ in range(num_blocks)]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class PixelShufflePack(nn.Module):
    """conv (cin -> cout * s^2) then pixel shuffle by s; key `upsample_conv`."""

    def __init__(self, cin: int, cout: int, scale: int, kernel: int = 3) -> None:
        super().__init__()
        self.scale = scale
        self.upsample_conv = nn.Conv2d(cin, cout * scale * scale, kernel, 1, (kernel - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.upsample_conv(x), self.scale)


class SecondOrderDeformableAlignment(nn.Module):
    """Flow-guided DCNv2 (keys `weight`, `bias`, `conv_offset.{0,2,4,6}`).

    conv_offset sees cat(cond_n1, feat_current, cond_n2, flow_n1, flow_n2) (3C + 4 channels) and
    predicts 27 * 16 channels: offset residuals o1 | o2 and mask logits. Offsets are
    `max_residue_magnitude * tanh(o)` added to the flow (flipped to (dy, dx), repeated for every
    group and kernel point); groups 0-7 sample the previous feature (offset_1, flow_n1), groups
    8-15 the one two steps back (offset_2, flow_n2). Masks are sigmoid-ed.
    """

    def __init__(self, channels: int, max_residue_magnitude: float = 10.0, kernel_size: int = 3) -> None:
        super().__init__()
        self.max_residue_magnitude = max_residue_magnitude
        self.kernel_points = kernel_size * kernel_size
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(channels, 2 * channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv_offset = nn.Sequential(
            nn.Conv2d(3 * channels + 4, channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(channels, 3 * self.kernel_points * DEFORM_GROUPS, 3, 1, 1),
        )
        # As mmcv's ModulatedDeformConv2d / mmagic: uniform(-1/sqrt(fan_in), ..) weights, zero bias,
        # and a zero offset head (offsets start as the flow, masks at 0.5).
        bound = 1.0 / (2 * channels * self.kernel_points) ** 0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)

    def forward(
        self, x: torch.Tensor, extra_feat: torch.Tensor, flow_1: torch.Tensor, flow_2: torch.Tensor
    ) -> torch.Tensor:
        out = self.conv_offset(torch.cat([extra_feat, flow_1, flow_2], dim=1))
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        offset = self.max_residue_magnitude * torch.tanh(torch.cat((o1, o2), dim=1))
        offset_1, offset_2 = torch.chunk(offset, 2, dim=1)
        offset_1 = offset_1 + flow_1.flip(1).repeat(1, offset_1.size(1) // 2, 1, 1)
        offset_2 = offset_2 + flow_2.flip(1).repeat(1, offset_2.size(1) // 2, 1, 1)
        offset = torch.cat([offset_1, offset_2], dim=1)
        return self.deform(x, offset, torch.sigmoid(mask))

    def deform(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The DCN itself: vsqe.ops (every inference path); the trainer swaps in its grid_sample
        version per instance (vsqe/train/dcn.py: same function, vectorised backward)."""
        return deform_conv2d(x, offset, mask, self.weight, self.bias, padding=self.padding)


class BasicVSRPlusPlus(nn.Module):
    """BasicVSR++; see the module docstring. `is_low_res_input=False` is the QE (same size) mode."""

    # fp32 CPU inference in channels_last is slower here (basicvsrpp-y at 256x256, 4 frames,
    # 2 threads: 345 vs 306 ms; the flow warps and concatenations reorder): backends/torch_backend.py.
    channels_last_fp32 = False

    def __init__(
        self,
        mid_channels: int = 64,
        num_blocks: int = 7,
        max_residue_magnitude: float = 10.0,
        is_low_res_input: bool = False,
        hr_channels: int = 64,
        in_channels: int = 3,
        extract_blocks: int = 5,
        reconstruction_blocks: int = 5,
    ) -> None:
        """`hr_channels` (64), `in_channels` (3, RGB) and the 5 residual blocks of feature
        extraction and reconstruction are fixed in every official model; other values build
        vsqe's own narrower variants (`basicvsrpp-y`: Y in and out) and the tests' tiny nets."""
        super().__init__()
        c = mid_channels
        self.mid_channels = c
        self.in_channels = in_channels
        self.is_low_res_input = is_low_res_input
        self.scale = 4 if is_low_res_input else 1
        # Smallest SpyNet input side the forward accepts (mmagic asserts 64). The trainer lowers
        # it on its own copy: 64-px training patches give 16-px flow inputs (SpyNet resizes them
        # to 32 internally); inference keeps the official minimum through spec.min_size.
        self.min_flow_size = 64
        self.spynet = SpyNet()
        if is_low_res_input:
            self.feat_extract = ResidualBlocksWithInputConv(in_channels, c, extract_blocks)
        else:
            self.feat_extract = nn.Sequential(
                nn.Conv2d(in_channels, c, 3, 2, 1),
                nn.LeakyReLU(negative_slope=0.1, inplace=True),
                nn.Conv2d(c, c, 3, 2, 1),
                nn.LeakyReLU(negative_slope=0.1, inplace=True),
                ResidualBlocksWithInputConv(c, c, extract_blocks),
            )
        self.deform_align = nn.ModuleDict()
        self.backbone = nn.ModuleDict()
        for i, name in enumerate(BRANCHES):
            self.deform_align[name] = SecondOrderDeformableAlignment(c, max_residue_magnitude)
            self.backbone[name] = ResidualBlocksWithInputConv((2 + i) * c, c, num_blocks)
        self.reconstruction = ResidualBlocksWithInputConv(5 * c, c, reconstruction_blocks)
        self.upsample1 = PixelShufflePack(c, c, 2)
        self.upsample2 = PixelShufflePack(c, hr_channels, 2)
        self.conv_hr = nn.Conv2d(hr_channels, hr_channels, 3, 1, 1)
        self.conv_last = nn.Conv2d(hr_channels, in_channels, 3, 1, 1)

    # -- stages ------------------------------------------------------------------------------
    def _flow_input(self, frame: torch.Tensor) -> torch.Tensor:
        """The image SpyNet sees: the frame itself (SR) or its bicubic x1/4 downsample (QE)."""
        if self.is_low_res_input:
            return frame
        return F.interpolate(
            frame, scale_factor=0.25, mode="bicubic", align_corners=False, recompute_scale_factor=True
        )

    def _flows(self, small: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """flows_backward[i] = flow(i -> i+1), flows_forward[i] = flow(i+1 -> i), i < T-1."""
        small = [as_spynet_input(s) for s in small]  # Y models: Y replicated to 3 channels
        backward = [self.spynet(small[i], small[i + 1]) for i in range(len(small) - 1)]
        forward = [self.spynet(small[i + 1], small[i]) for i in range(len(small) - 1)]
        return forward, backward

    def _propagate(
        self,
        name: str,
        spatial: list[torch.Tensor],
        previous: list[list[torch.Tensor]],
        flows: list[torch.Tensor],
        on_frame: Callable[[int, torch.Tensor], None] | None = None,
    ) -> list[torch.Tensor]:
        """One propagation branch over all frames; returns its features in display order.

        Backward branches visit frames T-1..0 and align the feature of frame t+1 with
        flows_backward[t]; forward branches visit 0..T-1 with flows_forward[t-1]. `previous` are
        the features of the earlier branches (b1, f1, b2 order), concatenated into the backbone.
        With `on_frame`, each frame's feature is handed to it instead and nothing is returned.
        """
        t = len(spatial)
        backward = name.startswith("backward")
        order = range(t - 1, -1, -1) if backward else range(t)
        align = self.deform_align[name]
        backbone = self.backbone[name]
        out: list[torch.Tensor | None] = [None] * t
        history: list[torch.Tensor] = []  # propagated features in visiting order (last two kept)
        flow_hist: list[torch.Tensor] = []
        feat_prop = spatial[0].new_zeros(spatial[0].shape)
        for i, idx in enumerate(order):
            feat_current = spatial[idx]
            if i > 0:
                flow_n1 = flows[idx] if backward else flows[idx - 1]
                cond_n1 = flow_warp(feat_prop, flow_n1)
                if i > 1:
                    feat_n2 = history[-2]
                    flow_n2 = flow_n1 + flow_warp(flow_hist[-1], flow_n1)
                    cond_n2 = flow_warp(feat_n2, flow_n2)
                else:
                    feat_n2 = torch.zeros_like(feat_prop)
                    flow_n2 = torch.zeros_like(flow_n1)
                    cond_n2 = torch.zeros_like(cond_n1)
                cond = torch.cat([cond_n1, feat_current, cond_n2], dim=1)
                feat_prop = align(torch.cat([feat_prop, feat_n2], dim=1), cond, flow_n1, flow_n2)
                flow_hist.append(flow_n1)
                if len(flow_hist) > 1:
                    flow_hist.pop(0)
            feat = torch.cat([feat_current, *(p[idx] for p in previous), feat_prop], dim=1)
            feat_prop = feat_prop + backbone(feat)
            history.append(feat_prop)
            if len(history) > 2:
                history.pop(0)
            if on_frame is not None:
                on_frame(idx, feat_prop)
            else:
                out[idx] = feat_prop
        return [] if on_frame is not None else out  # type: ignore[return-value]

    def _reconstruct(self, lq: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        hr = self.reconstruction(torch.cat(feats, dim=1))
        hr = _lrelu(self.upsample1(hr))
        hr = _lrelu(self.upsample2(hr))
        hr = _lrelu(self.conv_hr(hr))
        hr = self.conv_last(hr)
        if self.is_low_res_input:
            return hr + F.interpolate(lq, scale_factor=4, mode="bilinear", align_corners=False)
        return hr + lq

    def per_frame(self, lqs: torch.Tensor) -> torch.Tensor:
        """Every frame of `lqs` through the per-frame path alone: feature extraction, then the
        reconstruction with the four propagated features zero. What `forward` computes when the
        reconstruction's weights for the propagated features are zero (the first stage of
        training, vsqe/train/trainer.py), without SpyNet, alignment or propagation."""
        n, t, c, h, w = lqs.shape
        frames = lqs.reshape(n * t, c, h, w)
        spatial = self.feat_extract(frames)
        zero = torch.zeros_like(spatial)
        return self._reconstruct(frames, [spatial] + [zero] * len(BRANCHES)).view(n, t, c, h * self.scale, w * self.scale)

    def forward(self, lqs: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = lqs.shape
        if not self.is_low_res_input and (h % 4 or w % 4):
            raise ValueError(f"BasicVSR++ (QE) needs H and W multiples of 4, got {h}x{w}")
        frames = [lqs[:, i] for i in range(t)]
        small = [self._flow_input(f) for f in frames]
        if min(small[0].shape[-2:]) < self.min_flow_size:
            m = self.min_flow_size
            raise ValueError(
                f"BasicVSR++ needs flow inputs of at least {m}x{m} (QE: frames of at least {4 * m}x{4 * m}), got {h}x{w}"
            )
        spatial = [self.feat_extract(f) for f in frames]
        flows_forward, flows_backward = self._flows(small)
        del small
        b1 = self._propagate("backward_1", spatial, [], flows_backward)
        f1 = self._propagate("forward_1", spatial, [b1], flows_forward)
        b2 = self._propagate("backward_2", spatial, [b1, f1], flows_backward)
        del flows_backward
        out = lqs.new_empty(n, t, c, h * self.scale, w * self.scale)
        empty = lqs.new_empty(0)

        # forward_2 is the last branch: reconstruct each frame as soon as it has passed, and free
        # that frame's features of the earlier branches (nothing later reads them).
        def emit(idx: int, f2: torch.Tensor) -> None:
            out[:, idx] = self._reconstruct(frames[idx], [spatial[idx], b1[idx], f1[idx], b2[idx], f2])
            spatial[idx] = b1[idx] = f1[idx] = b2[idx] = empty

        self._propagate("forward_2", spatial, [b1, f1, b2], flows_forward, on_frame=emit)
        return out


def convert_official_basicvsrpp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmagic / PowerVQE keys are ours once `generator.` is stripped (checkpoint.py does that and
    drops `step_counter`); only SpyNet's constant mean/std buffers may be missing."""
    return fill_spynet_buffers(state, prefix="spynet.")


# Segment defaults (pipeline/segments.py): output frames [k*L, (k+1)*L) of segment k are computed
# from input frames [k*L - O, (k+1)*L + O); see docs/basicvsrpp.md for the measurements.
SEGMENT_LENGTH = 24
SEGMENT_OVERLAP = 8

# name -> (description, BasicVSRPlusPlus arguments); the QE models keep the input size (H, W
# multiples of 4, >= 256), the SR one outputs 4x its input (>= 64).
_CONFIGS = {
    "basicvsrpp": (
        "BasicVSR++ QE, RGB (PowerVQE basicvsr_pp_no_mirror, C64 B7); recurrent, segments",
        dict(mid_channels=64, num_blocks=7, is_low_res_input=False),
    ),
    "basicvsrpp-ntire": (
        "BasicVSR++ NTIRE 2021 decompression, RGB (mmagic c128n25 ntire_decompress_track*); recurrent",
        dict(mid_channels=128, num_blocks=25, is_low_res_input=False),
    ),
    "basicvsrpp-mmagic-sr": (
        "BasicVSR++ x4 super-resolution, RGB (mmagic c64n7 REDS4/Vimeo-90K); recurrent, 4x output",
        dict(mid_channels=64, num_blocks=7, is_low_res_input=True),
    ),
}

for _name, (_description, _kwargs) in _CONFIGS.items():
    _sr = _kwargs["is_low_res_input"]
    register(
        ModelSpec(
            name=_name,
            description=_description,
            build=functools.partial(BasicVSRPlusPlus, **_kwargs),
            color="rgb",
            radius=0,
            size_multiple=1 if _sr else 4,
            min_size=64 if _sr else 256,
            scale=4 if _sr else 1,
            temporal="recurrent",
            segment_length=SEGMENT_LENGTH,
            segment_overlap=SEGMENT_OVERLAP,
            default_weights=None,
            convert_state_dict=convert_official_basicvsrpp,
        )
    )

# vsqe's own Y model, trained by `vsqe train --model basicvsrpp-y` (docs/training.md §8): the
# QE layout with 1 input / output channel and narrower than PowerVQE's C64 B7, so that training
# on two CPU cores is affordable. Measured training step (1 thread, bf16, 7 frames x 128 px):
# C32 B2 244k FLOP per output pixel (STDF-R3 Y 479k; the full C64 B7 901k), of which SpyNet
# (kept whole, 3-channel, fed Y replicated) is 69k. Official RGB checkpoints keep loading into
# `basicvsrpp`; this variant has its own keys' shapes and only vsqe-trained weights.
BASICVSRPP_Y = dict(
    mid_channels=32, num_blocks=2, is_low_res_input=False, hr_channels=32, in_channels=1,
    extract_blocks=2, reconstruction_blocks=2,
)
register(
    ModelSpec(
        name="basicvsrpp-y",
        description="BasicVSR++ QE on Y, C32 B2 (vsqe-trained, HM LDP QP37); recurrent, segments",
        build=functools.partial(BasicVSRPlusPlus, **BASICVSRPP_Y),
        color="y",
        radius=0,
        size_multiple=4,
        min_size=256,
        scale=1,
        temporal="recurrent",
        segment_length=SEGMENT_LENGTH,
        segment_overlap=SEGMENT_OVERLAP,
        default_weights="basicvsrpp_y_qp37.safetensors",
        convert_state_dict=convert_official_basicvsrpp,
    )
)
