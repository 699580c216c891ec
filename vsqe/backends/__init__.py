"""Backends run a built model on tensors: [N, T, C, H, W] float32 in, [N, C, H, W] float32 out.

Names: "torch", "torch-fp32", "torch-bf16" (PyTorch eager; bf16 autocast + channels_last on AMX),
"openvino", "openvino-fp32", "openvino-bf16" (dense parts on OpenVINO, our DCN kernel between
them), "trt", "trt-fp16" (TensorRT engines on NVIDIA GPUs, docs/tensorrt.md), and "auto" (per call
size, the fastest measured that can run the model here: the rule and its numbers in choice.py, the
lazy backend in auto.py, docs/benchmarks.md "What auto runs"). One interface, one factory (base.py).
"""
from __future__ import annotations

from vsqe.backends.base import Backend, create_backend, backend_names

__all__ = ["Backend", "create_backend", "backend_names"]
