"""BasicVSR++ as per-step ONNX graphs, and a runner that drives the recurrence in Python.

A whole segment unrolled into one graph grows with T (40 frames by default: 4 branches x 40 DCN
steps + 78 SpyNet calls) and is tied to one T; the recurrence itself is a Python loop in the model.
So the export unit is one *step* (docs/basicvsrpp.md, "ONNX export"):

    features      frame [N,3,H,W]                  -> feat [N,C,h,w], small [N,3,hs,ws] (SpyNet's input)
    flow          ref, supp small images           -> flow ref->supp [N,2,h,w]
    step_<branch> current, feat_n1, feat_n2, flow_n1, flow_prev, gates, prev_0..prev_{i-1}
                                                    -> the branch's new propagated feature
    reconstruct   lq, spatial, b1, f1, b2, f2       -> output frame [N,3,sH,sW]

One step graph per branch (own weights, and the backbone's input grows with the branch index).
`gates` [2] = (has_n1, has_n2) in {0, 1} lets the same graph serve a branch's first two steps,
where the model has no previous feature (step 0) or no second-order term (step 1): the aligned
feature is multiplied by has_n1 and the composed flow n-2 by has_n2, which gives exactly the
zeros the model uses (inputs there are zeros, and 0 * finite = 0).

Every graph is independent of T, so one set serves any segment length. H and W are static
(SpyNet specialises them, onnx.py's StaticShapesOnly); the pipeline runs one size per clip (the
padded frame or the tile). DCN goes through onnx.py's translation (ONNX DeformConv, or our
TensorRT plugin's node with dcn="plugin").

The recurrence is one loop, `StepLoop`, over an *engine set* (`StepExecutor`): something that
runs a step graph by name on arrays it owns. `OrtSteps` runs the graphs in ONNX Runtime on host
numpy arrays (`StepRunner` = StepLoop over OrtSteps, the CPU reference); backends/tensorrt.py's
`TrtSteps` runs one TensorRT engine per graph on device buffers, so features and flows stay on
the GPU between calls. `graph_io` (pure) gives every graph's input and output names and shapes.
"""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence

from vsqe.export import onnx as vx

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import onnx
    import torch

    from vsqe.models.basicvsrpp import BasicVSRPlusPlus
    from vsqe.pipeline.segments import SegmentPlan

BRANCHES = ("backward_1", "forward_1", "backward_2", "forward_2")
GRAPH_NAMES = ("features", "flow", *(f"step_{b}" for b in BRANCHES), "reconstruct")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


# ---- the step modules (wrappers over the model's own submodules: same weights, same maths) ------


