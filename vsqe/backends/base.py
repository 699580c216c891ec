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


_NAMES = ("auto", "torch", "torch-fp32", "torch-bf16")


def backend_names() -> tuple[str, ...]:
    return _NAMES


def create_backend(name: str, model: torch.nn.Module, threads: int | None = None) -> Backend:
    from vsqe.backends.torch_backend import TorchBackend, bf16_supported

    if name not in _NAMES:
        raise BackendError(f"unknown backend {name!r} (known: {', '.join(_NAMES)})")
    if name == "torch-bf16" and not bf16_supported():
        raise BackendError("backend 'torch-bf16' needs a CPU with AVX512-BF16 or AMX; this one has neither")
    # fp32 is the default until the fast bf16 path is measured to stay within 0.02 dB (issue 4).
    precision = "bf16" if name == "torch-bf16" else "fp32"
    return TorchBackend(model, precision=precision, threads=threads)
