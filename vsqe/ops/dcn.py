"""DCNv2 (modulated deformable convolution) as the torch custom op ``vsqe::deform_conv2d``.

Semantics are those of ``torchvision.ops.deform_conv2d`` with a mask (and of mmcv's
``ModulatedDeformConv2d``); see docs/dcn.md. The native kernels (``vsqe._dcn_cpu`` and, when
built, ``vsqe._dcn_cuda``) take plain buffers (integer addresses of contiguous tensors). On
AVX-512 CPUs the forward is one fused native call (sampling and GEMM per L2-sized block of
pixels); elsewhere, in the backward and on CUDA, the native code does the deformable im2col /
col2im and the GEMMs with the weight are torch matmuls (oneDNN/MKL or cuBLAS).

Dtypes:
  * float32 and float64 run as they are; bfloat16 runs in bfloat16 storage with fp32
    accumulation (samples and GEMM sums are fp32; the fused CPU path rounds only the output,
    the im2col paths also round each sampled column to bf16 before the fp32-accumulating
    matmul). float16 runs in float32 on the CPU, natively on CUDA.
  * The output has the input's dtype; weight and bias are cast to it.
  * offset and mask are read in their own dtype when it is float32 or the input's dtype (so
    fp32 offsets keep their precision under bf16 autocast); any other dtype is cast to float32.
    mask is cast to offset's dtype when they differ.
  * Under ``torch.autocast`` the op runs in the autocast dtype: input, weight and bias are cast
    to it, offset and mask follow the rule above.
  * Backward always computes in float32 (float64 for float64 inputs) and casts each gradient
    back to its tensor's dtype.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "deform_conv2d",
    "deform_conv2d_om",
    "om_fast_path_applies",
    "plain_cpu_inference",
    "set_impl",
    "get_impl",
    "native_available",
    "cuda_available",
]

try:  # the CPU module is always built; a missing one means a broken install
    from vsqe import _dcn_cpu  # type: ignore[attr-defined]

    _CPU_IMPORT_ERROR: Optional[BaseException] = None
except ImportError as _e:  # pragma: no cover - only on broken installs
    _dcn_cpu = None
    _CPU_IMPORT_ERROR = _e

try:  # built only where nvcc was found; needs no CUDA library to import
    from vsqe import _dcn_cuda  # type: ignore[attr-defined]
except ImportError:
    _dcn_cuda = None

IntPair = Union[int, Sequence[int]]

# torch dtype -> vsqe::dcn::DType code (cpp/dcn/dcn_types.h)
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float64: 2, torch.float16: 3}

# CPU forward: the fused native kernel (sampling + AVX-512 GEMM in one call) where the CPU has
# AVX-512 and the dtype is fp32/bf16; otherwise native im2col + torch GEMM per block of output
# pixels. Set CPU_FUSED = False to force the second path (benchmarks, tests). See docs/dcn.md.
CPU_FUSED = True
# Let the native im2col use its AVX-512 path where the CPU has it; False forces the portable
# scalar code, which is dcn_math.h, the math the CUDA kernels run (tests check both).
CPU_SIMD = True
# Output pixels per im2col block of the unfused path and of the backward: bounds the column
# buffer (C*K x this) at large frame sizes.
CPU_BLOCK_PIXELS = 16384
# Upper bound on the CUDA column buffer (elements) per call; images are batched up to it.
CUDA_MAX_COL_ELEMENTS = 1 << 27

_IMPLS = ("native", "torchvision")
_impl = os.environ.get("VSQE_DCN", "native").strip().lower() or "native"
if _impl not in _IMPLS:
    raise ValueError(f"VSQE_DCN must be one of {_IMPLS}, got {_impl!r}")


def set_impl(name: str) -> None:
    """Choose what :func:`deform_conv2d` runs: ``"native"`` (the vsqe op) or ``"torchvision"``
    (``torchvision.ops.deform_conv2d``, for reference and benchmarks). The environment variable
    ``VSQE_DCN`` sets the initial value."""
    global _impl
    name = name.strip().lower()
    if name not in _IMPLS:
        raise ValueError(f"DCN implementation must be one of {_IMPLS}, got {name!r}")
    _impl = name


def get_impl() -> str:
    """The implementation :func:`deform_conv2d` currently uses."""
    return _impl


def native_available() -> bool:
    """Whether the native CPU module imported."""
    return _dcn_cpu is not None


def cuda_available() -> bool:
    """Whether the native CUDA module was built and imported (says nothing about a GPU)."""
    return _dcn_cuda is not None


# ---- shapes -----------------------------------------------------------------------------------


def _pair(v: IntPair, name: str) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    out = [int(x) for x in v]
    if len(out) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    return out


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def _check(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    offset_groups: int,
) -> tuple[int, int]:
    """Validates shapes and returns the output size (Ho, Wo)."""
    if input.dim() != 4 or offset.dim() != 4 or mask.dim() != 4 or weight.dim() != 4:
        raise ValueError("deform_conv2d: input, offset, mask and weight must be 4-D")
    if len(stride) != 2 or len(padding) != 2 or len(dilation) != 2:
        raise ValueError("deform_conv2d: stride, padding and dilation must be pairs")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError("deform_conv2d: stride and dilation must be >= 1, padding >= 0")
    n, c, h, w = input.shape
    cout, cin_g, kh, kw = weight.shape
    if groups < 1 or c % groups or cout % groups or cin_g * groups != c:
        raise ValueError(
            f"deform_conv2d: weight {tuple(weight.shape)} does not fit {c} input channels "
            f"in {groups} groups"
        )
    if offset_groups < 1 or c % offset_groups:
        raise ValueError(f"deform_conv2d: {c} channels do not split into {offset_groups} offset groups")
    ho = _out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = _out_size(w, kw, stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError("deform_conv2d: the output would be empty")
    k = kh * kw
    if tuple(offset.shape) != (n, 2 * offset_groups * k, ho, wo):
        raise ValueError(
            f"deform_conv2d: offset must be {(n, 2 * offset_groups * k, ho, wo)}, got {tuple(offset.shape)}"
        )
    if tuple(mask.shape) != (n, offset_groups * k, ho, wo):
        raise ValueError(
            f"deform_conv2d: mask must be {(n, offset_groups * k, ho, wo)}, got {tuple(mask.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"deform_conv2d: bias must be ({cout},), got {tuple(bias.shape)}")
    return ho, wo


def _shape_arg(x: Tensor, kh: int, kw: int, stride, padding, dilation, g: int, ho: int, wo: int) -> list[int]:
    n, c, h, w = x.shape
    return [n, c, h, w, g, kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], ho, wo]


def _compute_dtypes(device: torch.device, input_dtype: torch.dtype, offset_dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(dtype the input is computed in, dtype offset and mask are read in)."""
    if input_dtype in (torch.float32, torch.float64, torch.bfloat16):
        cdt = input_dtype
    elif input_dtype == torch.float16 and device.type == "cuda":
        cdt = input_dtype
    else:
        cdt = torch.float32
    if cdt == torch.float64:
        odt = torch.float64
    elif offset_dtype in (cdt, torch.float32):
        odt = offset_dtype
    else:
        odt = torch.float32
    return cdt, odt


