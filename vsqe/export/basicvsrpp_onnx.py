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
"""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

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

    from vsqe.models.spynet import flow_warp

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
            return self.spynet(ref, supp)

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
    """Sizes of one export: batch, frame H x W, feature h x w, flow-input hs x ws, channels C."""

    batch: int
    height: int
    width: int
    feat_height: int
    feat_width: int
    small_height: int
    small_width: int
    channels: int
    scale: int


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
    return StepShapes(batch, height, width, fh, fw, sh, sw, model.mid_channels, model.scale)


def _examples(s: StepShapes, name: str) -> tuple[tuple, list[str], list[str]]:
    """Example inputs (random: shapes are all that matters), input names, output names."""
    import torch

    gen = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.rand(shape, generator=gen)  # noqa: E731
    n, c = s.batch, s.channels
    feat = lambda: rnd(n, c, s.feat_height, s.feat_width)  # noqa: E731
    if name == "features":
        return (rnd(n, 3, s.height, s.width),), ["frame"], ["feat", "small"]
    if name == "flow":
        small = lambda: rnd(n, 3, s.small_height, s.small_width)  # noqa: E731
        return (small(), small()), ["ref", "supp"], ["flow"]
    if name == "reconstruct":
        args = (rnd(n, 3, s.height, s.width), *(feat() for _ in range(5)))
        return args, ["lq", "spatial", "b1", "f1", "b2", "f2"], ["output"]
    index = BRANCHES.index(name[len("step_"):])
    flow = lambda: rnd(n, 2, s.feat_height, s.feat_width)  # noqa: E731
    previous = [feat() for _ in range(index)]
    args = (feat(), feat(), feat(), flow(), flow(), torch.ones(2), previous)
    names = ["current", "feat_n1", "feat_n2", "flow_n1", "flow_prev", "gates"]
    return args, names + [f"prev_{i}" for i in range(index)], ["feat"]


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
    if not is_basicvsrpp(module):
        raise vx.ExportError(f"model {name!r} is not a BasicVSR++ network: no per-step export")
    shape = vx.example_shape(spec, height, width, frames=1)
    shapes = step_shapes(module, shape.height, shape.width)
    return module, shapes, export_steps(module, shape.height, shape.width, dcn=dcn, fp16=fp16)


def is_basicvsrpp(module: object) -> bool:
    from vsqe.models.basicvsrpp import BasicVSRPlusPlus

    return isinstance(module, BasicVSRPlusPlus)


# ---- the runner ---------------------------------------------------------------------------------


class StepRunner:
    """Runs BasicVSR++ segments through the per-step graphs with ONNX Runtime.

    `runner(x)` takes [N, T, 3, H, W] (torch or numpy, float32, H x W the exported size) and
    returns [N, T, 3, sH, sW] like the torch module, so it drops into pipeline.segments'
    run_segment / stream_segments in place of the module. The loop mirrors
    BasicVSRPlusPlus.forward: features and flows per frame, four branches, and each frame
    reconstructed as soon as forward_2 has passed it.
    """

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

    def _run(self, name: str, **inputs: "np.ndarray") -> list["np.ndarray"]:
        return self.sessions[name].run(None, inputs)

    def __call__(self, x):
        import numpy as np
        import torch

        as_torch = isinstance(x, torch.Tensor)
        lqs = np.ascontiguousarray(x.detach().cpu().numpy() if as_torch else x, dtype=np.float32)
        out = self.run(lqs)
        return torch.from_numpy(out) if as_torch else out

    def run(self, lqs: "np.ndarray") -> "np.ndarray":
        import numpy as np

        n, t, c, h, w = lqs.shape
        s = self.shapes
        if (n, c, h, w) != (s.batch, 3, s.height, s.width):
            from vsqe.errors import ModelError

            raise ModelError(f"BasicVSR++ step graphs were exported for {s.batch}x3x{s.width}x{s.height} "
                             f"frames, got {n}x{c}x{w}x{h}")
        frames = [np.ascontiguousarray(lqs[:, i]) for i in range(t)]
        spatial, small = [], []
        for f in frames:
            feat, sm = self._run("features", frame=f)
            spatial.append(feat)
            small.append(sm)
        flows_backward = [self._run("flow", ref=small[i], supp=small[i + 1])[0] for i in range(t - 1)]
        flows_forward = [self._run("flow", ref=small[i + 1], supp=small[i])[0] for i in range(t - 1)]
        del small
        b1 = self._propagate("backward_1", spatial, [], flows_backward)
        f1 = self._propagate("forward_1", spatial, [b1], flows_forward)
        b2 = self._propagate("backward_2", spatial, [b1, f1], flows_backward)
        out = np.empty((n, t, 3, h * s.scale, w * s.scale), dtype=np.float32)
        for idx, f2 in self._steps("forward_2", spatial, [b1, f1, b2], flows_forward):
            out[:, idx] = self._run("reconstruct", lq=frames[idx], spatial=spatial[idx], b1=b1[idx],
                                    f1=f1[idx], b2=b2[idx], f2=f2)[0]
            spatial[idx] = b1[idx] = f1[idx] = b2[idx] = None  # as the model: free what nothing reads again
        return out

    def _propagate(self, branch: str, spatial: list, previous: list[list], flows: list) -> list:
        feats: list = [None] * len(spatial)
        for idx, feat in self._steps(branch, spatial, previous, flows):
            feats[idx] = feat
        return feats

    def _steps(self, branch: str, spatial: list, previous: list[list], flows: list) -> Iterator[tuple[int, "np.ndarray"]]:
        """Yields (frame index, propagated feature) in the branch's visiting order; mirrors
        BasicVSRPlusPlus._propagate with zeros (and gates 0) where the model has no history."""
        import numpy as np

        t = len(spatial)
        backward = branch.startswith("backward")
        order = range(t - 1, -1, -1) if backward else range(t)
        zeros_feat = np.zeros_like(spatial[0])
        zeros_flow = np.zeros((spatial[0].shape[0], 2, *spatial[0].shape[2:]), dtype=np.float32)
        feat_n1 = feat_n2 = zeros_feat
        flow_prev = zeros_flow
        for i, idx in enumerate(order):
            flow_n1 = zeros_flow if i == 0 else (flows[idx] if backward else flows[idx - 1])
            gates = np.array([float(i > 0), float(i > 1)], dtype=np.float32)
            inputs = dict(current=spatial[idx], feat_n1=feat_n1, feat_n2=feat_n2, flow_n1=flow_n1,
                          flow_prev=flow_prev, gates=gates)
            inputs.update({f"prev_{k}": p[idx] for k, p in enumerate(previous)})
            feat = self._run(f"step_{branch}", **inputs)[0]
            if i > 0:
                flow_prev = flow_n1
            feat_n2, feat_n1 = feat_n1, feat
            yield idx, feat


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
