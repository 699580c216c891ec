"""STDF (Deng et al., AAAI 2020): spatio-temporal deformable fusion + a plain QE CNN.

Two registered variants share one module (see ../shared/research/models.md §2):
- "stdf": the STDF-PyTorch R3 Y network (7 Y frames, deformable groups 7, replicated borders).
  Loads STDF-PyTorch `ckp_*.pt` (keys `module.ffnet.*` / `module.qenet.*`) and the PowerVQE Y
  config (`generator.stdf.*`), which holds the same tensors under other names.
- "stdf-rgb": the PowerVQE RGB network (7 RGB frames in frame-major channel order, deformable
  groups 21, reflection_circle borders). Loads PowerVQE `iter_*.pth`.
Our own key names follow STDF-PyTorch: `ffnet.*`, `qenet.in_conv.0`, `qenet.hid_conv.{0,2,..}`,
`qenet.out_conv`.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from vsqe.models.registry import ModelSpec, register
from vsqe.ops import deform_conv2d, deform_conv2d_om, om_fast_path_applies


class DeformConv2d(nn.Module):
    """DCNv2 layer whose offsets and masks are computed by the caller (the STDF offset head)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int) -> None:
        super().__init__()
        self.padding = padding
        self.offset_groups = in_ch  # STDF: one deformable group per input channel (frame)
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return deform_conv2d(x, offset, mask, self.weight, self.bias, padding=self.padding)

    def forward_om(self, x: torch.Tensor, offset_mask: torch.Tensor) -> torch.Tensor:
        """From the offset head's raw output (offsets, then mask logits): one native call for CPU
        inference on channels_last tensors (vsqe.ops.deform_conv2d_om); otherwise the slices and
        sigmoid through `forward`, which the trainer replaces by its grid_sample DCN."""
        if om_fast_path_applies(x, offset_mask, self.weight, self.bias):
            return deform_conv2d_om(x, offset_mask, self.weight, self.bias, self.offset_groups, padding=self.padding)
        gk = self.offset_groups * self.weight.shape[2] * self.weight.shape[3]
        return self(x, offset_mask[:, : 2 * gk], torch.sigmoid(offset_mask[:, 2 * gk : 3 * gk]))


