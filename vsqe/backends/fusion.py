"""Conv+ReLU fusion for CPU inference: one oneDNN call with a ReLU post-op instead of a
convolution followed by a separate ReLU pass over its output.

PyTorch's eager `nn.Conv2d` then `nn.ReLU` writes the convolution's output and reads it back for
the ReLU; oneDNN can apply the ReLU as the convolution writes (a post-op). PyTorch exposes that as
`torch.ops.mkldnn._convolution_pointwise` (what inductor's CPU backend emits). Measured on the
2-core dev VM: STDF's 48->48 3x3 conv + ReLU at 416x240 in bf16 channels_last, 5.50 -> 4.82 ms,
bit-identical output (docs/benchmarks.md, session 4).

`fuse_conv_relu(model)` returns a copy of the module tree that shares every parameter and buffer
with `model` (so weights loaded or converted later are seen by both) and has each `nn.Conv2d`
directly followed by `nn.ReLU` inside an `nn.Sequential` replaced by one fused module. The original
module is left as it was: other backends (OpenVINO, export) keep converting it. Where the op is
missing (another PyTorch build) or a call is not plain CPU inference, the fused module runs the
convolution and the ReLU as before.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from vsqe.ops import plain_cpu_inference


def pointwise_conv_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):
        return False


class ConvReLU(nn.Module):
    """`relu(conv(x))` through oneDNN's ReLU post-op for CPU inference; the plain two steps otherwise
    (training, autograd, CUDA, tracing and export see exactly the original layers)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if not plain_cpu_inference(x, c.weight, c.bias):
            return torch.relu(c(x))
        w, b = c.weight, c.bias
        if torch.is_autocast_enabled("cpu"):  # the op is not in autocast's lists: cast as conv2d would
            dt = torch.get_autocast_dtype("cpu")
            x, w = x.to(dt), w.to(dt)
            b = None if b is None else b.to(dt)
        return torch.ops.mkldnn._convolution_pointwise(
            x, w, b, list(c.padding), list(c.stride), list(c.dilation), c.groups, "relu", [], ""
        )


def _fusable(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.weight.dtype in (torch.float32, torch.bfloat16)
    )


def fuse_conv_relu(model: nn.Module) -> nn.Module:
    """A parameter-sharing copy of `model` with Conv2d+ReLU pairs fused; `model` itself when the
    op is not available or nothing fuses."""
    if not pointwise_conv_available():
        return model
    pairs = [
        (seq, i)
        for seq in model.modules()
        if isinstance(seq, nn.Sequential)
        for i in range(len(seq) - 1)
        if _fusable(seq[i]) and type(seq[i + 1]) is nn.ReLU
    ]
    if not pairs:
        return model
    # Share parameters and buffers: the copy is a second view of the same weights.
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    fused = copy.deepcopy(model, memo)
    for seq in fused.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        layers = list(seq)
        out, i = [], 0
        while i < len(layers):
            if i + 1 < len(layers) and _fusable(layers[i]) and type(layers[i + 1]) is nn.ReLU:
                out.append(ConvReLU(layers[i]))
                i += 2
            else:
                out.append(layers[i])
                i += 1
        if len(out) != len(layers):
            for name in list(seq._modules):
                del seq._modules[name]
            for j, layer in enumerate(out):
                seq.add_module(str(j), layer)
    return fused
