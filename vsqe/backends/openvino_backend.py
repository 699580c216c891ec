"""OpenVINO backend for models with one deformable conv between two dense parts (STDF).

OpenVINO runs dense convolutions on AMX in bf16 faster than PyTorch's eager oneDNN path, but it
cannot read our DCN op (nor ONNX DeformConv), and its own DeformableConvolution differs from
torchvision at the image borders. So the model is cut at the DCN: OpenVINO compiles the dense head
(frames -> offsets, masks) and tail (aligned features, centre -> output); our native kernel runs
the DCN in between, with the same maths as every other backend.
"""
from __future__ import annotations

import numpy as np
import torch

from vsqe.errors import BackendError
from vsqe.ops import deform_conv2d


def _no_telemetry() -> None:
    """Keep OpenVINO's converter from sending usage telemetry (on by default, opt-out).

    vsqe sends nothing on anyone's behalf; and the sender forks a process from a thread pool while
    vsqe's decode/encode threads run, and the forked child can deadlock on a lock one of them held,
    then the interpreter waits for it at exit (seen in `vsqe bench --end-to-end`: a hang after
    the last table). Declining consent before the converter's first import stops every event."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # no telemetry package: nothing to send
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED


def openvino_available() -> bool:
    _no_telemetry()  # before the first import of openvino, which starts its telemetry
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class _Head(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.dense_head(stacked)


class _Tail(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, aligned: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        return self.model.dense_tail(aligned, centre)


class OpenVinoBackend:
    def __init__(self, model: torch.nn.Module, precision: str = "bf16", threads: int | None = None) -> None:
        if not openvino_available():
            raise BackendError("backend 'openvino' needs the openvino package (pip install openvino)")
        if not all(hasattr(model, a) for a in ("dense_head", "dense_tail", "dcn_layer")):
            raise BackendError(f"backend 'openvino' cannot run {type(model).__name__}: it has no DCN cut")
        import openvino as ov

        self.name = f"openvino-{precision}"
        self.precision = precision
        self.model = model.eval().float()
        self.dcn = model.dcn_layer
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        channels = self.dcn.weight.shape[1]
        aligned_ch = self.dcn.weight.shape[0]
        out_ch = getattr(model, "channels", 1)
        with torch.no_grad():
            head = ov.convert_model(
                _Head(model), example_input=torch.rand(1, channels, 64, 64),
                input=[ov.PartialShape([-1, channels, -1, -1])],
            )
            tail = ov.convert_model(
                _Tail(model), example_input=(torch.rand(1, aligned_ch, 64, 64), torch.rand(1, out_ch, 64, 64)),
                input=[ov.PartialShape([-1, aligned_ch, -1, -1]), ov.PartialShape([-1, out_ch, -1, -1])],
            )
        self._head = core.compile_model(head, "CPU", config).create_infer_request()
        self._tail = core.compile_model(tail, "CPU", config).create_infer_request()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = x.shape
        stacked = x.reshape(n, t * c, h, w).contiguous()
        centre = x[:, self.model.radius].contiguous()
        head = self._head.infer([stacked.numpy()])
        offset = torch.from_numpy(np.asarray(head[0]))
        mask = torch.from_numpy(np.asarray(head[1]))
        frames = stacked.to(torch.bfloat16) if self.precision == "bf16" else stacked
        weight, bias = self.dcn.weight, self.dcn.bias
        aligned = deform_conv2d(frames, offset, mask, weight.to(frames.dtype), bias.to(frames.dtype),
                                padding=self.dcn.padding)
        out = self._tail.infer([aligned.float().numpy(), centre.numpy()])
        return torch.from_numpy(np.asarray(out[0]).copy())
