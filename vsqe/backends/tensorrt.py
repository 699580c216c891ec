"""TensorRT backend ("trt", "trt-fp16"): the model as a TensorRT engine on an NVIDIA GPU.

The backend is given the built module (weights loaded). At the first call with a new input shape
it exports the module to ONNX (DCN as ONNX DeformConv, run by TensorRT's built-in plugin; or our
plugin with VSQE_TRT_DCN=plugin), builds a static-shape engine into the cache (progress on
stderr, minutes) and keeps it; later runs load the cached engine (vsqe/export/engine.py). The
pipeline feeds a handful of shapes only: whole padded frames, or equal-sized tiles (tiles.py clamps
the last tile instead of shrinking it).

Buffers and streams are torch CUDA tensors: pinned host staging buffers, device buffers, and two
streams (copies, compute) with events, double-buffered: `submit(x)` returns at once with a
handle, so a caller that submits the next input before collecting the previous result overlaps
its upload and download with the engine's compute; `__call__` is submit + collect.

Without TensorRT or without a GPU, creating the backend raises BackendError with one line naming
what is missing.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from vsqe.errors import BackendError


def unavailable_reason(what: str = "backend 'trt'") -> str | None:
    """None if TensorRT and a GPU are usable here, else one line naming what is missing."""
    from vsqe.export.engine import gpu_missing, tensorrt_missing

    trt = tensorrt_missing()
    gpu = gpu_missing()
    if trt and gpu:
        return f"{what} needs TensorRT and an NVIDIA GPU: {trt}; {gpu}"
    if trt:
        return f"{what} needs TensorRT: {trt}"
    if gpu:
        return f"{what} needs an NVIDIA GPU: {gpu}"
    return None


@dataclass
class _Slot:
    """One set of buffers for one in-flight inference."""

    host_in: torch.Tensor
    dev_in: torch.Tensor
    dev_out: torch.Tensor
    host_out: torch.Tensor
    uploaded: torch.cuda.Event
    computed: torch.cuda.Event
    done: torch.cuda.Event
    busy: bool = False


class _Runner:
    """An engine with its execution context, streams and two buffer slots, for one input shape."""

    def __init__(self, engine, runtime, shape: tuple[int, ...], device: torch.device) -> None:
        import tensorrt as trt

        self.runtime = runtime  # keeps the runtime alive as long as the engine
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"engine has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and 1")
        self.input, self.output = inputs[0], outputs[0]
        for n in (self.input, self.output):
            if engine.get_tensor_dtype(n) != trt.float32:
                raise BackendError(f"engine tensor {n!r} is {engine.get_tensor_dtype(n)}, expected float32 I/O")
        self.context.set_input_shape(self.input, tuple(shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        if any(d < 0 for d in out_shape):
            raise BackendError(f"engine output shape {out_shape} is not determined by input {tuple(shape)}")
        self.device = device
        self.copy_stream = torch.cuda.Stream(device)
        self.compute_stream = torch.cuda.Stream(device)
        self.slots = [self._slot(shape, out_shape) for _ in range(2)]
        self.next = 0
        self.lock = threading.Lock()

    def _slot(self, shape, out_shape) -> _Slot:
        f32 = torch.float32
        return _Slot(
            host_in=torch.empty(shape, dtype=f32, pin_memory=True),
            dev_in=torch.empty(shape, dtype=f32, device=self.device),
            dev_out=torch.empty(out_shape, dtype=f32, device=self.device),
            host_out=torch.empty(out_shape, dtype=f32, pin_memory=True),
            uploaded=torch.cuda.Event(), computed=torch.cuda.Event(), done=torch.cuda.Event(),
        )

    def submit(self, x: torch.Tensor) -> _Slot:
        with self.lock:
            slot = self.slots[self.next]
            self.next = (self.next + 1) % len(self.slots)
            # At most two inferences in flight: the previous use of this slot must have finished
            # its download before host_in / host_out are reused (collect it first to keep it).
            slot.done.synchronize()
            slot.busy = True
            slot.host_in.copy_(x)
            with torch.cuda.stream(self.copy_stream):
                slot.dev_in.copy_(slot.host_in, non_blocking=True)
                slot.uploaded.record(self.copy_stream)
            self.compute_stream.wait_event(slot.uploaded)
            self.context.set_tensor_address(self.input, slot.dev_in.data_ptr())
            self.context.set_tensor_address(self.output, slot.dev_out.data_ptr())
            if not self.context.execute_async_v3(self.compute_stream.cuda_stream):
                slot.busy = False
                raise BackendError("TensorRT inference failed (see the trt messages above)")
            slot.computed.record(self.compute_stream)
            self.copy_stream.wait_event(slot.computed)
            with torch.cuda.stream(self.copy_stream):
                slot.host_out.copy_(slot.dev_out, non_blocking=True)
                slot.done.record(self.copy_stream)
            return slot

    def collect(self, slot: _Slot) -> torch.Tensor:
        slot.done.synchronize()
        out = slot.host_out.clone()
        slot.busy = False
        return out


class TensorRTBackend:
    def __init__(
        self,
        model: torch.nn.Module,
        precision: str = "fp32",
        dcn: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        workspace_mb: int | None = None,
        device: int = 0,
        model_name: str | None = None,
    ) -> None:
        reason = unavailable_reason()
        if reason:
            raise BackendError(reason)
        from vsqe.export.engine import default_cache_dir

        if precision not in ("fp32", "fp16"):
            raise BackendError(f"backend 'trt': precision must be fp32 or fp16, got {precision!r}")
        dcn = dcn or os.environ.get("VSQE_TRT_DCN", "native")
        if dcn not in ("native", "plugin"):
            raise BackendError(f"VSQE_TRT_DCN must be 'native' or 'plugin', got {dcn!r}")
        self.name = "trt" if precision == "fp32" else "trt-fp16"
        self.precision = precision
        self.dcn = dcn
        self.model = model.eval().float()
        self.model_name = model_name or type(model).__name__.lower()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.workspace_mb = workspace_mb
        self.device = torch.device("cuda", device)
        self._runners: dict[tuple[int, ...], _Runner] = {}
        self._build_lock = threading.Lock()

    def _runner(self, shape: tuple[int, ...]) -> _Runner:
        runner = self._runners.get(shape)
        if runner is not None:
            return runner
        with self._build_lock:
            runner = self._runners.get(shape)
            if runner is None:
                from vsqe.export.engine import EngineError, EngineRequest, Profile, ensure_engine, load_engine, plugin_library

                request = EngineRequest(
                    model_name=self.model_name, profile=Profile.static(shape), precision=self.precision,  # type: ignore[arg-type]
                    dcn=self.dcn, workspace_mb=self.workspace_mb, cache_dir=self.cache_dir,  # type: ignore[arg-type]
                    device=self.device.index or 0,
                )
                try:
                    path, key = ensure_engine(self.model, None, request)
                    runtime, engine = load_engine(path, key, plugin_library() if self.dcn == "plugin" else None)
                except EngineError as exc:
                    raise BackendError(f"backend '{self.name}': {exc}") from None
                runner = _Runner(engine, runtime, shape, self.device)
                self._runners[shape] = runner
        return runner

    def submit(self, x: torch.Tensor):
        """Starts one inference; returns a handle for `collect` (see the module docstring)."""
        x = x.float().contiguous()
        runner = self._runner(tuple(x.shape))
        return runner, runner.submit(x)

    @staticmethod
    def collect(handle) -> torch.Tensor:
        runner, slot = handle
        return runner.collect(slot)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, C, H, W] float32 (CPU) -> the model's output, float32 on the CPU."""
        return self.collect(self.submit(x))
