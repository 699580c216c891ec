"""The backend interface and its factory."""
from __future__ import annotations

from typing import Protocol

import torch

from vsqe.errors import BackendError


class Backend(Protocol):
    name: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, C, H, W] float32 in [0, 1] (already padded) -> [N, C, H, W] float32."""
        ...


# "auto" picks, per call size, the fastest backend measured on this kind of machine among those
# that can run the model here (the rule and its numbers: choice.py; the lazy backend: auto.py).
_NAMES = ("auto", "torch", "torch-fp32", "torch-bf16", "openvino", "openvino-fp32", "openvino-bf16", "trt", "trt-fp16")


def backend_names() -> tuple[str, ...]:
    return _NAMES


def create_backend(
    name: str,
    model: torch.nn.Module,
    threads: int | None = None,
    model_name: str | None = None,
    recurrent: bool = False,
) -> Backend:
    """`model_name` (the registry name) and `recurrent` select "auto"'s measured table (without a
    name auto runs torch-fp32: nothing measured, nothing assumed); `model_name` also names the
    "trt" backends' cached engines."""
    from vsqe.backends.torch_backend import TorchBackend, bf16_supported

    if name not in _NAMES:
        raise BackendError(f"unknown backend {name!r} (known: {', '.join(_NAMES)})")
    if name == "auto":
        from vsqe.backends.auto import AutoBackend
        from vsqe.backends.choice import detect

        caps = detect(model, model_name or "", recurrent=recurrent)
        return AutoBackend(caps, lambda concrete: create_backend(concrete, model, threads=threads, model_name=model_name))
    if name.endswith("-bf16") and not bf16_supported():
        raise BackendError(f"backend {name!r} needs a CPU with AVX512-BF16 or AMX; this one has neither")
    if name.startswith("trt"):  # TensorRT on an NVIDIA GPU (backends/tensorrt.py, docs/tensorrt.md)
        from vsqe.backends.tensorrt import TensorRTBackend

        # The registry name keys its engines: `vsqe build-engine --model NAME` builds the same files.
        return TensorRTBackend(model, precision="fp16" if name == "trt-fp16" else "fp32", model_name=model_name)
    _cpu_process_setup()
    if name.startswith("openvino"):
        from vsqe.backends.openvino_backend import OpenVinoBackend

        precision = "fp32" if name == "openvino-fp32" else "bf16" if bf16_supported() else "fp32"
        return OpenVinoBackend(model, precision=precision, threads=threads)
    precision = "bf16" if name == "torch-bf16" else "fp32"
    return TorchBackend(model, precision=precision, threads=threads)


def _cpu_process_setup() -> None:
    """Once per process, for the CPU backends: malloc keeps freed memory (backends/allocator.py)."""
    from vsqe.backends.allocator import keep_freed_memory

    keep_freed_memory()
