"""vsqe.ops.deform_conv2d_om: offsets and mask logits in one (channels_last) tensor.

The fused native path (one AVX-512 call: block transpose, vector sigmoid, sampling, GEMM into
an NHWC output) must equal the plain composition deform_conv2d(x, om[:, :2GK],
sigmoid(om[:, 2GK:3GK])); every case that is not CPU inference on a channels_last om must run
that composition itself.
"""
from __future__ import annotations

import pytest
import torch

from vsqe.ops import dcn
from vsqe.ops import deform_conv2d, deform_conv2d_om, om_fast_path_applies

HAS_AVX512 = dcn.native_available() and dcn._dcn_cpu.has_avx512()
needs_avx512 = pytest.mark.skipif(not HAS_AVX512, reason="the fused offset+mask path needs AVX-512 (not on this CPU)")


def _case(n, c, h, w, cout, g, k, s=1, p=1, d=1, extra=0, conv_groups=1, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ho, wo = (h + 2 * p - (d * (k - 1) + 1)) // s + 1, (w + 2 * p - (d * (k - 1) + 1)) // s + 1
    x = torch.rand(n, c, h, w, generator=gen)
    om = torch.randn(n, 3 * g * k * k + extra, ho, wo, generator=gen) * scale
    wt = torch.randn(cout, c // conv_groups, k, k, generator=gen) * 0.2
    b = torch.randn(cout, generator=gen)
    return x, om.contiguous(memory_format=torch.channels_last), wt, b, dict(stride=s, padding=p, dilation=d)


def _composed(x, om, wt, b, g, conf):
    gk = g * wt.shape[2] * wt.shape[3]
    return deform_conv2d(x, om[:, : 2 * gk].contiguous(), torch.sigmoid(om[:, 2 * gk : 3 * gk]).contiguous(), wt, b, **conf)


CASES = [
    # (n, c, h, w, cout, g, k, s, p, d, extra, conv_groups): STDF's DCN, multi-group, tails, stride, dilation
    (1, 7, 37, 53, 64, 7, 3, 1, 1, 1, 0, 1),
    (2, 8, 16, 20, 20, 2, 3, 1, 1, 1, 3, 1),
    (1, 4, 9, 7, 70, 1, 1, 1, 0, 1, 0, 1),
    (1, 6, 13, 17, 12, 3, 3, 2, 1, 1, 0, 2),
    (1, 4, 12, 11, 8, 2, 3, 1, 2, 2, 5, 1),
    (1, 2, 1, 5, 5, 1, 3, 1, 1, 1, 0, 1),
]


@needs_avx512
@pytest.mark.parametrize("case", CASES)
def test_fused_fp32_equals_composition(case):
    n, c, h, w, cout, g, k, s, p, d, extra, cg = case
    x, om, wt, b, conf = _case(n, c, h, w, cout, g, k, s, p, d, extra, cg)
    with torch.inference_mode():
        assert om_fast_path_applies(x, om, wt, b)
        got = deform_conv2d_om(x, om, wt, b, g, **conf)
        want = _composed(x, om, wt, b, g, conf)
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == torch.float32
    # Only the sigmoid differs (a vector e^x against libm's): a few ulp.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


@needs_avx512
@pytest.mark.parametrize("om_dtype", [torch.bfloat16, torch.float32])
def test_fused_bf16_autocast_matches_composition(om_dtype):
    x, om, wt, b, conf = _case(1, 7, 40, 52, 64, 7, 3)
    om = om.to(om_dtype)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = deform_conv2d_om(x, om, wt, b, 7, **conf)
        want = _composed(x, om, wt, b, 7, conf)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    # The composition rounds the mask to bf16 before sampling, the fused path keeps it fp32:
    # both are within a bf16 step of the fp32 result.
    xq = x.to(torch.bfloat16).float()
    ref = _composed(xq, om.float(), wt.to(torch.bfloat16).float(), b.to(torch.bfloat16).float(), 7, conf)
    step = ref.abs().max().item() * 2**-7
    assert (got.float() - ref).abs().max().item() <= step
    assert (got.float() - want.float()).abs().max().item() <= 2 * step


@needs_avx512
def test_sigmoid_extremes_and_thread_count():
    x, om, wt, b, conf = _case(1, 4, 24, 30, 16, 2, 3, scale=1.0)
    gk = 18
    om = om.clone()
    om[:, 2 * gk : 2 * gk + 6] = torch.tensor([-1e30, -100.0, -20.0, 20.0, 100.0, 1e30]).view(1, 6, 1, 1)
    with torch.inference_mode():
        want = _composed(x, om, wt, b, 2, conf)
        old = torch.get_num_threads()
        try:
            outs = []
            for t in (1, 2):
                torch.set_num_threads(t)
                outs.append(deform_conv2d_om(x, om, wt, b, 2, **conf))
        finally:
            torch.set_num_threads(old)
    assert torch.isfinite(outs[0]).all()
    torch.testing.assert_close(outs[0], want, rtol=1e-5, atol=2e-5)
    assert torch.equal(outs[0], outs[1])  # blocks are independent: no thread-count effect


def test_other_cases_run_the_composition_exactly():
    x, om, wt, b, conf = _case(1, 7, 20, 24, 16, 7, 3)
    nchw = om.contiguous()
    with torch.inference_mode():
        assert not om_fast_path_applies(x, nchw, wt, b)  # not channels_last
        assert torch.equal(deform_conv2d_om(x, nchw, wt, b, 7, **conf), _composed(x, nchw, wt, b, 7, conf))
    # training: gradients flow through the composition
    wt_g = wt.clone().requires_grad_(True)
    assert not om_fast_path_applies(x, om, wt_g, b)
    out = deform_conv2d_om(x, om, wt_g, b, 7, **conf)
    out.sum().backward()
    assert wt_g.grad is not None and torch.isfinite(wt_g.grad).all()


def test_too_few_channels_is_an_error():
    x, om, wt, b, conf = _case(1, 7, 10, 10, 16, 7, 3)
    with pytest.raises(ValueError, match="needs 189 channels"):
        deform_conv2d_om(x, om[:, :188], wt, b, 7, **conf)
