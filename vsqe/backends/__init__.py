"""Backends run a built model on tensors: [N, T, C, H, W] float32 in, [N, C, H, W] float32 out.

Names: "torch" (CPU/GPU PyTorch; precision fp32 or bf16), "auto" (the fastest available here).
TensorRT joins this list when its issue lands. One interface, one factory.
"""
from __future__ import annotations

from vsqe.backends.base import Backend, create_backend, backend_names

__all__ = ["Backend", "create_backend", "backend_names"]
