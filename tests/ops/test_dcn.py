"""Tests of the DCNv2 op (vsqe.ops.deform_conv2d) against torchvision.ops.deform_conv2d.

Every CPU code path is checked: the fused AVX-512 forward, the AVX-512 im2col + torch GEMM, and
the scalar im2col, which is the shared dcn_math.h code the CUDA kernels also run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
from typing import Optional

import pytest
import torch
import torchvision

from vsqe.ops import dcn
from vsqe.ops import deform_conv2d

HAS_AVX512 = dcn.native_available() and dcn._dcn_cpu.has_avx512()

# (name, CPU_FUSED, CPU_SIMD): the three CPU forward paths.
_PATH_FLAGS = {"fused": (True, True), "im2col_simd": (False, True), "im2col_scalar": (False, False)}
PATHS = [
    pytest.param("fused", marks=pytest.mark.skipif(not HAS_AVX512, reason="no AVX-512")),
    "im2col_simd",
    "im2col_scalar",
]


@pytest.fixture
def path(request, monkeypatch):
    fused, simd = _PATH_FLAGS[request.param]
    monkeypatch.setattr(dcn, "CPU_FUSED", fused)
    monkeypatch.setattr(dcn, "CPU_SIMD", simd)
    return request.param


def _out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def make_case(
    n: int, c: int, h: int, w: int, cout: int, g: int, k: int, s: int, p: int, d: int,
    bias: bool, off_scale: float = 5.0, spikes: bool = True, dtype=torch.float32, seed: int = 0,
):
    """Random DCN inputs. Offsets ~ N(0, off_scale^2) with some +-30 px spikes, so many samples
    fall partly or wholly outside the image."""
    gen = torch.Generator().manual_seed(seed)
    ho, wo = _out(h, k, s, p, d), _out(w, k, s, p, d)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    off = torch.randn(n, 2 * g * k * k, ho, wo, generator=gen, dtype=dtype) * off_scale
    if spikes:
        sel = torch.rand(off.shape, generator=gen) < 0.05
        sign = torch.where(torch.rand(off.shape, generator=gen) < 0.5, -1.0, 1.0).to(dtype)
        off = torch.where(sel, 30.0 * sign, off)
    msk = torch.rand(n, g * k * k, ho, wo, generator=gen, dtype=dtype)
    wt = torch.randn(cout, c, k, k, generator=gen, dtype=dtype) * 0.2
    b = torch.randn(cout, generator=gen, dtype=dtype) if bias else None
    return x, off, msk, wt, b, (s, s), (p, p), (d, d)


def tv(x, off, msk, wt, b: Optional[torch.Tensor], s, p, d) -> torch.Tensor:
    return torchvision.ops.deform_conv2d(x, off, wt, b, s, p, d, msk)


# (n, c, h, w, cout, deformable groups, kernel, stride, padding, dilation, bias)
CASES = [
    (1, 7, 13, 17, 16, 7, 3, 1, 1, 1, True),  # STDF-like: one channel per deformable group
    (2, 14, 13, 17, 8, 2, 3, 2, 0, 2, False),  # batch, 2 groups, stride 2, dilation 2, no pad
    (2, 6, 5, 3, 5, 1, 3, 1, 1, 1, True),  # tiny odd image
    (1, 7, 1, 1, 4, 7, 3, 1, 1, 1, True),  # 1x1 image
    (3, 4, 9, 11, 6, 2, 1, 1, 0, 1, False),  # 1x1 kernel
    (1, 21, 24, 40, 33, 7, 3, 1, 1, 1, True),  # 3 channels per group, Cout not a multiple of 8
    (2, 8, 20, 37, 16, 1, 3, 2, 1, 2, True),  # one group, stride 2 + dilation 2 + pad 1
    (1, 4, 6, 1, 3, 2, 3, 1, 1, 1, True),  # one-pixel-wide image (no pair loads)
    (1, 4, 1, 6, 3, 2, 3, 1, 1, 1, False),  # one-pixel-high image
]


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:4])) + f"-g{c[5]}k{c[6]}s{c[7]}p{c[8]}d{c[9]}")
def test_forward_matches_torchvision_fp32(path, case):
    n, c, h, w, cout, g, k, s, p, d, bias = case
    args = make_case(n, c, h, w, cout, g, k, s, p, d, bias)
    ref = tv(*args)
    out = deform_conv2d(*args)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_forward_conv_groups(path):
    x, off, msk, _, b, s, p, d = make_case(2, 8, 12, 15, 6, 2, 3, 1, 1, 1, True)
    wt = torch.randn(6, 4, 3, 3) * 0.2  # groups = 8 // 4 = 2
    ref = tv(x, off, msk, wt, b, s, p, d)
    out = deform_conv2d(x, off, msk, wt, b, s, p, d)
    assert (out - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("offset_dtype", [torch.bfloat16, torch.float32])
def test_forward_bf16(path, offset_dtype):
    x, off, msk, wt, b, s, p, d = make_case(2, 7, 19, 23, 16, 7, 3, 1, 1, 1, True, off_scale=3.0)
    xb, wb, bb = x.bfloat16(), wt.bfloat16(), b.bfloat16()
    ob, mb = off.to(offset_dtype), msk.to(offset_dtype)
    out = deform_conv2d(xb, ob, mb, wb, bb, s, p, d)
    assert out.dtype == torch.bfloat16
    # Reference: fp32 math on exactly the values the bf16 op saw.
    ref = tv(xb.float(), ob.float(), mb.float(), wb.float(), bb.float(), s, p, d)
    err = (out.float() - ref).abs()
    # bf16 keeps 8 significant bits: the output rounding (and, on the im2col path, the rounding
    # of each sampled column) stays well inside 1 % of the output scale.
    assert err.max().item() <= 1e-2 * ref.abs().max().item()
    assert err.mean().item() <= 2e-3 * ref.abs().mean().item() + 1e-3


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("hw", [(6, 1), (1, 6), (1, 1), (2, 2)])
def test_forward_bf16_tiny_images(path, hw):
    x, off, msk, wt, b, s, p, d = make_case(2, 4, *hw, 5, 2, 3, 1, 1, 1, True, off_scale=1.0)
    xb, ob, mb, wb, bb = (t.bfloat16() for t in (x, off, msk, wt, b))
    out = deform_conv2d(xb, ob, mb, wb, bb, s, p, d)
    ref = tv(xb.float(), ob.float(), mb.float(), wb.float(), bb.float(), s, p, d)
    assert (out.float() - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()


@pytest.mark.skipif(not HAS_AVX512, reason="no AVX-512")
@pytest.mark.parametrize("dtype,hw", [(torch.float32, (260, 261)), (torch.bfloat16, (260, 260))])
def test_fused_large_output_streaming_stores(dtype, hw):
    # > 16 MiB of output: the fused kernel writes it with streaming stores (aligned or not).
    x, off, msk, wt, b, s, p, d = make_case(1, 7, *hw, 64, 7, 3, 1, 1, 1, True, off_scale=3.0)
    a = [t.to(dtype) for t in (x, off, msk, wt, b)]
    out = deform_conv2d(*a, s, p, d)
    ref = tv(*(t.float() for t in a), s, p, d)
    tol = 1e-4 if dtype == torch.float32 else 1e-2 * ref.abs().max().item()
    assert (out.float() - ref).abs().max().item() <= tol


def test_forward_float64_and_float16():
    x, off, msk, wt, b, s, p, d = make_case(1, 4, 9, 10, 5, 2, 3, 1, 1, 1, True)
    ref = tv(x.double(), off.double(), msk.double(), wt.double(), b.double(), s, p, d)
    out = deform_conv2d(x.double(), off.double(), msk.double(), wt.double(), b.double(), s, p, d)
    assert out.dtype == torch.float64 and (out - ref).abs().max().item() <= 1e-10
    out16 = deform_conv2d(x.half(), off.half(), msk.half(), wt.half(), b.half(), s, p, d)
    assert out16.dtype == torch.float16  # computed in fp32 on the CPU
    ref16 = tv(x.half().float(), off.half().float(), msk.half().float(), wt.half().float(), b.half().float(), s, p, d)
    assert (out16.float() - ref16).abs().max().item() <= 1e-2 * ref16.abs().max().item()


def test_forward_noncontiguous_and_no_mask():
    x, off, msk, wt, b, s, p, d = make_case(2, 6, 10, 12, 7, 3, 3, 1, 1, 1, True)
    xc = x.to(memory_format=torch.channels_last)
    offc = off.transpose(2, 3).contiguous().transpose(2, 3)
    out = deform_conv2d(xc, offc, msk, wt, b, s, p, d)
    assert (out - tv(x, off, msk, wt, b, s, p, d)).abs().max().item() <= 1e-4
    out = deform_conv2d(x, off, None, wt, b, s, p, d)
    assert (out - tv(x, off, torch.ones_like(msk), wt, b, s, p, d)).abs().max().item() <= 1e-4


def test_forward_independent_of_thread_count():
    args = make_case(2, 7, 41, 45, 16, 7, 3, 1, 1, 1, True)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = deform_conv2d(*args)
        torch.set_num_threads(max(2, old))
        many = deform_conv2d(*args)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)


def test_bad_shapes_raise():
    x, off, msk, wt, b, s, p, d = make_case(1, 4, 8, 8, 4, 2, 3, 1, 1, 1, True)
    with pytest.raises(ValueError):
        deform_conv2d(x, off[:, :-1], msk, wt, b, s, p, d)
    with pytest.raises(ValueError):
        deform_conv2d(x, off, msk[:, :, :-1], wt, b, s, p, d)
    with pytest.raises(ValueError):
        deform_conv2d(x, off, msk, wt, b[:-1], s, p, d)


# ---- backward ---------------------------------------------------------------------------------


def _grads(fn, args, grad_out):
    leaves = [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]
    out = fn(*leaves)
    out.backward(grad_out)
    return out, [a.grad for a in leaves[:5] if isinstance(a, torch.Tensor)]


@pytest.mark.parametrize("path", PATHS[1:], indirect=True)  # backward recomputes columns via im2col
@pytest.mark.parametrize(
    "case",
    [
        (2, 7, 11, 13, 8, 7, 3, 1, 1, 1, True),
        (1, 6, 9, 10, 5, 2, 3, 2, 0, 2, True),
        (2, 4, 7, 9, 3, 1, 1, 1, 0, 1, False),
    ],
    ids=["stdf-like", "s2d2", "1x1"],
)
def test_backward_matches_torchvision(path, case):
    n, c, h, w, cout, g, k, s, p, d, bias = case
    x, off, msk, wt, b, s, p, d = make_case(n, c, h, w, cout, g, k, s, p, d, bias, off_scale=3.0)
    # tv's signature order is (input, offset, weight, bias, ..., mask); ours (input, offset, mask, weight, bias).
    ours_args = (x, off, msk, wt, b, s, p, d)
    ref_out = tv(x, off, msk, wt, b, s, p, d)
    grad_out = torch.randn_like(ref_out)
    out, g_ours = _grads(deform_conv2d, ours_args, grad_out)

    def tv_fn(x_, off_, msk_, wt_, b_, s_, p_, d_):
        return tv(x_, off_, msk_, wt_, b_, s_, p_, d_)

    _, g_ref = _grads(tv_fn, ours_args, grad_out)
    assert (out - ref_out).abs().max().item() <= 1e-4
    names = ["input", "offset", "mask", "weight", "bias"]
    for name, a, r in zip(names, g_ours, g_ref):
        if r is None:
            assert a is None
            continue
        scale = r.abs().max().item() + 1e-6
        err = (a - r).abs().max().item()
        assert err <= 1e-3 * scale + 1e-5, f"grad {name}: max err {err} at scale {scale}"


def test_gradcheck_float64():
    x, off, msk, wt, b, s, p, d = make_case(1, 4, 5, 6, 3, 2, 3, 1, 1, 1, True, off_scale=1.5, spikes=False)
    args = [t.double().requires_grad_(True) for t in (x, off, msk, wt, b)]
    assert torch.autograd.gradcheck(
        lambda *a: deform_conv2d(*a, s, p, d), args, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True
    )


def test_backward_deterministic():
    # big enough (> 2 x 32k samples) for the native code to really use two threads
    args = make_case(1, 7, 41, 45, 8, 7, 3, 1, 1, 1, True, off_scale=2.0)
    grad_out = torch.randn(1, 8, 41, 45)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, g1 = _grads(deform_conv2d, args, grad_out)
        torch.set_num_threads(max(2, old))
        _, g2 = _grads(deform_conv2d, args, grad_out)
    finally:
        torch.set_num_threads(old)
    # The native col2im (input, offset, mask) and the bias sum are bit-identical at any thread
    # count. The weight gradient is an MKL GEMM over the pixels (`_grad_weight_add`), whose split
    # of that reduction depends on the thread count on some CPUs (seen in session 12: 2e-5 at a
    # scale of 65, float32 reordering), so it is held to float32 rounding, not to the bit.
    g_in1, g_off1, g_msk1, g_w1, g_b1 = g1
    g_in2, g_off2, g_msk2, g_w2, g_b2 = g2
    for a, b in ((g_in1, g_in2), (g_off1, g_off2), (g_msk1, g_msk2), (g_b1, g_b2)):
        assert torch.equal(a, b)
    assert (g_w1 - g_w2).abs().max() <= 1e-6 * g_w1.abs().max()


def test_backward_bf16_grads_have_input_dtypes():
    x, off, msk, wt, b, s, p, d = make_case(1, 7, 9, 11, 8, 7, 3, 1, 1, 1, True, off_scale=2.0)
    leaves = [x.bfloat16(), off.float(), msk.float(), wt.bfloat16(), b.bfloat16()]
    leaves = [t.requires_grad_(True) for t in leaves]
    deform_conv2d(*leaves, s, p, d).float().sum().backward()
    for t in leaves:
        assert t.grad is not None and t.grad.dtype == t.dtype and torch.isfinite(t.grad.float()).all()


# ---- torch integration ------------------------------------------------------------------------


def test_autocast_cpu_bf16():
    x, off, msk, wt, b, s, p, d = make_case(1, 7, 16, 20, 16, 7, 3, 1, 1, 1, True, off_scale=3.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_conv2d(x, off, msk, wt, b, s, p, d)
    assert out.dtype == torch.bfloat16
    ref = tv(x.bfloat16().float(), off, msk, wt.bfloat16().float(), b.bfloat16().float(), s, p, d)
    assert (out.float() - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()
    # training under autocast: gradients reach the fp32 leaves in fp32
    leaves = [t.clone().requires_grad_(True) for t in (x, off, msk, wt, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = deform_conv2d(*leaves, s, p, d)
    y.float().square().mean().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in leaves)


def test_opcheck():
    x, off, msk, wt, b, s, p, d = make_case(1, 4, 6, 7, 3, 2, 3, 1, 1, 1, True, off_scale=2.0, spikes=False)
    args = (x, off, msk, wt, b, list(s), list(p), list(d), 1, 2)
    torch.library.opcheck(
        torch.ops.vsqe.deform_conv2d.default,
        args,
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


@pytest.mark.skipif(os.environ.get("VSQE_SLOW_TESTS") != "1", reason="~10 CPU s of compiling; set VSQE_SLOW_TESTS=1")
def test_torch_compile_fullgraph():
    x, off, msk, wt, b, s, p, d = make_case(1, 7, 12, 14, 8, 7, 3, 1, 1, 1, True)
    wt.requires_grad_(True)

    def f(x_, off_, msk_):
        return deform_conv2d(x_, off_, msk_, wt, b, s, p, d)

    y = torch.compile(f, backend="aot_eager", fullgraph=True)(x, off, msk)
    assert torch.equal(y, f(x, off, msk))
    y.sum().backward()
    assert wt.grad is not None


def test_torch_export_keeps_the_op():
    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(8, 7, 3, 3) * 0.1)

        def forward(self, x, off, msk):
            return deform_conv2d(x, off, msk, self.weight, None, 1, 1)

    x, off, msk, *_ = make_case(1, 7, 8, 8, 8, 7, 3, 1, 1, 1, False)
    m = M()
    ep = torch.export.export(m, (x, off, msk))
    assert "vsqe.deform_conv2d" in str(ep.graph)
    assert torch.equal(ep.module()(x, off, msk), m(x, off, msk))


def test_torchvision_fallback(monkeypatch):
    args = make_case(1, 7, 9, 9, 8, 7, 3, 1, 1, 1, True)
    native = deform_conv2d(*args)
    monkeypatch.setattr(dcn, "_impl", dcn.get_impl())
    dcn.set_impl("torchvision")
    assert dcn.get_impl() == "torchvision"
    assert torch.equal(deform_conv2d(*args), tv(*args))
    dcn.set_impl("native")
    assert (deform_conv2d(*args) - native).abs().max() == 0
    with pytest.raises(ValueError):
        dcn.set_impl("nope")


# ---- CUDA -------------------------------------------------------------------------------------


def test_cuda_extension_built_when_nvcc_exists():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        msg = "NO nvcc ON PATH: the CUDA DCN kernels were NOT compiled or checked in this run"
        warnings.warn(msg)
        pytest.skip(msg)
    spec = importlib.util.find_spec("vsqe._dcn_cuda")
    assert spec is not None and spec.origin, f"nvcc at {nvcc} but vsqe._dcn_cuda was not built"
    assert dcn.cuda_available(), "vsqe._dcn_cuda exists but did not import"
    # importing must not need a GPU or a driver (static cudart): we got here without one
    assert hasattr(dcn._dcn_cuda, "im2col") and hasattr(dcn._dcn_cuda, "col2im")


@pytest.mark.skipif(not (dcn.cuda_available() and torch.cuda.is_available()), reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_forward_backward_match_cpu(dtype):
    x, off, msk, wt, b, s, p, d = make_case(2, 7, 19, 23, 16, 7, 3, 1, 1, 1, True, off_scale=3.0)
    ref = tv(x, off, msk, wt, b, s, p, d)
    dev = [t.cuda().to(dtype) for t in (x, off, msk, wt, b)]
    out = deform_conv2d(*dev, s, p, d)
    assert out.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 2e-2 * ref.abs().max().item()
    assert (out.float().cpu() - ref).abs().max().item() <= tol
    if dtype == torch.float32:
        grad_out = torch.randn_like(ref)
        _, g_cpu = _grads(deform_conv2d, (x, off, msk, wt, b, s, p, d), grad_out)
        _, g_gpu = _grads(deform_conv2d, tuple(t.cuda() for t in (x, off, msk, wt, b)) + (s, p, d), grad_out.cuda())
        for a, r in zip(g_gpu, g_cpu):
            assert (a.cpu() - r).abs().max().item() <= 1e-3 * (r.abs().max().item() + 1e-6)


class _FakeCudaModule:
    """Stands in for vsqe._dcn_cuda with the CPU kernels, image by image, so the CUDA wrapper's
    batching, GEMMs and backward bookkeeping are checked on machines without a GPU."""

    @staticmethod
    def _img_elems(shape):
        c, kh, kw, ho, wo = shape[1], shape[5], shape[6], shape[13], shape[14]
        return c * kh * kw * ho * wo, ho * wo

    def im2col(self, dt_in, x, dt_off, off, msk, cols, shape, n0, nb, device, stream):
        per, p = self._img_elems(shape)
        item = {0: 4, 1: 2, 2: 8, 3: 2}[dt_in]
        for j in range(nb):
            dcn._dcn_cpu.im2col(dt_in, x, dt_off, off, msk, cols + j * per * item, shape, n0 + j, 0, p, 1, True)

    def col2im(self, dt, x, off, msk, gcols, g_in, g_off, g_msk, shape, n0, nb, device, stream):
        per, p = self._img_elems(shape)
        item = {0: 4, 2: 8}[dt]
        for j in range(nb):
            dcn._dcn_cpu.col2im(dt, x, off, msk, gcols + j * per * item, g_in, g_off, g_msk, shape, n0 + j, 0, p, 1)


@pytest.mark.parametrize("conv_groups", [1, 2])
def test_cuda_wrapper_logic_with_cpu_kernels(monkeypatch, conv_groups):
    monkeypatch.setattr(dcn, "_dcn_cuda", _FakeCudaModule())
    monkeypatch.setattr(dcn, "_cuda_launch_args", lambda x: (0, 0))
    monkeypatch.setattr(dcn, "CUDA_MAX_COL_ELEMENTS", 2 * 8 * 9 * 13 * 15)  # 2 images per slice
    x, off, msk, _, b, s, p, d = make_case(5, 8, 13, 15, 6, 2, 3, 1, 1, 1, True, off_scale=3.0)
    wt = torch.randn(6, 8 // conv_groups, 3, 3) * 0.2
    conf = (list(s), list(p), list(d), conv_groups, 2)
    ref = tv(x, off, msk, wt, b, s, p, d)
    out = dcn._forward("cuda", x, off, msk, wt, b, *conf)
    assert (out - ref).abs().max().item() <= 1e-4
    grad_out = torch.randn_like(ref)
    _, g_ref = _grads(tv, (x, off, msk, wt, b, s, p, d), grad_out)
    grads = dcn._backward("cuda", grad_out, x, off, msk, wt, *conf)
    for a, r in zip(grads, g_ref):
        assert (a - r).abs().max().item() <= 1e-3 * (r.abs().max().item() + 1e-6)