# ---- one path for every device ----------------------------------------------------------------
# As in torchvision's ops, the op is device-neutral: argument checks, output size, dtype rules,
# buffer preparation and the im2col / GEMM / col2im loops are written once (_forward, _backward).
# A device adds only what differs, one _Device row: its native module, how the output is cut
# into tiles for the column buffer, the trailing arguments of its native calls, its GEMM, and
# optionally a fused forward.


class _Tile(NamedTuple):
    """A piece of the output that one im2col / col2im call covers."""

    index: tuple  # into the [N, Cout, P] views of the output and its gradient
    cols: tuple[int, ...]  # shape of its column buffer (C*K rows, one column per output pixel)
    where: tuple[int, ...]  # the native calls' arguments that name it


class _Device(NamedTuple):
    module: Callable[[], Any]  # the native module; raises where it is missing
    tiles: Callable[[int, int, int], tuple[int, list[_Tile]]]  # (N, C*K, P) -> (buffer elements, tiles)
    launch: Callable[[Tensor], tuple]  # the trailing arguments of every native call
    im2col_options: Callable[[], dict]  # keyword arguments of its im2col only
    gemm: Callable[[Tensor, Tensor, Tensor, Optional[Tensor], int], None]  # out tile = w @ cols (+ bias)
    fused_forward: Callable[..., Optional[Tensor]]  # the whole forward in one call, or None where it does not apply