def _conv(cin: int, cout: int, ks: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, ks, stride=stride, padding=ks // 2)


class STDFFusion(nn.Module):
    """U-Net that predicts per-frame offsets and masks, then one deformable conv fuses the frames."""

    def __init__(self, in_nc: int, out_nc: int = 64, nf: int = 32, nb: int = 3, deform_ks: int = 3) -> None:
        super().__init__()
        self.nb = nb
        self.in_nc = in_nc
        self.kernel_points = deform_ks * deform_ks
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        self.in_conv = nn.Sequential(_conv(in_nc, nf), relu())
        # Registration order matters only for printing; names match the official checkpoints.
        for i in range(1, nb):
            setattr(self, f"dn_conv{i}", nn.Sequential(_conv(nf, nf, stride=2), relu(), _conv(nf, nf), relu()))
            setattr(
                self,
                f"up_conv{i}",
                nn.Sequential(_conv(2 * nf, nf), relu(), nn.ConvTranspose2d(nf, nf, 4, 2, 1), relu()),
            )
        self.tr_conv = nn.Sequential(
            _conv(nf, nf, stride=2), relu(), _conv(nf, nf), relu(), nn.ConvTranspose2d(nf, nf, 4, 2, 1), relu()
        )
        self.out_conv = nn.Sequential(_conv(nf, nf), relu())
        self.offset_mask = _conv(nf, in_nc * 3 * self.kernel_points)
        self.deform_conv = DeformConv2d(in_nc, out_nc, deform_ks, padding=deform_ks // 2)

    def offset_mask_logits(self, frames: torch.Tensor) -> torch.Tensor:
        """The dense part: per-frame sampling offsets, then modulation-mask logits, one tensor."""
        skips = [self.in_conv(frames)]
        for i in range(1, self.nb):
            skips.append(getattr(self, f"dn_conv{i}")(skips[-1]))
        out = self.tr_conv(skips[-1])
        for i in range(self.nb - 1, 0, -1):
            out = getattr(self, f"up_conv{i}")(torch.cat([out, skips[i]], dim=1))
        return self.offset_mask(self.out_conv(out))

    def offsets_and_masks(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets and (sigmoid) masks as separate tensors: the cut the OpenVINO backend runs."""
        off_msk = self.offset_mask_logits(frames)
        n_off = self.in_nc * 2 * self.kernel_points
        return off_msk[:, :n_off], torch.sigmoid(off_msk[:, n_off:])

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.deform_conv.forward_om(frames, self.offset_mask_logits(frames)))


class PlainQE(nn.Module):
    """STDF-PyTorch's PlainCNN: conv+ReLU, (nb-2) x (conv+ReLU), conv."""

    def __init__(self, in_nc: int = 64, nf: int = 48, nb: int = 8, out_nc: int = 1) -> None:
        super().__init__()
        self.in_conv = nn.Sequential(_conv(in_nc, nf), nn.ReLU(inplace=True))
        hidden: list[nn.Module] = []
        for _ in range(nb - 2):
            hidden += [_conv(nf, nf), nn.ReLU(inplace=True)]
        self.hid_conv = nn.Sequential(*hidden)
        self.out_conv = _conv(nf, out_nc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.hid_conv(self.in_conv(x)))


class STDF(nn.Module):
    """Input [N, T, C, H, W] in [0, 1] with H, W multiples of 8; output [N, C, H, W]."""

    def __init__(self, channels: int = 1, radius: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.radius = radius
        frames = 2 * radius + 1
        # Frame-major channel order [f0c0 f0c1 .. f1c0 ..]: a plain reshape of [N, T, C, H, W].
        self.ffnet = STDFFusion(in_nc=frames * channels)
        self.qenet = PlainQE(in_nc=64, out_nc=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = x.shape
        stacked = x.reshape(n, t * c, h, w)
        centre = x[:, self.radius]
        return self.qenet(self.ffnet(stacked)) + centre

    # The same forward cut at the deformable conv, for runtimes that cannot run our DCN op
    # (OpenVINO runs the dense parts, our kernel the DCN): see backends/openvino_backend.py.
    def dense_head(self, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ffnet.offsets_and_masks(stacked)

    @property
    def dcn_layer(self) -> "DeformConv2d":
        return self.ffnet.deform_conv

    def dense_tail(self, aligned: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        return self.qenet(torch.relu(aligned)) + centre


_POWERVQE_QE_HIDDEN = re.compile(r"^qenet\.hid_conv\.(\d+)\.")


def convert_official_stdf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """STDF-PyTorch keys pass through; PowerVQE (`stdf.*`, odd hid_conv indices) are renamed."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("stdf."):
            key = "ffnet." + key[len("stdf."):]
        elif key.startswith("qenet.in_conv.") and not key.startswith("qenet.in_conv.0."):
            key = "qenet.in_conv.0." + key[len("qenet.in_conv."):]
        elif key.startswith("qenet.out_conv.1."):
            key = "qenet.out_conv." + key[len("qenet.out_conv.1."):]
        elif (m := _POWERVQE_QE_HIDDEN.match(key)) and int(m.group(1)) % 2 == 1:
            key = f"qenet.hid_conv.{int(m.group(1)) - 1}." + key[m.end():]
        out[key] = value
    return out


register(
    ModelSpec(
        name="stdf",
        description="STDF R3, Y only (STDF-PyTorch ckp_*.pt, PowerVQE STDF-Y); 7 frames",
        build=lambda: STDF(channels=1, radius=3),
        color="y",
        radius=3,
        border="replicate",
        size_multiple=8,
        default_weights="stdf_y_qp37.safetensors",
        convert_state_dict=convert_official_stdf,
    )
)

register(
    ModelSpec(
        name="stdf-rgb",
        description="STDF R3, RGB (PowerVQE ldv_v2 iter_*.pth); 7 frames, reflection_circle borders",
        build=lambda: STDF(channels=3, radius=3),
        color="rgb",
        radius=3,
        border="reflection_circle",
        size_multiple=8,
        default_weights=None,
        convert_state_dict=convert_official_stdf,
    )
)
