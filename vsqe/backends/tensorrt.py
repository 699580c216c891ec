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

BasicVSR++ (recurrent) models run as their seven per-step engines instead (export/engine.py's
ensure_step_engines: one static engine per step graph, built per padded frame or tile size):
`TrtSteps` is export/basicvsrpp_onnx.py's engine-set interface on TensorRT, and StepLoop, the
same loop that drives the ONNX Runtime graphs, calls it 8 times per frame. Every array of the
loop is a torch CUDA tensor on one stream, bound by data_ptr: frames are uploaded once,
features and flows stay on the device between calls, and each reconstructed frame is copied to
pinned host memory as soon as it is made. A segment goes through the segment machinery
(pipeline/segments.py, Enhancer) as with any backend: `backend(x)` takes the padded segment.

Without TensorRT or without a GPU, creating the backend raises BackendError with one line naming
what is missing.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from vsqe.errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from vsqe.export.basicvsrpp_onnx import StepLoop, StepShapes
    from vsqe.export.engine import EngineRequest, StepEngine


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


def _context_and_io(engine) -> tuple[object, list[str], list[str]]:
    """(execution context, input tensor names, output tensor names) of a deserialised engine."""
    import tensorrt as trt

    context = engine.create_execution_context()
    if context is None:
        raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    return context, inputs, outputs


class _Runner:
    """An engine with its execution context, streams and two buffer slots, for one input shape."""

    def __init__(self, engine, runtime, shape: tuple[int, ...], device: torch.device) -> None:
        import tensorrt as trt

        self.runtime = runtime  # keeps the runtime alive as long as the engine
        self.engine = engine
        self.context, inputs, outputs = _context_and_io(engine)
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


# ---- BasicVSR++: the step engine set ------------------------------------------------------------


class _StepEngine:
    """One step graph's engine and execution context, checked against the graph's I/O (graph_io)."""

    def __init__(self, planned: "StepEngine", runtime, engine) -> None:
        import tensorrt as trt

        self.runtime = runtime  # keeps the runtime alive as long as the engine
        self.engine = engine
        self.context, in_names, out_names = _context_and_io(engine)
        found_in = {n: tuple(engine.get_tensor_shape(n)) for n in in_names}
        found_out = {n: tuple(engine.get_tensor_shape(n)) for n in out_names}
        names = in_names + out_names
        if found_in != planned.inputs or found_out != planned.outputs:
            raise BackendError(f"engine {planned.paths.engine.name}: tensors {found_in} -> {found_out}, expected "
                               f"{planned.inputs} -> {planned.outputs}")
        wrong = [n for n in names if engine.get_tensor_dtype(n) != trt.float32]
        if wrong:
            raise BackendError(f"engine {planned.paths.engine.name}: tensors {wrong} are not float32")
        self.inputs = planned.inputs
        self.outputs = planned.outputs  # graph_io order: the order StepLoop reads outputs in


class CudaSteps:
    """The device half of StepLoop's engine-set interface (export/basicvsrpp_onnx.py's
    StepExecutor): arrays are torch CUDA tensors, and every allocation, copy and call happens on
    one stream, so the caching allocator's reuse of a freed feature's memory is ordered after the
    calls that read it and the loop never waits on the GPU until `finish`. Subclasses give `run`
    (TrtSteps: TensorRT engines)."""

    def __init__(self, shapes: "StepShapes", device: torch.device) -> None:
        self.shapes = shapes
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._gates: dict[tuple[bool, bool], torch.Tensor] = {}

    def frames(self, lqs) -> list[torch.Tensor]:
        x = lqs if isinstance(lqs, torch.Tensor) else torch.from_numpy(lqs)
        with torch.cuda.stream(self.stream):
            dev = x.to(self.device, torch.float32, non_blocking=True)
            return [dev[:, i].contiguous() for i in range(dev.shape[1])]

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        with torch.cuda.stream(self.stream):
            return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def gates(self, has_n1: bool, has_n2: bool) -> torch.Tensor:
        key = (bool(has_n1), bool(has_n2))
        if key not in self._gates:  # three constants, made once and only ever read
            with torch.cuda.stream(self.stream):
                self._gates[key] = torch.tensor([float(key[0]), float(key[1])], device=self.device)
        return self._gates[key]

    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def output(self, frames: int) -> torch.Tensor:
        s = self.shapes
        shape = (s.batch, frames, s.in_channels, s.height * s.scale, s.width * s.scale)
        return torch.empty(shape, dtype=torch.float32, pin_memory=True)

    def store(self, out: torch.Tensor, index: int, frame: torch.Tensor) -> None:
        with torch.cuda.stream(self.stream):  # pinned destination: the copy overlaps later calls
            out[:, index].copy_(frame, non_blocking=True)

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        self.stream.synchronize()
        return out


