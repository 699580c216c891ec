"""PyTorch backend: eager CPU (fp32 or bf16 autocast on AMX, channels_last) or CUDA."""
from __future__ import annotations

import contextlib

import torch

from vsqe.backends.fusion import fuse_conv_relu


def bf16_supported() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


class TorchBackend:
    def __init__(self, model: torch.nn.Module, precision: str = "fp32", threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.precision = precision
        self.name = f"torch-{precision}"
        self.model = model.eval()
        # channels_last keeps oneDNN on its blocked (AMX / AVX-512) convolution kernels without
        # reorders, and lets STDF's DCN take the fused offset+mask path (vsqe.ops.deform_conv2d_om).
        # Measured, 2 threads, fp32: STDF-Y 416x240 4.73 -> 6.64 fps, MFQEv2-Y 592 -> 472 ms;
        # models that run slower in it in fp32 say so (channels_last_fp32 = False: BasicVSR++).
        if precision == "bf16" or getattr(model, "channels_last_fp32", True):
            self.model = self.model.to(memory_format=torch.channels_last)
        # Conv+ReLU as one oneDNN call (a parameter-sharing copy; the module itself is untouched).
        self.model = fuse_conv_relu(self.model)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.model(x)
        return out.float()