def _forward(
    device: str, input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor],
    stride: list[int], padding: list[int], dilation: list[int], groups: int, offset_groups: int,
) -> Tensor:
    """The forward of ``vsqe::deform_conv2d`` with the kernels of `device` ("cpu", "cuda")."""
    dev = _DEVICES[device]
    native = dev.module()
    ho, wo = _check(input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups)
    cdt, odt = _compute_dtypes(input.device, input.dtype, offset.dtype)
    x = input.to(cdt).contiguous()
    off = offset.to(odt).contiguous()
    msk = mask.to(odt).contiguous()
    cout, cin_g, kh, kw = weight.shape
    n, c = x.shape[:2]
    shape = _shape_arg(x, kh, kw, stride, padding, dilation, offset_groups, ho, wo)
    out = dev.fused_forward(x, off, msk, weight, bias, shape, groups)
    if out is None:
        # Native im2col per tile, GEMM with the weight by torch.
        w = weight.to(cdt).reshape(groups, cout // groups, cin_g * kh * kw)
        b = None if bias is None else bias.to(cdt)
        ck, p = c * kh * kw, ho * wo
        out = torch.empty((n, cout, ho, wo), dtype=cdt, device=x.device)
        out_flat = out.view(n, cout, p)
        size, tiles = dev.tiles(n, ck, p)
        col_buf = torch.empty(size, dtype=cdt, device=x.device)
        launch, options = dev.launch(x), dev.im2col_options()
        for t in tiles:
            cols = col_buf[: math.prod(t.cols)].view(t.cols)
            native.im2col(
                _DTYPE_CODE[cdt], x.data_ptr(), _DTYPE_CODE[odt], off.data_ptr(), msk.data_ptr(),
                cols.data_ptr(), shape, *t.where, *launch, **options,
            )
            dev.gemm(out_flat[t.index], w, cols, b, groups)
    return out if out.dtype == input.dtype else out.to(input.dtype)


def _backward(
    device: str, grad: Tensor, input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor,
    stride: list[int], padding: list[int], dilation: list[int], groups: int, offset_groups: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (input, offset, mask, weight, bias) with the kernels of `device`: computed in
    float32 (float64 for float64 inputs), each cast back to its tensor's dtype."""
    dev = _DEVICES[device]
    native = dev.module()
    ho, wo = _check(input, offset, mask, weight, None, stride, padding, dilation, groups, offset_groups)
    cdt = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = input.to(cdt).contiguous()
    off = offset.to(cdt).contiguous()
    msk = mask.to(cdt).contiguous()
    go = grad.to(cdt).contiguous()
    cout, cin_g, kh, kw = weight.shape
    n, c = x.shape[:2]
    w = weight.to(cdt).reshape(groups, cout // groups, cin_g * kh * kw)
    shape = _shape_arg(x, kh, kw, stride, padding, dilation, offset_groups, ho, wo)
    g_in = torch.zeros_like(x)
    g_off = torch.empty_like(off)
    g_msk = torch.empty_like(msk)
    g_w = torch.zeros_like(w)

    ck, p = c * kh * kw, ho * wo
    size, tiles = dev.tiles(n, ck, p)
    gcol_buf = torch.empty(size, dtype=cdt, device=x.device)
    col_buf = torch.empty(size, dtype=cdt, device=x.device)
    go_flat = go.view(n, go.shape[1], p)
    code = _DTYPE_CODE[cdt]
    launch, options = dev.launch(x), dev.im2col_options()
    for t in tiles:
        gcols = gcol_buf[: math.prod(t.cols)].view(t.cols)
        cols = col_buf[: math.prod(t.cols)].view(t.cols)
        go_tile = go_flat[t.index]
        _grad_cols_into(gcols, w, go_tile, groups)
        native.col2im(
            code, x.data_ptr(), off.data_ptr(), msk.data_ptr(), gcols.data_ptr(),
            g_in.data_ptr(), g_off.data_ptr(), g_msk.data_ptr(), shape, *t.where, *launch,
        )
        native.im2col(
            code, x.data_ptr(), code, off.data_ptr(), msk.data_ptr(), cols.data_ptr(),
            shape, *t.where, *launch, **options,
        )
        _grad_weight_add(g_w, go_tile, cols, groups)

    g_b = go.sum(dim=(0, 2, 3))
    return (
        g_in.to(input.dtype),
        g_off.to(offset.dtype),
        g_msk.to(mask.dtype),
        g_w.view(weight.shape).to(weight.dtype),
        g_b.to(weight.dtype),
    )


def _grad_cols_into(dst: Tensor, w: Tensor, go: Tensor, groups: int) -> None:
    """dst[..., CK, L] = w^T @ go[..., Cout, L], per conv group."""
    cout_g, ck_g = w.shape[1], w.shape[2]
    for gi in range(groups):
        torch.matmul(
            w[gi].t(), go[..., gi * cout_g : (gi + 1) * cout_g, :], out=dst[..., gi * ck_g : (gi + 1) * ck_g, :]
        )


def _grad_weight_add(g_w: Tensor, go: Tensor, cols: Tensor, groups: int) -> None:
    """g_w[g] += go[..., Cout/g, L] @ cols[..., CK/g, L]^T (summed over a leading batch dim)."""
    cout_g, ck_g = g_w.shape[1], g_w.shape[2]
    for gi in range(groups):
        a = go[..., gi * cout_g : (gi + 1) * cout_g, :]
        c = cols[..., gi * ck_g : (gi + 1) * ck_g, :]
        if a.dim() == 3:  # batch of images: fold the batch into the reduction
            a = a.transpose(0, 1).reshape(cout_g, -1)
            c = c.transpose(0, 1).reshape(ck_g, -1)
        g_w[gi].addmm_(a, c.t())


# ---- CPU: tiles of CPU_BLOCK_PIXELS output pixels of one image; the fused AVX-512 forward ------


def _cpu_module() -> Any:
    if _dcn_cpu is None:
        raise RuntimeError(f"vsqe._dcn_cpu is not built or failed to import: {_CPU_IMPORT_ERROR}")
    return _dcn_cpu


def _cpu_tiles(n: int, ck: int, p: int) -> tuple[int, list[_Tile]]:
    blk = max(1, min(p, CPU_BLOCK_PIXELS))
    tiles = [
        _Tile((i, slice(None), slice(p0, p1)), (ck, p1 - p0), (i, p0, p1))
        for i in range(n)
        for p0 in range(0, p, blk)
        for p1 in [min(p, p0 + blk)]
    ]
    return ck * blk, tiles


def _cpu_gemm(dst: Tensor, w: Tensor, cols: Tensor, bias: Optional[Tensor], groups: int) -> None:
    """dst[Cout, L] = w[groups, Cout/g, CK/g] @ cols[CK, L] (+ bias), written in place."""
    cout_g = w.shape[1]
    ck_g = w.shape[2]
    for gi in range(groups):
        d = dst[gi * cout_g : (gi + 1) * cout_g]
        c = cols[gi * ck_g : (gi + 1) * ck_g]
        if bias is None:
            torch.mm(w[gi], c, out=d)
        else:
            b = bias[gi * cout_g : (gi + 1) * cout_g, None].expand_as(d)
            torch.addmm(b, w[gi], c, out=d)


def _cpu_fused_forward(
    x: Tensor, off: Tensor, msk: Tensor, weight: Tensor, bias: Optional[Tensor], shape: list[int], groups: int
) -> Optional[Tensor]:
    """One native call (sampling and an fp32 GEMM per L2-sized block of output pixels) where the
    CPU has AVX-512 and the dtype is fp32/bf16; None elsewhere."""
    n, _, h, w = x.shape
    if not (CPU_FUSED and x.dtype in (torch.float32, torch.bfloat16) and h * w >= 2 and _dcn_cpu.has_avx512()):
        return None
    cout = weight.shape[0]
    wf = weight.detach().to(torch.float32).reshape(cout, -1).contiguous()
    bf = None if bias is None else bias.detach().to(torch.float32).contiguous()
    out = torch.empty((n, cout, shape[13], shape[14]), dtype=x.dtype)
    _dcn_cpu.forward(
        _DTYPE_CODE[x.dtype], x.data_ptr(), _DTYPE_CODE[off.dtype], off.data_ptr(), msk.data_ptr(), wf.data_ptr(),
        0 if bf is None else bf.data_ptr(), out.data_ptr(), shape, cout, groups, 0, torch.get_num_threads(),
    )
    return out


# ---- CUDA: tiles of whole images, the column buffer bounded by CUDA_MAX_COL_ELEMENTS -----------


def _cuda_module() -> Any:
    assert _dcn_cuda is not None
    return _dcn_cuda


def _cuda_tiles(n: int, ck: int, p: int) -> tuple[int, list[_Tile]]:
    nb = max(1, min(n, CUDA_MAX_COL_ELEMENTS // (ck * p)))
    tiles = [
        _Tile((slice(n0, n0 + cnt),), (cnt, ck, p), (n0, cnt))
        for n0 in range(0, n, nb)
        for cnt in [min(nb, n - n0)]
    ]
    return nb * ck * p, tiles


def _cuda_launch_args(x: Tensor) -> tuple[int, int]:
    """(device index, cudaStream_t as an int) for a launch on x's device, on torch's stream."""
    dev = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return dev, torch.cuda.current_stream(x.device).cuda_stream


def _cuda_gemm(dst: Tensor, w: Tensor, cols: Tensor, bias: Optional[Tensor], groups: int) -> None:
    """dst[B, Cout, L] = w[groups, Cout/g, CK/g] @ cols[B, CK, L] (+ bias), written in place."""
    cout_g, ck_g = w.shape[1], w.shape[2]
    for gi in range(groups):
        d = dst[:, gi * cout_g : (gi + 1) * cout_g]
        torch.matmul(w[gi], cols[:, gi * ck_g : (gi + 1) * ck_g], out=d)
        if bias is not None:
            d += bias[gi * cout_g : (gi + 1) * cout_g, None]


# Functions are looked up when called, so tests can stand in for a module or a setting.
_DEVICES = {
    "cpu": _Device(
        module=_cpu_module,
        tiles=_cpu_tiles,
        launch=lambda x: (torch.get_num_threads(),),
        im2col_options=lambda: {"simd": CPU_SIMD},
        gemm=_cpu_gemm,
        fused_forward=_cpu_fused_forward,
    ),
    "cuda": _Device(
        module=_cuda_module,
        tiles=_cuda_tiles,
        launch=lambda x: _cuda_launch_args(x),
        im2col_options=dict,
        gemm=_cuda_gemm,
        fused_forward=lambda *args: None,
    ),
}


# ---- the custom ops ---------------------------------------------------------------------------


# The schemas are inferred from these two signatures; the CPU kernel is the function body, the
# CUDA one is registered below when the CUDA module is built. Both run the shared _forward /
# _backward with their device's row of _DEVICES.
@torch.library.custom_op("vsqe::deform_conv2d", mutates_args=(), device_types="cpu")
def _deform_conv2d_op(
    input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor],
    stride: list[int], padding: list[int], dilation: list[int], groups: int, offset_groups: int,
) -> Tensor:
    return _forward("cpu", input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups)


@torch.library.custom_op("vsqe::deform_conv2d_backward", mutates_args=(), device_types="cpu")
def _deform_conv2d_backward_op(
    grad: Tensor, input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor,
    stride: list[int], padding: list[int], dilation: list[int], groups: int, offset_groups: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (input, offset, mask, weight, bias); the bias one is returned always."""
    return _backward("cpu", grad, input, offset, mask, weight, stride, padding, dilation, groups, offset_groups)


if _dcn_cuda is not None:
    _deform_conv2d_op.register_kernel("cuda")(functools.partial(_forward, "cuda"))
    _deform_conv2d_backward_op.register_kernel("cuda")(functools.partial(_backward, "cuda"))


@_deform_conv2d_op.register_fake
def _deform_conv2d_fake(
    input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor],
    stride: list[int], padding: list[int], dilation: list[int], *conf: object,
) -> Tensor:
    n, _, h, w = input.shape
    cout, _, kh, kw = weight.shape
    ho = _out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = _out_size(w, kw, stride[1], padding[1], dilation[1])
    return input.new_empty((n, cout, ho, wo))


@_deform_conv2d_backward_op.register_fake
def _deform_conv2d_backward_fake(
    grad: Tensor, input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, *conf: object
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return (
        torch.empty_like(input),
        torch.empty_like(offset),
        torch.empty_like(mask),
        torch.empty_like(weight),
        weight.new_empty((weight.shape[0],)),
    )


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    input, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups = inputs
    ctx.save_for_backward(input, offset, mask, weight)
    ctx.has_bias = bias is not None
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.conf = (stride, padding, dilation, groups, offset_groups)


def _autograd_backward(ctx, grad: Tensor):
    input, offset, mask, weight = ctx.saved_tensors
    stride, padding, dilation, groups, offset_groups = ctx.conf
    g_in, g_off, g_msk, g_w, g_b = torch.ops.vsqe.deform_conv2d_backward(
        grad, input, offset, mask, weight, stride, padding, dilation, groups, offset_groups
    )
    g_b = g_b.to(ctx.bias_dtype) if ctx.has_bias else None
    return g_in, g_off, g_msk, g_w, g_b, None, None, None, None, None


_deform_conv2d_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# Autocast: run in the autocast dtype, but leave fp32 offsets and masks alone (bf16 offsets of a
# few tens of pixels would lose sub-pixel precision). See the module docstring.
_lib = torch.library.Library("vsqe", "FRAGMENT")


def _make_autocast_kernel(device_type: str, key: str) -> Callable[..., Tensor]:
    keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

    def kernel(input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor], *conf) -> Tensor:
        dt = torch.get_autocast_dtype(device_type)

        def keep_or_fp32(t: Tensor) -> Tensor:
            return t if t.dtype in (dt, torch.float32) else t.float()

        with torch._C._ExcludeDispatchKeyGuard(keyset):
            return torch.ops.vsqe.deform_conv2d(
                input.to(dt),
                keep_or_fp32(offset),
                keep_or_fp32(mask),
                weight.to(dt),
                None if bias is None else bias.to(dt),
                *conf,  # stride, padding, dilation, groups, offset_groups
            )

    return kernel


for _dev, _key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):
    _lib.impl("deform_conv2d", _make_autocast_kernel(_dev, _key), _key)


# ---- the function model code calls ------------------------------------------------------------


def deform_conv2d(
    x: Tensor,
    offset: Tensor,
    mask: Optional[Tensor],
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Tensor:
    """Modulated deformable convolution (DCNv2), torchvision's semantics.

    Args:
        x: input ``[N, C, H, W]``.
        offset: ``[N, 2*G*kh*kw, Ho, Wo]``, channel ``g*2*K + 2*k + (0: dy, 1: dx)``.
        mask: ``[N, G*kh*kw, Ho, Wo]`` modulation, already through a sigmoid; ``None`` means
            all ones (plain DCNv1; allocates a ones tensor).
        weight: ``[Cout, C/groups, kh, kw]``; ``groups`` is ``C // weight.shape[1]``.
        bias: optional ``[Cout]``.
        stride, padding, dilation: int or (h, w) pair.

    The number of deformable groups G is ``offset.shape[1] // (2*kh*kw)``. Runs the native op
    ``torch.ops.vsqe.deform_conv2d`` unless :func:`set_impl` selected ``"torchvision"``.
    """
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    kh, kw = weight.shape[2], weight.shape[3]
    if _impl == "torchvision":
        import torchvision.ops

        return torchvision.ops.deform_conv2d(x, offset, weight, bias, s, p, d, mask)
    if offset.shape[1] % (2 * kh * kw):
        raise ValueError(f"deform_conv2d: offset has {offset.shape[1]} channels, not a multiple of {2 * kh * kw}")
    offset_groups = offset.shape[1] // (2 * kh * kw)
    if weight.shape[1] == 0 or x.shape[1] % weight.shape[1]:
        raise ValueError(f"deform_conv2d: weight {tuple(weight.shape)} does not fit {x.shape[1]} input channels")
    groups = x.shape[1] // weight.shape[1]
    if mask is None:
        mask = offset.new_ones((offset.shape[0], offset_groups * kh * kw, offset.shape[2], offset.shape[3]))
    return torch.ops.vsqe.deform_conv2d(x, offset, mask, weight, bias, s, p, d, groups, offset_groups)


# ---- offsets and mask logits in one tensor (the conv that predicts them) ----------------------
# STDF's fusion net predicts offsets and mask logits with one conv, then slices and applies the
# sigmoid. Under bf16 autocast with channels_last that conv's output is NHWC: the unfused path
# pays a slow strided sigmoid and two NHWC->NCHW reorders (offsets, masks), and the next conv a
# NCHW->NHWC reorder of the DCN output -- about 30 % of STDF's time at 256x256 on one core.
# The native forward_om reads the NHWC tensor block by block (transposed in L2, sigmoid
# vectorised) and writes an NHWC output. Everything else (autograd, CUDA, export, tracing,
# torch.compile, NCHW tensors, CPUs without AVX-512) runs the plain composition below, which is
# exactly what the model computed before.


def plain_cpu_inference(*tensors: Optional[Tensor]) -> bool:
    """True when a call on `tensors` is CPU inference that no tracer, exporter, compiler or
    autograd looks at: where a fused native shortcut may replace the composed layers (here and in
    vsqe/backends/fusion.py)."""
    present = [t for t in tensors if t is not None]
    if any(t.device.type != "cpu" for t in present):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return False
    return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


def om_fast_path_applies(x: Tensor, om: Tensor, weight: Tensor, bias: Optional[Tensor]) -> bool:
    """Whether :func:`deform_conv2d_om` runs its one native call for these tensors (else it
    runs the composition)."""
    if _impl != "native" or not CPU_FUSED or _dcn_cpu is None or not _dcn_cpu.has_avx512():
        return False
    if not plain_cpu_inference(x, om, weight, bias):
        return False
    # om must be NHWC-dense (channels_last): that is the case this path exists for.
    return om.dim() == 4 and om.permute(0, 2, 3, 1).is_contiguous() and om.dtype in (torch.float32, torch.bfloat16)


def deform_conv2d_om(
    x: Tensor,
    offset_mask: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    offset_groups: int = 1,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
) -> Tensor:
    """``deform_conv2d(x, om[:, :2GK], sigmoid(om[:, 2GK:3GK]), weight, bias, ...)``.

    ``offset_mask`` ``[N, >= 3*G*kh*kw, Ho, Wo]`` holds the offsets (channels ``[0, 2GK)``, the
    layout of :func:`deform_conv2d`) and the modulation LOGITS (``[2GK, 3GK)``); G =
    ``offset_groups``. On an AVX-512 CPU, for inference on a channels_last ``offset_mask``, one
    native call (``_dcn_cpu.forward_om``) that also returns a channels_last output; the result
    equals the composition up to the sigmoid's last bits (a vector e^x, about 2 ulp) and, in
    bf16, the mask is not rounded to bf16 first. Under CPU autocast it computes in the autocast
    dtype like :func:`deform_conv2d`.
    """
    kh, kw = weight.shape[2], weight.shape[3]
    gk = offset_groups * kh * kw
    if offset_mask.dim() != 4 or offset_mask.shape[1] < 3 * gk:
        raise ValueError(f"deform_conv2d_om: offset_mask {tuple(offset_mask.shape)} needs {3 * gk} channels "
                         "(offsets + mask logits)")
    offset, logits = offset_mask[:, : 2 * gk], offset_mask[:, 2 * gk : 3 * gk]
    if not om_fast_path_applies(x, offset_mask, weight, bias):
        return deform_conv2d(x, offset, torch.sigmoid(logits), weight, bias, stride, padding, dilation)
    s, p, d = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    cdt = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if cdt not in (torch.float32, torch.bfloat16):
        cdt = torch.float32
    x = x.to(cdt).contiguous()
    if weight.dim() != 4 or weight.shape[1] == 0 or x.shape[1] % weight.shape[1]:
        raise ValueError(f"deform_conv2d_om: weight {tuple(weight.shape)} does not fit {x.shape[1]} input channels")
    groups = x.shape[1] // weight.shape[1]
    ho, wo = _check(x, offset, logits, weight, bias, s, p, d, groups, offset_groups)
    if ho * wo < 2 or x.shape[2] * x.shape[3] < 2:  # the bf16 gathers need planes of 2+ elements
        return deform_conv2d(x, offset, torch.sigmoid(logits), weight, bias, stride, padding, dilation)
    n, cout = x.shape[0], weight.shape[0]
    # Weight and bias rounded to the compute dtype first, as the op does under autocast.
    wf = weight.detach().to(cdt).to(torch.float32).reshape(cout, -1).contiguous()
    bf = None if bias is None else bias.detach().to(cdt).to(torch.float32).contiguous()
    out = torch.empty((n, cout, ho, wo), dtype=cdt, memory_format=torch.channels_last)
    shape = _shape_arg(x, kh, kw, s, p, d, offset_groups, ho, wo)
    _dcn_cpu.forward_om(
        _DTYPE_CODE[cdt], x.data_ptr(), _DTYPE_CODE[offset_mask.dtype], offset_mask.data_ptr(),
        offset_mask.shape[1], wf.data_ptr(), 0 if bf is None else bf.data_ptr(), out.data_ptr(), True, shape,
        cout, groups, 0, torch.get_num_threads(),
    )
    return out
