"""Batch normalisation for training only, folded away before the weights leave the trainer.

Why: compression residuals at QP 37 are small and neighbouring pixels are strongly correlated, so
plain-ReLU STDF trains very slowly from scratch (our first CPU runs sat at the identity for
thousands of iterations; docs/training.md §4). Batch normalisation after each conv+ReLU pair is
the classic cure (DnCNN): on the same data a 6-layer CNN with BN moved off the identity within a
few hundred iterations where the plain one did not move in 4,000.

The published architectures have no BN, and official checkpoints must keep loading into them. So
the trainer swaps each conv that feeds a ReLU for `ConvBN2d` / `ConvTransposeBN2d` (same parameter
names, plus a `bn.` child), and `folded_state_dict` turns a trained model back into the plain
architecture's state dict: in eval mode BN is an affine map per output channel,
y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta, which multiplies into the conv's weight and
bias exactly (up to float rounding).
"""
from __future__ import annotations

import torch
from torch import nn


class ConvBN2d(nn.Conv2d):
    """nn.Conv2d followed by BatchNorm2d; the conv keeps its parameter names."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bn = nn.BatchNorm2d(self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(super().forward(x))


class ConvTransposeBN2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d followed by BatchNorm2d; the conv keeps its parameter names."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bn = nn.BatchNorm2d(self.out_channels)

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        return self.bn(super().forward(x, output_size))


def _with_bn(conv: nn.Module) -> nn.Module:
    if isinstance(conv, nn.ConvTranspose2d):
        new = ConvTransposeBN2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.output_padding, conv.groups, conv.bias is not None, conv.dilation,
        )
    else:
        new = ConvBN2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
        )
    new.load_state_dict(conv.state_dict(), strict=False)
    return new


def add_batchnorm(model: nn.Module) -> int:
    """Puts BN between every conv and the ReLU that follows it inside an nn.Sequential.

    Returns how many convs got one. Convs not followed by a ReLU (offset/mask heads, the output
    conv) are left alone: their outputs have meaningful scales.
    """
    count = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, act = seq._modules[a], seq._modules[b]
            plain_conv = type(conv) in (nn.Conv2d, nn.ConvTranspose2d)
            if plain_conv and isinstance(act, nn.ReLU):
                seq._modules[a] = _with_bn(conv)
                count += 1
    return count


@torch.no_grad()
def folded_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict in the plain architecture's keys, with every BN folded into its conv."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        if not isinstance(m, (ConvBN2d, ConvTransposeBN2d)):
            continue
        bn = m.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        w = m.weight.detach().float()
        # Conv2d weight [out, in/g, kh, kw]; ConvTranspose2d weight [in, out/g, kh, kw].
        if isinstance(m, ConvTransposeBN2d):
            if m.groups != 1:
                raise ValueError(f"{name}: folding grouped transposed convs is not supported")
            w = w * scale.view(1, -1, 1, 1)
        else:
            w = w * scale.view(-1, 1, 1, 1)
        if m.bias is None:
            raise ValueError(f"{name}: folding needs a conv with a bias (the plain model has none to fold into)")
        b = m.bias.detach().float()
        sd[f"{name}.weight"] = w
        sd[f"{name}.bias"] = b * scale + shift
        for k in list(sd):
            if k.startswith(f"{name}.bn."):
                del sd[k]
    return sd


# BasicVSR++'s feature extraction, the one per-frame part that reads no propagated feature. Not
# the reconstruction or the upsampling path after it: with BN there (session 5, runs y3-y5) the
# network learned a propagation whose features grow 2-3x per step: 2.4 -> 2e4 over 12 frames in
# backward_1, inf by forward_2. Train-mode BN renormalised that at every call, so the loss never saw
# it; the fixed affine of inference passed it on, and validation read -25 dB (docs/training.md §8).
RECURRENT_PER_FRAME = ("feat_extract",)
RECURRENT_OUTPUT_PATH: tuple[str, ...] = ()
# The per-frame first stage (trainer.py, `per_frame`) runs no recurrence, so BN may go everywhere
# the features pass: the reconstruction and the output convs too, as in STDF.
PER_FRAME_STAGE = ("feat_extract", "reconstruction")
PER_FRAME_STAGE_OUTPUT = ("upsample1.upsample_conv", "upsample2.upsample_conv", "conv_hr")


def add_batchnorm_per_frame(
    model: nn.Module,
    roots: tuple[str, ...] = RECURRENT_PER_FRAME,
    convs: tuple[str, ...] = RECURRENT_OUTPUT_PATH,
) -> int:
    """BasicVSR++: BN after every conv that feeds an activation in the per-frame parts only.

    The same cure as `add_batchnorm` for a network that sits at the identity (BasicVSR++-Y from
    scratch: output residual 0.5 -> 0.03 levels, ΔPSNR 0.000 over its first 1,000 iterations,
    docs/training.md §8), kept away from everything that reads propagated features: there
    train-mode BN hides a growing propagation that inference then amplifies (the defaults above
    say what happened). BN in the feature extraction alone does not move the network off the
    identity (val -0.010 dB @1,000): the per-frame first stage with a teacher is for that
    (trainer.TrainConfig.per_frame, docs/training.md §8). Matches conv -> ReLU/LeakyReLU inside
    an nn.Sequential and the first conv of each residual block (conv1 -> relu -> conv2) under
    `roots`, and the convs named in `convs`."""
    from vsqe.models.basicvsrpp import ResidualBlockNoBN

    count = 0
    for root in roots:
        for m in list(getattr(model, root).modules()):
            if isinstance(m, nn.Sequential):
                names = list(m._modules)
                for a, b in zip(names, names[1:]):
                    conv, act = m._modules[a], m._modules[b]
                    if type(conv) is nn.Conv2d and isinstance(act, (nn.ReLU, nn.LeakyReLU)):
                        m._modules[a] = _with_bn(conv)
                        count += 1
            elif isinstance(m, ResidualBlockNoBN) and type(m.conv1) is nn.Conv2d:
                m.conv1 = _with_bn(m.conv1)
                count += 1
    for path in convs:
        parent_name, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if type(getattr(parent, attr)) is nn.Conv2d:
            setattr(parent, attr, _with_bn(getattr(parent, attr)))
            count += 1
    return count

