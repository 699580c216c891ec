"""The device half of BasicVSR++ on TensorRT, on a GPU without TensorRT: CudaSteps' buffers and
stream (backends/tensorrt.py) under StepLoop, with the torch step modules in place of engines.

This checks what TrtSteps adds around its engine calls (frames uploaded once, features and flows
kept as CUDA tensors on one stream, freed memory reused in stream order, frames copied to pinned
host memory as they are made): the loop must give the torch forward's numbers bit for bit, the
same on a repeat and on the default stream. It says nothing about TensorRT itself
(test_basicvsrpp_trt_gpu.py does, where TensorRT is installed). Skipped without a CUDA GPU.

The DCN here is a grid_sample one: torchvision's CUDA deform_conv2d launches its im2col kernel
on the legacy default stream whatever the current stream is, which races with any other stream
(seen on an H100: 8e-3 run-to-run differences); TensorRT's DCN plugins enqueue on the stream
they are given.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vsqe.export.engine import gpu_missing

GPU = gpu_missing()
pytestmark = pytest.mark.skipif(GPU is not None, reason=f"needs a CUDA GPU: {GPU}")

from vsqe.backends.tensorrt import CudaSteps  # noqa: E402
from vsqe.export import basicvsrpp_onnx as bo  # noqa: E402
from vsqe.models.basicvsrpp import BasicVSRPlusPlus  # noqa: E402


def _dcn_grid_sample(x, offset, mask, weight, bias, padding: int):
    """Modulated DCN, stride 1, from grid_sample (offsets (dy, dx) per group and kernel point)."""
    n, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    k = kh * kw
    groups = offset.shape[1] // (2 * k)
    ho, wo = h + 2 * padding - (kh - 1), w + 2 * padding - (kw - 1)
    f = dict(device=x.device, dtype=torch.float32)
    ky, kx = torch.meshgrid(torch.arange(kh, **f) - padding, torch.arange(kw, **f) - padding, indexing="ij")
    off = offset.reshape(n, groups, k, 2, ho, wo)
    py = off[:, :, :, 0] + (torch.arange(ho, **f).view(1, ho, 1) + ky.reshape(k, 1, 1))
    px = off[:, :, :, 1] + (torch.arange(wo, **f).view(1, 1, wo) + kx.reshape(k, 1, 1))
    grid = torch.stack([px * (2.0 / (w - 1)) - 1, py * (2.0 / (h - 1)) - 1], -1).reshape(n * groups, k * ho, wo, 2)
    sampled = F.grid_sample(x.reshape(n * groups, cin // groups, h, w), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=True)
    cols = sampled.reshape(n, groups, cin // groups, k, ho * wo) * mask.reshape(n, groups, 1, k, ho * wo)
    return (weight.reshape(cout, cin * k) @ cols.reshape(n, cin * k, -1)).reshape(n, cout, ho, wo) + bias.view(1, -1, 1, 1)


class _ModuleSteps(CudaSteps):
    """CudaSteps whose `run` calls the torch step modules (the graphs' sources) on its stream."""

    def __init__(self, model: BasicVSRPlusPlus, shapes: bo.StepShapes) -> None:
        super().__init__(shapes, torch.device("cuda", 0))
        self.modules = bo._modules(model)

    def run(self, graph, inputs):
        ins, _ = bo.graph_io(graph, self.shapes)
        assert list(inputs) == list(ins), graph
        for name, t in inputs.items():  # what TrtSteps binds: contiguous float32 CUDA tensors
            assert t.is_cuda and t.is_contiguous() and t.dtype == torch.float32 and tuple(t.shape) == ins[name]
        args = [inputs[k] for k in ins]
        if graph.startswith("step_"):
            args = [*args[:6], args[6:]]
        with torch.cuda.stream(self.stream), torch.no_grad():
            out = self.modules[graph](*args)
        return list(out) if isinstance(out, tuple) else [out]


def _model(channels: int, blocks: int, in_channels: int = 3) -> BasicVSRPlusPlus:
    torch.manual_seed(0)
    model = BasicVSRPlusPlus(channels, blocks, hr_channels=min(channels, 64), in_channels=in_channels)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "conv_offset.6" in key:
                p.normal_(0, 0.02)
    for align in model.deform_align.values():
        align.deform = lambda x, off, m, a=align: _dcn_grid_sample(x, off, m, a.weight, a.bias, a.padding)
    return model.cuda().eval()


@pytest.mark.parametrize("channels, blocks, in_channels, size, frames",
                         [(8, 1, 3, 256, 6), (8, 1, 1, 256, 4), (64, 7, 3, 720, 12)])
def test_loop_on_device_buffers_equals_forward(channels, blocks, in_channels, size, frames):
    model = _model(channels, blocks, in_channels)
    shapes = bo.step_shapes(model, size, size)
    x = torch.rand(1, frames, in_channels, size, size, generator=torch.Generator().manual_seed(1))
    steps = _ModuleSteps(model, shapes)
    loop = bo.StepLoop(steps)
    out = loop(x)
    with torch.no_grad():
        ref = model(x.cuda()).cpu()
    assert out.device.type == "cpu" and out.is_pinned() and out.shape == ref.shape
    assert torch.equal(out, ref)
    assert torch.equal(loop(x), out)  # a second segment reuses freed blocks and the gate constants
    on_default = _ModuleSteps(model, shapes)
    on_default.stream = torch.cuda.current_stream()
    assert torch.equal(bo.StepLoop(on_default)(x), out)
