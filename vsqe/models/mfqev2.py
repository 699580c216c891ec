"""MFQEv2 (Guan, Xing et al., TPAMI 2019) as PowerVQE ships it: multi-frame QE from the two
neighbouring peak-quality frames (PQFs), see ../shared/research/models.md §3.2 and docs/mfqev2.md.

Structure (key names are PowerVQE's `generator.*` names without the prefix, so official
`iter_*.pth` / `latest.pth` checkpoints load key for key):

    spynet.*                       the shared SpyNet (vsqe/models/spynet.py), 1,440,300 params
    ks{3,5,7}_conv_list.{0,1,2}    9 feature convs 3->32, no activation; index 0/1/2 =
                                   left PQF (aligned) / centre frame / right PQF (aligned)
    rec_conv.{0..4}.{0,1,2}        dense reconstruction: conv -> PReLU (1 param) -> BatchNorm2d;
                                   inputs 288, 32, 64, 96, 128 (all previous rec outputs)
    rec_conv.5                     conv 32 -> 3

Input [N, 3, 3, H, W] = (left PQF, frame to enhance, right PQF), RGB [0, 1], any H, W (SpyNet
resizes internally); output [N, 3, H, W] = centre + residual. The PQF model and the non-PQF
model are two checkpoints of this one architecture (1,640,948 parameters each); which frames
feed it is decided by vsqe/pipeline/pqf_schedule.py.

`mfqev2-y` is the same network on the Y plane (in/out channels 1, as PowerVQE's STDF-Y config is
to its RGB one): feature convs 1->32, rec_conv.5 32->1. SpyNet keeps its 3-channel input (its
keys stay the official ones); it sees Y replicated to three channels. vsqe trains its weights
(vsqe/train; two files, non-PQF and PQF, like `mfqev2`'s two official checkpoints).
"""
from __future__ import annotations

import torch
from torch import nn

from vsqe.models.registry import ModelSpec, register
from vsqe.models.spynet import SpyNet, as_spynet_input, fill_spynet_buffers, flow_warp

FEATURE_KERNELS = (3, 5, 7)


def _conv(cin: int, cout: int, ks: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, ks, padding=ks // 2)


class MFQEv2(nn.Module):
    """PowerVQE `MFQEv2` backbone (in 3, out 3, nf 32; `mfqev2-y`: in 1, out 1)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, nf: int = 32) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"MFQEv2 takes 1 (Y) or 3 (RGB) input channels, got {in_channels}")
        self.in_channels = in_channels
        self.spynet = SpyNet()
        for ks in FEATURE_KERNELS:
            setattr(self, f"ks{ks}_conv_list", nn.ModuleList([_conv(in_channels, nf, ks) for _ in range(3)]))
        dense = [
            nn.Sequential(_conv(cin, nf, 3), nn.PReLU(), nn.BatchNorm2d(nf))
            for cin in (9 * nf, nf, 2 * nf, 3 * nf, 4 * nf)
        ]
        self.rec_conv = nn.ModuleList([*dense, _conv(nf, out_channels, 3)])

    def align(self, neighbour: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """Backward-warps `neighbour` onto `centre` with the SpyNet flow centre -> neighbour
        (bilinear, zero padding, align_corners=True: mmedit's flow_warp). A Y model feeds SpyNet
        its plane replicated to 3 channels: SpyNet's layers and keys stay the RGB ones."""
        flow = self.spynet(as_spynet_input(centre), as_spynet_input(neighbour))
        return flow_warp(neighbour, flow)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"MFQEv2 takes [N, 3, C, H, W] (left PQF, frame, right PQF), got {list(x.shape)}")
        centre = x[:, 1]
        frames = (self.align(x[:, 0], centre), centre, self.align(x[:, 2], centre))
        feats = [
            conv(frame)
            for ks in FEATURE_KERNELS
            for conv, frame in zip(getattr(self, f"ks{ks}_conv_list"), frames)
        ]  # ks3(L, C, R), ks5(L, C, R), ks7(L, C, R)
        outs = [self.rec_conv[0](torch.cat(feats, dim=1))]
        for j in range(1, 5):
            outs.append(self.rec_conv[j](torch.cat(outs, dim=1)))
        # rec_conv[4] sees rec 0..3 (128 ch); rec_conv[5] sees rec_conv[4]'s output only.
        return self.rec_conv[5](outs[-1]) + centre


def convert_official_mfqev2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PowerVQE keys are ours once checkpoint.py strips `generator.` and drops `step_counter`;
    only SpyNet's constant mean/std buffers may be missing (hand-converted / older saves)."""
    return fill_spynet_buffers(state, prefix="spynet.")


register(
    ModelSpec(
        name="mfqev2",
        description="MFQEv2, RGB (PowerVQE ldv_v2 non-PQF / PQF iter_*.pth); (left PQF, frame, right PQF)",
        build=lambda: MFQEv2(),
        color="rgb",
        radius=1,  # three input frames, but chosen by the PQF schedule (pipeline/pqf_schedule.py)
        size_multiple=1,
        default_weights=None,
        convert_state_dict=convert_official_mfqev2,
        temporal="pqf",
    )
)

# vsqe's own Y model. The registry's default_weights is the non-PQF network (what --weights
# replaces) and default_pqf_weights the PQF network (what --pqf-weights replaces). Both name one
# file: since session 11 the non-PQF network enhances the PQFs too, where it beat the network
# trained for them (+0.4814 against +0.4404 dB on the dev PQFs, docs/training.md §7); the Enhancer
# loads it once. A separately trained PQF network would get a file name of its own here.
register(
    ModelSpec(
        name="mfqev2-y",
        description="MFQEv2 on Y (vsqe-trained, HM LDP QP37): non-PQF and PQF weights; (left PQF, frame, right PQF)",
        build=lambda: MFQEv2(in_channels=1, out_channels=1),
        color="y",
        radius=1,
        size_multiple=1,
        default_weights="mfqev2_y_qp37.safetensors",
        default_pqf_weights="mfqev2_y_qp37.safetensors",
        convert_state_dict=convert_official_mfqev2,
        temporal="pqf",
    )
)