class TrtSteps(CudaSteps):
    """StepLoop's engine set on TensorRT: one engine and execution context per step graph,
    enqueued on the CudaSteps stream with the tensors' data_ptr bound as I/O."""

    def __init__(self, plan: Sequence["StepEngine"], shapes: "StepShapes", device: torch.device,
                 plugin: Path | None = None) -> None:
        from vsqe.export.basicvsrpp_onnx import GRAPH_NAMES
        from vsqe.export.engine import load_engine

        missing = [g for g in GRAPH_NAMES if g not in {e.graph for e in plan}]
        if missing:
            raise BackendError(f"BasicVSR++ step engines missing: {', '.join(missing)}")
        super().__init__(shapes, device)
        self.graphs = {e.graph: _StepEngine(e, *load_engine(e.paths.engine, e.key, plugin)) for e in plan}

    def run(self, graph: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        g = self.graphs[graph]
        ctx = g.context
        if inputs.keys() != g.inputs.keys():
            raise BackendError(f"step graph {graph!r}: inputs {sorted(inputs)}, engine takes {sorted(g.inputs)}")
        for name, t in inputs.items():
            ctx.set_tensor_address(name, _device_address(t, g.inputs[name], f"{graph}.{name}"))
        with torch.cuda.stream(self.stream):
            outs = [torch.empty(shape, dtype=torch.float32, device=self.device) for shape in g.outputs.values()]
        for name, t in zip(g.outputs, outs):
            ctx.set_tensor_address(name, t.data_ptr())
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"TensorRT inference of step graph {graph!r} failed (see the trt messages above)")
        return outs


def _device_address(t: torch.Tensor, shape: tuple[int, ...], what: str) -> int:
    """The address to bind for `t`, after the checks an engine cannot make itself."""
    if not (t.is_cuda and t.dtype == torch.float32 and t.is_contiguous() and tuple(t.shape) == shape):
        raise BackendError(f"{what}: {tuple(t.shape)} {t.dtype} on {t.device} (contiguous: {t.is_contiguous()}), "
                           f"engine binds a contiguous float32 CUDA tensor of {shape}")
    return t.data_ptr()


def step_loop(model: torch.nn.Module, request, device: torch.device) -> "StepLoop":
    """StepLoop over the TensorRT step engines of a BasicVSR++ module for request.profile's frame
    size (built into the cache if missing). Raises BackendError (one line) without TensorRT/GPU."""
    reason = unavailable_reason("BasicVSR++ on TensorRT")
    if reason:
        raise BackendError(reason)
    from vsqe.export import basicvsrpp_onnx as bo
    from vsqe.export.engine import ensure_step_engines, plugin_library

    n, _, _, h, w = request.profile.opt
    plan = ensure_step_engines(model, request)
    executor = TrtSteps(plan, bo.step_shapes(model, h, w, batch=n), device,
                        plugin_library() if request.dcn == "plugin" else None)
    return bo.StepLoop(executor)


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
        from vsqe.export.basicvsrpp_onnx import is_basicvsrpp

        # Recurrent BasicVSR++: per-step engines and StepLoop, one set per padded frame (or tile) size.
        self.stepwise = is_basicvsrpp(self.model)
        self._step_loops: dict[tuple[int, ...], "StepLoop"] = {}
        self._step_lock = threading.Lock()  # one StepLoop call at a time: contexts and stream are shared

    def _request(self, shape: tuple[int, ...]) -> "EngineRequest":
        """This backend's engine request for one static input shape (a whole graph's, or a step
        set's with T = 1)."""
        from vsqe.export.engine import EngineRequest, Profile

        return EngineRequest(
            model_name=self.model_name, profile=Profile.static(shape), precision=self.precision,  # type: ignore[arg-type]
            dcn=self.dcn, workspace_mb=self.workspace_mb, cache_dir=self.cache_dir,  # type: ignore[arg-type]
            device=self.device.index or 0,
        )

    def _runner(self, shape: tuple[int, ...]) -> _Runner:
        runner = self._runners.get(shape)
        if runner is not None:
            return runner
        with self._build_lock:
            runner = self._runners.get(shape)
            if runner is None:
                from vsqe.export.engine import EngineError, ensure_engine, load_engine, plugin_library

                request = self._request(shape)
                try:
                    path, key = ensure_engine(self.model, None, request)
                    runtime, engine = load_engine(path, key, plugin_library() if self.dcn == "plugin" else None)
                except EngineError as exc:
                    raise BackendError(f"backend '{self.name}': {exc}") from None
                runner = _Runner(engine, runtime, shape, self.device)
                self._runners[shape] = runner
        return runner

    def _step_loop(self, shape: tuple[int, ...]) -> "StepLoop":
        """The step engine set for segments of this [N, T, C, H, W] shape (any T)."""
        n, _, c, h, w = shape
        key = (n, c, h, w)
        loop = self._step_loops.get(key)
        if loop is not None:
            return loop
        with self._build_lock:
            loop = self._step_loops.get(key)
            if loop is None:
                from vsqe.export.engine import EngineError
                from vsqe.export.onnx import ExportError

                request = self._request((n, 1, c, h, w))
                try:
                    loop = step_loop(self.model, request, self.device)
                except (EngineError, ExportError) as exc:
                    raise BackendError(f"backend '{self.name}': {exc}") from None
                self._step_loops[key] = loop
        return loop

    def submit(self, x: torch.Tensor):
        """Starts one inference; returns a handle for `collect` (see the module docstring).
        BasicVSR++ segments run to completion here (a segment is hundreds of engine calls)."""
        x = x.float().contiguous()
        if self.stepwise:
            loop = self._step_loop(tuple(x.shape))
            with self._step_lock:
                return None, loop(x)
        runner = self._runner(tuple(x.shape))
        return runner, runner.submit(x)

    @staticmethod
    def collect(handle) -> torch.Tensor:
        runner, slot = handle
        return slot if runner is None else runner.collect(slot)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, C, H, W] float32 (CPU) -> the model's output, float32 on the CPU (BasicVSR++:
        [N, T, C, sH, sW], a padded segment of any length T)."""
        return self.collect(self.submit(x))
