"""backends/fusion.py: Conv2d+ReLU pairs run as one oneDNN call in CPU inference, same output."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vsqe.backends import fusion
from vsqe.backends.fusion import ConvReLU, fuse_conv_relu, pointwise_conv_available
from vsqe.backends.torch_backend import TorchBackend, bf16_supported
from vsqe.models import build_model

needs_op = pytest.mark.skipif(not pointwise_conv_available(), reason="this PyTorch has no mkldnn._convolution_pointwise")


@needs_op
def test_fused_copy_shares_weights_and_leaves_the_model_alone():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Sigmoid())
    fused = fuse_conv_relu(model)
    assert fused is not model
    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.Sigmoid]  # untouched
    assert [type(m) for m in fused] == [ConvReLU, nn.Conv2d, nn.Sigmoid]
    assert fused[0].conv.weight is model[0].weight and fused[1].weight is model[2].weight
    with torch.no_grad():
        model[0].weight.mul_(2)  # a change to the model is seen by the fused copy
    x = torch.rand(1, 3, 9, 11)
    with torch.inference_mode():
        # fp32: oneDNN may pick another algorithm than nn.Conv2d's path; last-bit differences only.
        torch.testing.assert_close(fused(x), model(x), rtol=1e-6, atol=1e-6)


@needs_op
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_backend_output_is_unchanged_by_fusion(precision, monkeypatch):
    if precision == "bf16" and not bf16_supported():
        pytest.skip("no bf16 on this CPU")
    torch.manual_seed(0)
    model, _, _ = build_model("stdf", None, require_weights=False)
    x = torch.rand(1, 7, 1, 40, 56)
    calls = []
    real = torch.ops.mkldnn._convolution_pointwise
    monkeypatch.setattr(fusion, "torch", _CountingTorch(calls, real))
    fused_out = TorchBackend(model, precision=precision, threads=1)(x)
    assert calls, "no fused convolution ran"
    monkeypatch.setattr("vsqe.backends.torch_backend.fuse_conv_relu", lambda m: m)
    plain_out = TorchBackend(model, precision=precision, threads=1)(x)
    if precision == "bf16":
        assert torch.equal(fused_out, plain_out)  # measured bit-identical (docs/benchmarks.md)
    else:
        torch.testing.assert_close(fused_out, plain_out, rtol=1e-6, atol=1e-6)


def test_models_without_pairs_are_not_copied():
    model, _, _ = build_model("mfqev2-y", None, require_weights=False)  # PReLU/BN and functional ReLUs
    assert fuse_conv_relu(model) is model


def test_training_and_autograd_run_the_plain_layers():
    conv = nn.Conv2d(2, 4, 3, padding=1)
    layer = ConvReLU(conv)
    x = torch.rand(1, 2, 6, 6, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert x.grad is not None and conv.weight.grad is not None
    assert torch.equal(out, torch.relu(conv(x)))


def test_without_the_op_the_model_is_returned(monkeypatch):
    monkeypatch.setattr(fusion, "pointwise_conv_available", lambda: False)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    assert fuse_conv_relu(model) is model


class _CountingTorch:
    """`torch` as fusion.py sees it, counting the fused op's calls."""

    def __init__(self, calls: list, real) -> None:
        self._calls, self._real = calls, real

    def __getattr__(self, name):
        if name != "ops":
            return getattr(torch, name)
        outer = self

        class _Ops:
            class mkldnn:  # noqa: N801 - mirrors torch.ops.mkldnn
                @staticmethod
                def _convolution_pointwise(*a):
                    outer._calls.append(1)
                    return outer._real(*a)

        return _Ops