def _modules(model: "BasicVSRPlusPlus") -> dict[str, "torch.nn.Module"]:
    from torch import nn

    from vsqe.models.spynet import as_spynet_input, flow_warp

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, frame):
            return self.model.feat_extract(frame), self.model._flow_input(frame)

    class Flow(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.spynet = model.spynet

        def forward(self, ref, supp):
            # As BasicVSRPlusPlus._flows: Y models feed SpyNet Y replicated to 3 channels
            # (as_spynet_input returns RGB unchanged, so RGB graphs do not change).
            return self.spynet(as_spynet_input(ref), as_spynet_input(supp))

    class Step(nn.Module):
        """One step of one branch; mirrors BasicVSRPlusPlus._propagate's loop body."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.align = model.deform_align[name]
            self.backbone = model.backbone[name]

        def forward(self, current, feat_n1, feat_n2, flow_n1, flow_prev, gates, previous):
            import torch

            has_n1, has_n2 = gates[0], gates[1]
            flow_n2 = (flow_n1 + flow_warp(flow_prev, flow_n1)) * has_n2
            cond = torch.cat([flow_warp(feat_n1, flow_n1), current, flow_warp(feat_n2, flow_n2)], dim=1)
            aligned = self.align(torch.cat([feat_n1, feat_n2], dim=1), cond, flow_n1, flow_n2) * has_n1
            return aligned + self.backbone(torch.cat([current, *previous, aligned], dim=1))

    class Reconstruct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, lq, spatial, b1, f1, b2, f2):
            return self.model._reconstruct(lq, [spatial, b1, f1, b2, f2])

    out: dict[str, nn.Module] = {"features": Features(), "flow": Flow(), "reconstruct": Reconstruct()}
    for b in BRANCHES:
        out[f"step_{b}"] = Step(b)
    return out


@dataclass(frozen=True)
class StepShapes:
    """Sizes of one export: batch, frame H x W, feature h x w, flow-input hs x ws, channels C,
    output scale and the frames' channels (3 RGB, 1 for Y models)."""

    batch: int
    height: int
    width: int
    feat_height: int
    feat_width: int
    small_height: int
    small_width: int
    channels: int
    scale: int
    in_channels: int = 3  # last, with a default: manifests written before Y models lack it


def step_shapes(model: "BasicVSRPlusPlus", height: int, width: int, batch: int = 1) -> StepShapes:
    """Checks the frame size against the model's rules (those of its forward) and derives the rest."""
    if model.is_low_res_input:
        fh, fw, sh, sw = height, width, height, width
    else:
        if height % 4 or width % 4:
            raise vx.ExportError(f"BasicVSR++ (QE) needs H and W multiples of 4, got {width}x{height}")
        fh, fw = height // 4, width // 4
        # F.interpolate(scale_factor=0.25, recompute_scale_factor=True) floors
        sh, sw = height // 4, width // 4
    if min(sh, sw) < 64:
        raise vx.ExportError(
            f"BasicVSR++ needs flow inputs of at least 64x64 (QE: frames of at least 256x256), got {width}x{height}"
        )
    return StepShapes(batch, height, width, fh, fw, sh, sw, model.mid_channels, model.scale,
                      getattr(model, "in_channels", 3))


Shape = tuple[int, ...]
GraphIO = tuple[dict[str, Shape], dict[str, Shape]]


def graph_io(name: str, s: StepShapes) -> GraphIO:
    """(inputs, outputs) of step graph `name`: tensor name -> static shape, in graph order.

    Pure: the exporter names the graphs' tensors from this, the TensorRT executor checks its
    engines against it, and build-engine's plan reports it. Every tensor is float32."""
    n, c, ci = s.batch, s.channels, s.in_channels
    frame = (n, ci, s.height, s.width)
    feat = (n, c, s.feat_height, s.feat_width)
    small = (n, ci, s.small_height, s.small_width)
    flow = (n, 2, s.feat_height, s.feat_width)  # SpyNet keeps its input size: h x w in both layouts
    if name == "features":
        return {"frame": frame}, {"feat": feat, "small": small}
    if name == "flow":
        return {"ref": small, "supp": small}, {"flow": flow}
    if name == "reconstruct":
        ins = {"lq": frame, **{k: feat for k in ("spatial", "b1", "f1", "b2", "f2")}}
        return ins, {"output": (n, ci, s.height * s.scale, s.width * s.scale)}
    if not name.startswith("step_") or name[len("step_"):] not in BRANCHES:
        raise ValueError(f"unknown BasicVSR++ step graph {name!r} (known: {', '.join(GRAPH_NAMES)})")
    index = BRANCHES.index(name[len("step_"):])
    ins = {"current": feat, "feat_n1": feat, "feat_n2": feat, "flow_n1": flow, "flow_prev": flow, "gates": (2,)}
    ins.update({f"prev_{i}": feat for i in range(index)})
    return ins, {"feat": feat}


def _examples(s: StepShapes, name: str) -> tuple[tuple, list[str], list[str]]:
    """Example inputs (random: shapes are all that matters), input names, output names."""
    import torch

    gen = torch.Generator().manual_seed(0)
    ins, outs = graph_io(name, s)
    tensors = {k: torch.ones(shape) if k == "gates" else torch.rand(shape, generator=gen) for k, shape in ins.items()}
    args: tuple = tuple(tensors.values())
    if name.startswith("step_"):  # Step.forward takes the earlier branches as one list
        args = (*args[:6], list(args[6:]))
    return args, list(ins), list(outs)


# ---- export -------------------------------------------------------------------------------------


def export_graph(module: "torch.nn.Module", args: tuple, input_names: list[str], output_names: list[str],
                 label: str, dcn: vx.DcnMode = "onnx") -> "onnx.ModelProto":
    """Static-shape dynamo export of one step module, DCN translated as in onnx.export_module."""
    import torch

    import vsqe.ops  # noqa: F401  (registers torch.ops.vsqe.deform_conv2d)

    if dcn not in ("onnx", "plugin"):
        raise vx.ExportError(f"dcn must be 'onnx' or 'plugin', got {dcn!r}")
    # The exporter prints progress on stdout, which may be a y4m pipe.
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        try:
            program = torch.onnx.export(
                module.eval(), args, dynamo=True, opset_version=vx.OPSET, verbose=False, optimize=True,
                custom_translation_table={torch.ops.vsqe.deform_conv2d.default: vx._dynamo_translation()},
                input_names=input_names, output_names=output_names,
            )
        except Exception as exc:  # torch raises many types here; one line is enough
            raise vx.ExportError(f"ONNX export of BasicVSR++ graph {label!r} failed: {vx._first_line(exc)}") from exc
    proto = vx._finish(program.model_proto)
    return vx.deformconv_to_plugin(proto) if dcn == "plugin" else proto


def export_steps(model: "BasicVSRPlusPlus", height: int, width: int, *, batch: int = 1,
                 dcn: vx.DcnMode = "onnx", fp16: bool = False) -> dict[str, "onnx.ModelProto"]:
    """All per-step graphs of `model` for frames of height x width, by name (GRAPH_NAMES order)."""
    shapes = step_shapes(model, height, width, batch)
    modules = _modules(model.eval())
    out = {}
    for name in GRAPH_NAMES:
        args, ins, outs = _examples(shapes, name)
        proto = export_graph(modules[name], args, ins, outs, name, dcn)
        out[name] = vx.convert_fp16(proto) if fp16 else proto
    return out


def save_steps(graphs: dict[str, "onnx.ModelProto"], folder: str | Path, *, model: str, shapes: StepShapes,
               dcn: vx.DcnMode = "onnx", fp16: bool = False) -> Path:
    """Writes `<graph>.onnx` files and a manifest (sizes, DCN flavour, hashes) into `folder`."""
    folder = Path(folder)
    files = {}
    for name, proto in graphs.items():
        vx.save_onnx(proto, folder / f"{name}.onnx")
        files[name] = {"file": f"{name}.onnx", "sha256": vx.onnx_sha256(proto), "nodes": len(proto.graph.node)}
    manifest = {"version": MANIFEST_VERSION, "model": model, "shapes": shapes.__dict__, "dcn": dcn,
                "precision": "fp16" if fp16 else "fp32", "graphs": files}
    path = folder / MANIFEST
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def export_model_steps(name: str, height: int, width: int, *, weights: str | None = None,
                       allow_untrained: bool = False, dcn: vx.DcnMode = "onnx", fp16: bool = False,
                       ) -> tuple["BasicVSRPlusPlus", StepShapes, dict[str, "onnx.ModelProto"]]:
    """Builds registered BasicVSR++ model `name` and exports its steps at its padded size for
    height x width (size multiple and minimum applied, as the pipeline pads)."""
    from vsqe.models import build_model

    module, spec, _ = build_model(name, weights, require_weights=not allow_untrained)
    shapes = padded_step_shapes(module, spec, height, width)
    return module, shapes, export_steps(module, shapes.height, shapes.width, dcn=dcn, fp16=fp16)


def padded_step_shapes(module: object, spec, height: int, width: int) -> StepShapes:
    """The step shapes the pipeline runs for height x width frames: padded to the model's size
    multiple and minimum (as run_segment pads), then checked by step_shapes."""
    if not is_basicvsrpp(module):
        raise vx.ExportError(f"model {spec.name!r} is not a BasicVSR++ network: no per-step graphs")
    shape = vx.example_shape(spec, height, width, frames=1)
    return step_shapes(module, shape.height, shape.width)  # type: ignore[arg-type]


def is_basicvsrpp(module: object) -> bool:
    from vsqe.models.basicvsrpp import BasicVSRPlusPlus

    return isinstance(module, BasicVSRPlusPlus)


# ---- the loop, over any engine set ----------------------------------------------------------------


class StepExecutor(Protocol):
    """An engine set: runs the step graphs by name on arrays of its own kind (host numpy arrays
    for ONNX Runtime, device tensors for TensorRT). StepLoop only passes these arrays from one
    call to the next and never looks inside them, so they stay wherever the executor keeps them."""

    shapes: StepShapes

    def frames(self, lqs: Any) -> list[Any]:
        """The segment [N, T, C, H, W] (host memory, torch or numpy) as T inputs [N, C, H, W]."""
        ...

    def zeros(self, shape: Shape) -> Any:
        """A float32 zero array: the history a branch has not got at its first two steps."""
        ...

    def gates(self, has_n1: bool, has_n2: bool) -> Any:
        """The step graphs' `gates` input [2] = (has_n1, has_n2) as 0.0 / 1.0."""
        ...

    def run(self, graph: str, inputs: dict[str, Any]) -> list[Any]:
        """Runs one graph on its named inputs; returns its outputs in graph_io order."""
        ...

    def output(self, frames: int) -> Any:
        """A host array for a segment's output [N, T, C, sH, sW]."""
        ...

    def store(self, out: Any, index: int, frame: Any) -> None:
        """Puts reconstructed frame `index` [N, C, sH, sW] into `out`."""
        ...

    def finish(self, out: Any) -> Any:
        """`out`, complete (an executor with pending device copies waits for them here)."""
        ...


class StepLoop:
    """Runs BasicVSR++ segments through the per-step graphs of an engine set.

    `loop(x)` takes [N, T, C, H, W] (torch or numpy, float32, H x W the exported size) and
    returns [N, T, C, sH, sW] of the same kind, like the torch module, so it drops into
    pipeline.segments' run_segment / stream_segments in place of the module. The loop mirrors
    BasicVSRPlusPlus.forward: features and flows per frame, four branches, and each frame
    reconstructed as soon as forward_2 has passed it. Features and flows are the executor's
    arrays from the call that made them to the last call that reads them (on a GPU executor they
    never leave the device).
    """

    def __init__(self, executor: StepExecutor) -> None:
        self.executor = executor

    @property
    def shapes(self) -> StepShapes:
        return self.executor.shapes

    def __call__(self, x):
        import torch

        out = self.run(x)
        if isinstance(x, torch.Tensor):
            return out if isinstance(out, torch.Tensor) else torch.from_numpy(out)
        return out.numpy() if isinstance(out, torch.Tensor) else out

    def run(self, lqs):
        """[N, T, C, H, W] (host) -> [N, T, C, sH, sW] in the executor's host array kind."""
        e, s = self.executor, self.shapes
        n, t, c, h, w = tuple(lqs.shape)
        if (n, c, h, w) != (s.batch, s.in_channels, s.height, s.width):
            from vsqe.errors import ModelError

            raise ModelError(f"BasicVSR++ step graphs were exported for {s.batch}x{s.in_channels}x{s.width}x{s.height} "
                             f"frames, got {n}x{c}x{w}x{h}")
        frames = e.frames(lqs)
        spatial, small = [], []
        for f in frames:
            feat, sm = e.run("features", {"frame": f})
            spatial.append(feat)
            small.append(sm)
        flows_backward = [e.run("flow", {"ref": small[i], "supp": small[i + 1]})[0] for i in range(t - 1)]
        flows_forward = [e.run("flow", {"ref": small[i + 1], "supp": small[i]})[0] for i in range(t - 1)]
        del small
        b1 = self._propagate("backward_1", spatial, [], flows_backward)
        f1 = self._propagate("forward_1", spatial, [b1], flows_forward)
        b2 = self._propagate("backward_2", spatial, [b1, f1], flows_backward)
        del flows_backward
        out = e.output(t)
        for idx, f2 in self._steps("forward_2", spatial, [b1, f1, b2], flows_forward):
            inputs = {"lq": frames[idx], "spatial": spatial[idx], "b1": b1[idx], "f1": f1[idx], "b2": b2[idx], "f2": f2}
            e.store(out, idx, e.run("reconstruct", inputs)[0])
            # as the model: free what nothing reads again
            frames[idx] = spatial[idx] = b1[idx] = f1[idx] = b2[idx] = None
        return e.finish(out)

    def _propagate(self, branch: str, spatial: list, previous: list[list], flows: list) -> list:
        feats: list = [None] * len(spatial)
        for idx, feat in self._steps(branch, spatial, previous, flows):
            feats[idx] = feat
        return feats

    def _steps(self, branch: str, spatial: list, previous: list[list], flows: list) -> Iterator[tuple[int, Any]]:
        """Yields (frame index, propagated feature) in the branch's visiting order; mirrors
        BasicVSRPlusPlus._propagate with zeros (and gates 0) where the model has no history."""
        e, s = self.executor, self.shapes
        t = len(spatial)
        backward = branch.startswith("backward")
        order = range(t - 1, -1, -1) if backward else range(t)
        zeros_feat = e.zeros((s.batch, s.channels, s.feat_height, s.feat_width))
        zeros_flow = e.zeros((s.batch, 2, s.feat_height, s.feat_width))
        feat_n1 = feat_n2 = zeros_feat
        flow_prev = zeros_flow
        for i, idx in enumerate(order):
            flow_n1 = zeros_flow if i == 0 else (flows[idx] if backward else flows[idx - 1])
            inputs = {"current": spatial[idx], "feat_n1": feat_n1, "feat_n2": feat_n2, "flow_n1": flow_n1,
                      "flow_prev": flow_prev, "gates": e.gates(i > 0, i > 1)}
            inputs.update({f"prev_{k}": p[idx] for k, p in enumerate(previous)})
            feat = e.run(f"step_{branch}", inputs)[0]
            if i > 0:
                flow_prev = flow_n1
            feat_n2, feat_n1 = feat_n1, feat
            yield idx, feat


# ---- ONNX Runtime ---------------------------------------------------------------------------------


class OrtSteps:
    """The engine set in ONNX Runtime (CPU): one session per graph, host numpy arrays."""

    def __init__(self, graphs: dict[str, "onnx.ModelProto | bytes | str | Path"], shapes: StepShapes,
                 threads: int = 1) -> None:
        import onnxruntime as ort

        missing = [g for g in GRAPH_NAMES if g not in graphs]
        if missing:
            raise vx.ExportError(f"BasicVSR++ step graphs missing: {', '.join(missing)}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.shapes = shapes
        self.sessions = {}
        for name in GRAPH_NAMES:
            g = graphs[name]
            if not isinstance(g, (bytes, str, Path)):
                g = vx.model_bytes(vx.plugin_to_deformconv(g))  # ORT cannot run the plugin node
            self.sessions[name] = ort.InferenceSession(
                g if isinstance(g, bytes) else str(g), opts, providers=["CPUExecutionProvider"])

    def frames(self, lqs) -> list["np.ndarray"]:
        import numpy as np
        import torch

        if isinstance(lqs, torch.Tensor):
            lqs = lqs.detach().cpu().numpy()
        lqs = np.ascontiguousarray(lqs, dtype=np.float32)
        return [np.ascontiguousarray(lqs[:, i]) for i in range(lqs.shape[1])]

    def zeros(self, shape: Shape) -> "np.ndarray":
        import numpy as np

        return np.zeros(shape, dtype=np.float32)

    def gates(self, has_n1: bool, has_n2: bool) -> "np.ndarray":
        import numpy as np

        return np.array([float(has_n1), float(has_n2)], dtype=np.float32)

    def run(self, graph: str, inputs: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        return self.sessions[graph].run(None, inputs)

    def output(self, frames: int) -> "np.ndarray":
        import numpy as np

        s = self.shapes
        return np.empty((s.batch, frames, s.in_channels, s.height * s.scale, s.width * s.scale), dtype=np.float32)

    def store(self, out: "np.ndarray", index: int, frame: "np.ndarray") -> None:
        out[:, index] = frame

    def finish(self, out: "np.ndarray") -> "np.ndarray":
        return out


class StepRunner(StepLoop):
    """StepLoop over ONNX Runtime sessions (the CPU reference): `StepRunner(graphs, shapes)`."""

    def __init__(self, graphs: dict[str, "onnx.ModelProto | bytes | str | Path"], shapes: StepShapes,
                 threads: int = 1) -> None:
        super().__init__(OrtSteps(graphs, shapes, threads))

    @property
    def sessions(self) -> dict:
        return self.executor.sessions  # type: ignore[attr-defined]

    @classmethod
    def load(cls, folder: str | Path, threads: int = 1) -> "StepRunner":
        """Opens a folder written by save_steps (DCN as ONNX DeformConv: ORT cannot run the plugin)."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise vx.ExportError(f"cannot read {folder / MANIFEST}: {exc}") from None
        if manifest.get("version") != MANIFEST_VERSION:
            raise vx.ExportError(f"{folder / MANIFEST}: unknown manifest version {manifest.get('version')!r}")
        graphs: dict = {}
        for name, entry in manifest["graphs"].items():
            data = (folder / entry["file"]).read_bytes()
            if manifest.get("dcn") == "plugin":
                import onnx

                data = vx.model_bytes(vx.plugin_to_deformconv(onnx.load_from_string(data)))
            graphs[name] = data
        return cls(graphs, StepShapes(**manifest["shapes"]), threads)


# ---- with the segment machinery ----------------------------------------------------------------


def enhance_frames(runner: Callable, frames: Iterable["torch.Tensor"], plan: "SegmentPlan", *,
                   multiple: int, min_size: int, scale: int = 1) -> Iterator["torch.Tensor"]:
    """Streams [3, H, W] RGB frames through `runner` (a StepRunner, or the torch module) in the
    pipeline's segments: padded by run_segment, cut by stream_segments, like Enhancer does."""
    import torch

    from vsqe.pipeline.segments import run_segment, stream_segments

    def process(items: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x = torch.stack(list(items)).unsqueeze(0)
        with torch.no_grad():
            y = run_segment(runner, x, multiple, min_size, scale)
        return list(y[0])

    for _, out in stream_segments(frames, process, plan):
        yield out
