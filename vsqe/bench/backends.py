"""Backends that exist only in `vsqe bench`: what the field offers, measured beside ours.

Not user-facing (vsqe/backends keeps its names): they are here to be compared, and one moves to
vsqe/backends only if it measures fastest on a quiet machine (docs/benchmarks.md).

- ``ort-fp32``: ONNX Runtime's CPU provider on our exported graph (vsqe/export/onnx.py, the DCN
  as the standard opset-19 DeformConv, which ORT >= 1.25 runs on the CPU). Dynamic H/W, so one
  export serves every size and tile.
- ``torch-compile-fp32``, ``torch-compile-bf16``: torch.compile (inductor, CPU) of the eager fp32
  path and of the bf16 autocast + channels_last path; our DCN stays an opaque custom op (it has a
  fake implementation). Compiled at the first call of each input shape.
- ``ort-int8``: the INT8 experiment (bench/int8.py): ``ort-fp32``'s graph with its Convs
  quantized (QDQ, u8 activations, s8 per-channel weights), calibrated on training clips;
  ``ort-int8-mixed`` keeps the offset/mask conv and the last conv in fp32 too.
- ``reference``: eager fp32 with torchvision's deform_conv2d (what the papers' code runs).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
import torch

from vsqe.backends import Backend, backend_names, create_backend
from vsqe.errors import BackendError

REFERENCE = "reference"
BENCH_ONLY = ("ort-fp32", "ort-int8", "ort-int8-mixed", "torch-compile-fp32", "torch-compile-bf16")


def known_names() -> tuple[str, ...]:
    return (REFERENCE, *backend_names(), *BENCH_ONLY)


def check_names(names: list[str]) -> None:
    """One line naming an unknown backend, before any measurement starts."""
    known = known_names()
    for name in names:
        if name not in known:
            raise BackendError(f"unknown bench backend {name!r} (known: {', '.join(known)})")


@contextlib.contextmanager
def dcn_implementation(name: str) -> Iterator[None]:
    from vsqe.ops import dcn

    previous = dcn.get_impl()
    dcn.set_impl(name)
    try:
        yield
    finally:
        dcn.set_impl(previous)


def dcn_for(name: str) -> str:
    """The DCN implementation a bench backend runs with."""
    return "torchvision" if name == REFERENCE else "native"


class OrtBackend:
    """ONNX Runtime (CPU provider) on the model's dynamic-shape ONNX export."""

    def __init__(self, module: torch.nn.Module, model_name: str, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("backend 'ort-fp32' needs the onnxruntime package") from None
        from vsqe.export.onnx import INPUT_NAME, example_shape, export_module
        from vsqe.models import get_model_spec

        spec = get_model_spec(model_name)
        proto = export_module(module.eval().float(), spec, example_shape(spec, 64, 64), dynamic=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.name = "ort-fp32"
        self._input = INPUT_NAME
        self._session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self._session.run(None, {self._input: x.contiguous().numpy()})
        return torch.from_numpy(np.ascontiguousarray(out))


class CompiledBackend:
    """torch.compile (inductor) of the eager path, fp32 or bf16 autocast + channels_last."""

    def __init__(self, module: torch.nn.Module, precision: str, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.name = f"torch-compile-{precision}"
        self.precision = precision
        model = module.eval()
        if precision == "bf16":
            model = model.to(memory_format=torch.channels_last)
        self._fn = torch.compile(self._forward_fn(model, precision), backend="inductor", dynamic=False)

    @staticmethod
    def _forward_fn(model: torch.nn.Module, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            if precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return model(x).float()
            return model(x)

        return forward

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x).float()


def make_backend(name: str, module: torch.nn.Module, model_name: str, threads: int | None = None) -> Backend:
    """A bench backend by name: the user-facing ones through vsqe.backends, the rest here."""
    from vsqe.backends.torch_backend import bf16_supported

    if name == REFERENCE:
        return create_backend("torch-fp32", module, threads=threads)
    if name == "ort-fp32":
        return OrtBackend(module, model_name, threads)
    if name in ("ort-int8", "ort-int8-mixed"):
        from vsqe.bench.int8 import OrtInt8Backend

        return OrtInt8Backend(module, model_name, threads, mixed=name == "ort-int8-mixed")
    if name.startswith("torch-compile-"):
        precision = name.rsplit("-", 1)[1]
        if precision == "bf16" and not bf16_supported():
            raise BackendError(f"backend {name!r} needs a CPU with AVX512-BF16 or AMX; this one has neither")
        return CompiledBackend(module, precision, threads)
    spec_name = model_name  # "auto" reads the model's measured table by its registry name
    return create_backend(name, module, threads=threads, model_name=spec_name)


def reset_module(module: torch.nn.Module) -> torch.nn.Module:
    """Back to fp32 NCHW: backends convert the shared module in place (bf16 -> channels_last)."""
    return module.float().to(memory_format=torch.contiguous_format)


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception as one short line for a table cell (torch.compile errors span pages)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def make_enhancer(model: str, weights: str | None, name: str, threads: int | None = None,
                  require_weights: bool = False):
    """The Enhancer `vsqe run --backend NAME` builds, for any bench backend; with the context
    (DCN implementation) to run it in. Bench-only backends replace the Enhancer's backend."""
    from vsqe.pipeline.enhancer import Enhancer

    user_facing = name in backend_names()
    enhancer = Enhancer(model=model, weights=weights, backend=name if user_facing else "torch-fp32",
                        threads=threads, require_weights=require_weights)
    if not user_facing:
        enhancer.backend = make_backend(name, enhancer.module, model, threads)
    return enhancer, dcn_implementation(dcn_for(name))
