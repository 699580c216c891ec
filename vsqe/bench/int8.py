"""INT8 experiment (issue 4): ONNX Runtime static quantization (QDQ) of the exported STDF graph.

Bench-only backend ``ort-int8``: the dynamic-shape ONNX export of ``ort-fp32`` with every plain
Conv quantized (activations u8 per tensor, weights s8 per output channel: MLAS runs u8 x s8 on
AVX512-VNNI); DeformConv, ConvTranspose and the rest stay fp32. The activation ranges come from
calibration windows of compressed frames out of the training set (``VSQE_INT8_CALIB``, default
/work/cache/vsqe-data/main: the x265 QP37 clips `vsqe data build` wrote), never the dev clips the
accuracy table scores; random frames only when no training data is there, with a warning
(ranges calibrated on noise make the accuracy figures meaningless; the speed ones still hold).
Activation ranges by MinMax, or by ORT's Percentile / Entropy with VSQE_INT8_CALIB_METHOD.

``ort-int8-mixed`` keeps the Convs the output is most sensitive to in fp32 as well (the one
predicting the DCN's offsets and masks, and the last one). Neither is offered by `vsqe run`:
docs/benchmarks.md ("INT8") has their speed and ΔPSNR.
"""
from __future__ import annotations

import glob
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from vsqe.errors import BackendError

log = logging.getLogger("vsqe.bench")

DEFAULT_CALIB = Path("/work/cache/vsqe-data/main")
CALIB_WINDOWS = 16  # windows of 2*radius+1 frames, one per clip
QUANTIZED_OPS = ["Conv"]


def calibration_windows(spec, count: int = CALIB_WINDOWS, data: Path | None = None) -> tuple[list[np.ndarray], str]:
    """`count` [1, T, 1, H, W] float32 windows from the training clips' compressed encodes."""
    data = Path(os.environ.get("VSQE_INT8_CALIB", data or DEFAULT_CALIB))
    files = sorted(glob.glob(str(data / "clips" / "*.x265-ldp-qp37.npy")))
    window = spec.window
    if not files:
        log.warning("int8: no training clips under %s: calibrating on random frames (speed only)", data)
        rng = np.random.default_rng(0)
        return [rng.random((1, window, 1, 240, 416), dtype=np.float32) for _ in range(count)], "random frames"
    step = max(1, len(files) // count)
    out = []
    for path in files[::step][:count]:
        frames = np.load(path, mmap_mode="r")  # [F, H, W] uint8 luma
        start = min(8, len(frames) - window)
        out.append((np.asarray(frames[start : start + window], dtype=np.float32) / 255.0)[None, :, None])
    return out, f"{len(out)} windows of {data}"


def _conv_behind(name: str, producers: dict) -> str | None:
    """The Conv node a tensor comes from through shape/activation ops (Slice, Sigmoid, Add...)."""
    node = producers.get(name)
    for _ in range(8):
        if node is None:
            return None
        if node.op_type == "Conv":
            return node.name
        node = next((producers[i] for i in node.input if i in producers), None)
    return None


def sensitive_convs(proto) -> list[str]:
    """Convs whose rounding the output is most sensitive to: the one predicting the DCN's offsets
    and masks (an offset error moves where the DCN samples) and the last one (its output is added
    to the centre frame as is)."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    names = []
    for node in proto.graph.node:
        if node.op_type == "DeformConv":
            names += [_conv_behind(i, producers) for i in node.input[2:]]  # offset, bias, mask
    names.append(_conv_behind(proto.graph.output[0].name, producers))
    return sorted({n for n in names if n})


class OrtInt8Backend:
    """ONNX Runtime CPU provider on the QDQ-quantized export (see the module docstring).

    `mixed`: the `sensitive_convs` stay fp32 (``ort-int8-mixed``)."""

    def __init__(self, module: torch.nn.Module, model_name: str, threads: int | None = None,
                 mixed: bool = False) -> None:
        try:
            import onnx
            import onnxruntime as ort
            from onnxruntime.quantization import (
                CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
            )
        except ImportError:
            raise BackendError("backend 'ort-int8' needs onnxruntime (with its quantization tools)") from None
        from vsqe.export.onnx import INPUT_NAME, example_shape, export_module
        from vsqe.models import get_model_spec

        spec = get_model_spec(model_name)
        if spec.color != "y" or spec.temporal != "window":
            raise BackendError(f"backend 'ort-int8' is an STDF-Y experiment; {model_name!r} is not a Y window model")
        windows, self.calibration = calibration_windows(spec)
        proto = export_module(module.eval().float(), spec, example_shape(spec, 64, 64), dynamic=True)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(windows)

            def get_next(self):
                x = next(self._it, None)
                return None if x is None else {INPUT_NAME: x}

        self.fp32_nodes = sensitive_convs(proto) if mixed else []
        # MinMax by default; VSQE_INT8_CALIB_METHOD=Percentile or Entropy tries ORT's others.
        self.method = os.environ.get("VSQE_INT8_CALIB_METHOD", "MinMax")
        if self.method not in ("MinMax", "Percentile", "Entropy"):
            raise BackendError(f"VSQE_INT8_CALIB_METHOD must be MinMax, Percentile or Entropy, got {self.method!r}")
        with tempfile.TemporaryDirectory(prefix="vsqe-int8-") as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(proto, str(src))
            quantize_static(
                str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=self.fp32_nodes, calibrate_method=getattr(CalibrationMethod, self.method),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
            data = dst.read_bytes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.name = "ort-int8-mixed" if mixed else "ort-int8"
        self._input = INPUT_NAME
        self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        log.info("%s: %s calibrated (%s) on %s; fp32: DeformConv%s", self.name, ", ".join(QUANTIZED_OPS),
                 self.method, self.calibration, "".join(f", {n}" for n in self.fp32_nodes))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self._session.run(None, {self._input: x.float().contiguous().numpy()})
        return torch.from_numpy(np.ascontiguousarray(out))
