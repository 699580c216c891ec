"""ONNX export of the registered models, DCN included.

Our DCN is the torch custom op ``vsqe::deform_conv2d``; exporting it needs a translation:

* ``dcn="onnx"`` (default): the standard ``DeformConv`` of opset 19, which ONNX Runtime (>= 1.25)
  runs on the CPU and TensorRT (>= 10.1) imports natively through its built-in
  ``ModulatedDeformConv2d`` plugin.
* ``dcn="plugin"``: a node for our own TensorRT plugin (plugins/): op_type ``VsqeDeformConv2d``,
  domain ``vsqe``, inputs (x, offset, mask, weight, bias), attributes stride, padding, dilation,
  group, deformable_group (the plugin's fields) plus plugin_version / plugin_namespace, which
  TensorRT's ONNX parser reads to find the creator. ONNX Runtime cannot run this flavour;
  :func:`plugin_to_deformconv` maps it back for checks.

Two exporters, both measured on torch 2.14 (STDF 48x64, dynamic H/W, CPU seconds on this
machine): the dynamo exporter (``torch.onnx.export(dynamo=True)`` with a custom translation table
emitting ``opset19.DeformConv``) takes ~5-7 s and is the default: it is torch's supported path and
keeps shape arithmetic symbolic (BasicVSR++'s SpyNet rescales flows by W/W_up, which the
TorchScript tracer would freeze into constants). The TorchScript exporter
(``register_custom_op_symbolic``) takes ~3 s and is kept as ``exporter="torchscript"`` for
window models; it is deprecated in torch.

The model input is ``input`` [N, T, C, H, W] float32 in [0, 1]; the output ``output`` is
[N, C, H, W] (window models) or [N, T, C, s*H, s*W] (recurrent models). H and W are dynamic
(multiples of ``spec.size_multiple``, at least ``spec.min_size``) unless ``dynamic=False``.
IR version is pinned to 10 (ONNX Runtime 1.30/1.31 refuse onnx 1.23's default IR).

fp16: :func:`convert_fp16` converts with onnxruntime's float16 tool, keeping in fp32 the DCN, the
nodes that compute its offsets and masks (back to their producing conv), the coordinate maths
of GridSample (flows), and the last conv before each output. I/O stays fp32.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import torch

    from vsqe.models.registry import ModelSpec

OPSET = 19
IR_VERSION = 10
INPUT_NAME = "input"
OUTPUT_NAME = "output"

# Our TensorRT plugin (plugins/vsqe_dcn_plugin.h must agree; tests/export checks it).
PLUGIN_NAME = "VsqeDeformConv2d"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "vsqe"
PLUGIN_FIELDS = ("stride", "padding", "dilation", "group", "deformable_group")

DcnMode = Literal["onnx", "plugin"]
Exporter = Literal["dynamo", "torchscript"]


class ExportError(RuntimeError):
    """The model could not be exported (see the message)."""


class StaticShapesOnly(ExportError):
    """The exporter specialised H and W: the model exports with static shapes only."""


@dataclass(frozen=True)
class ExportShape:
    """The example input of an export: [batch, frames, channels, height, width]."""

    batch: int
    frames: int
    channels: int
    height: int
    width: int

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (self.batch, self.frames, self.channels, self.height, self.width)


def example_shape(spec: "ModelSpec", height: int, width: int, frames: int | None = None, batch: int = 1) -> ExportShape:
    """The input shape a model takes at (height, width), rounded up to its size rules.

    Window models take 2*radius+1 frames; recurrent models a segment of `frames` frames
    (default: segment_length + 2*segment_overlap, what the pipeline feeds)."""
    if spec.temporal == "recurrent":
        t = frames if frames is not None else spec.segment_length + 2 * spec.segment_overlap
    else:
        t = spec.window
        if frames is not None and frames != t:
            raise ExportError(f"model {spec.name!r} takes {t} frames, not {frames}")
    if t < 1:
        raise ExportError("frames must be >= 1")
    m = max(1, spec.size_multiple)
    h = max(_round_up(height, m), _round_up(spec.min_size, m))
    w = max(_round_up(width, m), _round_up(spec.min_size, m))
    return ExportShape(batch, t, 1 if spec.color == "y" else 3, h, w)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


# ---- translations of vsqe::deform_conv2d -------------------------------------------------------


def _dynamo_translation():
    from onnxscript import opset19 as op

    def deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups):
        kh, kw = weight.shape[2], weight.shape[3]
        return op.DeformConv(
            x, weight, offset, bias, mask,
            dilations=[int(dilation[0]), int(dilation[1])],
            group=int(groups),
            kernel_shape=[int(kh), int(kw)],
            offset_group=int(offset_groups),
            pads=[int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])],
            strides=[int(stride[0]), int(stride[1])],
        )

    return deform_conv2d


def _torchscript_symbolic(g, x, offset, mask, weight, bias, stride, padding, dilation, groups, offset_groups):
    from torch.onnx import symbolic_helper as sh

    s = sh._get_const(stride, "is", "stride")
    p = sh._get_const(padding, "is", "padding")
    d = sh._get_const(dilation, "is", "dilation")
    sizes = sh._get_tensor_sizes(weight)
    if sh._is_none(bias):
        import torch

        bias = g.op("Constant", value_t=torch.zeros(sizes[0]))
    return g.op(
        "DeformConv", x, weight, offset, bias, mask,
        dilations_i=list(d), group_i=sh._get_const(groups, "i", "groups"), kernel_shape_i=list(sizes[2:]),
        offset_group_i=sh._get_const(offset_groups, "i", "offset_groups"),
        pads_i=[p[0], p[1], p[0], p[1]], strides_i=list(s),
    )


_TS_REGISTERED = False


def _register_torchscript_symbolic() -> None:
    global _TS_REGISTERED
    if not _TS_REGISTERED:
        from torch.onnx import register_custom_op_symbolic

        register_custom_op_symbolic("vsqe::deform_conv2d", _torchscript_symbolic, OPSET)
        _TS_REGISTERED = True


# ---- export -----------------------------------------------------------------------------------


def export_module(
    module: "torch.nn.Module",
    spec: "ModelSpec | None",
    shape: ExportShape,
    *,
    dynamic: bool = True,
    dcn: DcnMode = "onnx",
    exporter: Exporter = "dynamo",
    max_size: tuple[int, int] | None = None,
) -> "onnx.ModelProto":
    """Exports `module` (built from `spec`, eval mode) to an in-memory ONNX model.

    `shape` is the example input; with `dynamic`, H and W are free (multiples of
    spec.size_multiple, at least spec.min_size, at most `max_size` (H, W) when given). `spec`
    may be None for a static export (the TensorRT backend exports the module it is given at each
    input shape it meets)."""
    import onnx
    import torch

    import vsqe.ops  # noqa: F401  (registers torch.ops.vsqe.deform_conv2d)

    if dcn not in ("onnx", "plugin"):
        raise ExportError(f"dcn must be 'onnx' or 'plugin', got {dcn!r}")
    if exporter not in ("dynamo", "torchscript"):
        raise ExportError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
    if spec is None and dynamic:
        raise ExportError("a dynamic export needs the model's spec (size rules)")
    label = spec.name if spec is not None else type(module).__name__
    module = module.eval()
    x = torch.rand(shape.as_tuple(), generator=torch.Generator().manual_seed(0))
    out_axes = (3, 4) if spec is not None and spec.temporal == "recurrent" else (2, 3)
    # The exporters print progress on stdout; stdout may be a y4m pipe.
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        if exporter == "dynamo":
            dynamic_shapes = None
            if dynamic:
                dynamic_shapes = ({3: _dim("height", spec, max_size and max_size[0]),
                                   4: _dim("width", spec, max_size and max_size[1])},)
            try:
                program = torch.onnx.export(
                    module, (x,), dynamo=True, opset_version=OPSET, verbose=False, optimize=True,
                    custom_translation_table={torch.ops.vsqe.deform_conv2d.default: _dynamo_translation()},
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes,
                )
            except Exception as exc:  # torch raises many types here; one line is enough
                raise ExportError(f"dynamo ONNX export of {label!r} failed: {_first_line(exc)}") from exc
            proto = program.model_proto
        else:
            import io
            import warnings

            _register_torchscript_symbolic()
            buf = io.BytesIO()
            axes = None
            if dynamic:
                axes = {INPUT_NAME: {3: "height", 4: "width"},
                        OUTPUT_NAME: {out_axes[0]: "out_height", out_axes[1]: "out_width"}}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    torch.onnx.export(
                        module, (x,), buf, dynamo=False, opset_version=OPSET,
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                    )
                except Exception as exc:
                    raise ExportError(f"TorchScript ONNX export of {label!r} failed: {_first_line(exc)}") from exc
            proto = onnx.load_from_string(buf.getvalue())
    proto = _finish(proto)
    if dynamic and not has_dynamic_hw(proto):
        # torch.export specialises sizes that the model turns into Python numbers (BasicVSR++'s
        # SpyNet rescales flows by float(W) / float(W_up)): such models export per shape.
        raise StaticShapesOnly(
            f"model {label!r} cannot be exported with dynamic H/W (the exporter fixed them to "
            f"{shape.height}x{shape.width}); export it with static shapes"
        )
    if dcn == "plugin":
        proto = deformconv_to_plugin(proto)
    return proto


def _dim(name: str, spec: "ModelSpec", max_value: int | None):
    from torch.export import Dim

    m = max(1, spec.size_multiple)
    lo = max(2, -(-max(spec.min_size, 1) // m))  # torch.export treats 0 and 1 as special
    hi = None if max_value is None else max(lo, max_value // m)
    if m == 1:
        return Dim(name, min=lo, max=hi) if hi else Dim(name, min=lo)
    base = Dim(f"{name}_div{m}", min=lo, max=hi) if hi else Dim(f"{name}_div{m}", min=lo)
    return m * base


def _finish(proto: "onnx.ModelProto") -> "onnx.ModelProto":
    """IR version, unique node names, no leftover function domains; checked."""
    import onnx

    proto.ir_version = IR_VERSION
    if not any(o.domain in ("", "ai.onnx") and o.version >= OPSET for o in proto.opset_import):
        raise ExportError(f"exported model has no ai.onnx opset >= {OPSET}")
    seen: set[str] = set()
    for i, node in enumerate(proto.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)
    proto.producer_name = "vsqe"
    onnx.checker.check_model(proto)
    return proto


def export_model(
    name: str,
    height: int,
    width: int,
    *,
    weights: str | None = None,
    allow_untrained: bool = False,
    frames: int | None = None,
    batch: int = 1,
    dynamic: bool | None = None,
    dcn: DcnMode = "onnx",
    exporter: Exporter = "dynamo",
    fp16: bool = False,
    max_size: tuple[int, int] | None = None,
) -> tuple["onnx.ModelProto", "ModelSpec", ExportShape]:
    """Builds registered model `name` with its weights and exports it (see export_module).

    `dynamic=None`: dynamic H/W where the model allows it, else static (recurrent models, and
    models whose export specialises the sizes: those using SpyNet, see export_module)."""
    from vsqe.models import build_model

    module, spec, _ = build_model(name, weights, require_weights=not allow_untrained)
    shape = example_shape(spec, height, width, frames, batch)
    if dynamic is None and spec.temporal != "recurrent":
        try:
            proto = export_module(module, spec, shape, dynamic=True, dcn=dcn, exporter=exporter, max_size=max_size)
        except StaticShapesOnly:
            sys.stderr.write(f"vsqe: {name} exports with static shapes only ({shape.width}x{shape.height})\n")
            proto = export_module(module, spec, shape, dynamic=False, dcn=dcn, exporter=exporter)
    else:
        proto = export_module(module, spec, shape, dynamic=bool(dynamic), dcn=dcn, exporter=exporter,
                              max_size=max_size)
    if fp16:
        proto = convert_fp16(proto)
    return proto, spec, shape


# ---- the plugin flavour -----------------------------------------------------------------------


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def deformconv_to_plugin(proto: "onnx.ModelProto") -> "onnx.ModelProto":
    """Replaces every DeformConv node by a node of our TensorRT plugin (same maths)."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = []
    for node in out.graph.node:
        if node.op_type != "DeformConv" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        ins = list(node.input) + [""] * (5 - len(node.input))
        x, w, offset, bias, mask = ins[:5]
        if not mask:
            raise ExportError(f"DeformConv {node.name!r} has no mask; the plugin takes a modulation mask")
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise ExportError(f"DeformConv {node.name!r} has asymmetric pads {pads}")
        inputs = [x, offset, mask, w] + ([bias] if bias else [])
        nodes.append(helper.make_node(
            PLUGIN_NAME, inputs, list(node.output), name=node.name, domain=PLUGIN_NAMESPACE,
            stride=list(_attr(node, "strides", [1, 1])), padding=pads[:2],
            dilation=list(_attr(node, "dilations", [1, 1])), group=int(_attr(node, "group", 1)),
            deformable_group=int(_attr(node, "offset_group", 1)),
            plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE,
        ))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if not any(o.domain == PLUGIN_NAMESPACE for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(PLUGIN_NAMESPACE, 1))
    return out


def plugin_to_deformconv(proto: "onnx.ModelProto") -> "onnx.ModelProto":
    """The inverse of deformconv_to_plugin: plugin nodes back to ONNX DeformConv (so ONNX Runtime
    can check a plugin-flavoured model)."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = []
    for node in out.graph.node:
        if node.op_type != PLUGIN_NAME or node.domain != PLUGIN_NAMESPACE:
            nodes.append(node)
            continue
        ins = list(node.input)
        x, offset, mask, w = ins[:4]
        bias = ins[4] if len(ins) > 4 else ""
        p = list(_attr(node, "padding"))
        nodes.append(helper.make_node(
            "DeformConv", [x, w, offset, bias, mask], list(node.output), name=node.name,
            strides=list(_attr(node, "stride")), pads=[p[0], p[1], p[0], p[1]],
            dilations=list(_attr(node, "dilation")), group=int(_attr(node, "group")),
            offset_group=int(_attr(node, "deformable_group")),
        ))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept = [o for o in out.opset_import if o.domain != PLUGIN_NAMESPACE]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out


# ---- fp16 -------------------------------------------------------------------------------------

_DCN_OPS = ("DeformConv", PLUGIN_NAME)
_STOP_OPS = ("Conv", "ConvTranspose")


def fp32_node_names(proto: "onnx.ModelProto") -> list[str]:
    """Nodes that stay fp32 in the fp16 model: the DCNs; everything computing their offsets and
    masks back to (and including) the producing conv; GridSample and its grid (flow) arithmetic
    back to the producing conv; the last conv before each graph output and what follows it."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output if o}
    keep: dict[str, None] = {}

    def walk_back(tensor: str) -> None:
        stack = [tensor]
        seen: set[str] = set()
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            keep[node.name] = None
            if node.op_type not in _STOP_OPS:
                stack.extend(i for i in node.input if i)

    for node in graph.node:
        if node.op_type in _DCN_OPS:
            keep[node.name] = None
            ins = list(node.input)
            # DeformConv(X, W, offset, B, mask); plugin(x, offset, mask, W, B)
            follow = [ins[2]] + ([ins[4]] if len(ins) > 4 else []) if node.op_type == "DeformConv" else ins[1:3]
            for t in follow:
                if t:
                    walk_back(t)
        elif node.op_type == "GridSample":
            keep[node.name] = None
            walk_back(node.input[1])
    for out in graph.output:
        walk_back(out.name)
    return list(keep)


def convert_fp16(proto: "onnx.ModelProto", extra_fp32: Iterable[str] = ()) -> "onnx.ModelProto":
    """fp16 weights and activations except fp32_node_names (+ extra_fp32); fp32 I/O."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    block = fp32_node_names(proto) + [n for n in extra_fp32]
    out = convert_float_to_float16(
        proto, keep_io_types=True, node_block_list=block, op_block_list=None, disable_shape_infer=False
    )
    out.ir_version = IR_VERSION
    # The tool leaves value_info entries whose types disagree with the converted graph; they are
    # optional, and consumers (ONNX Runtime, TensorRT) infer types themselves.
    del out.graph.value_info[:]
    _dedupe_casts(out.graph)  # the tool inserts one Cast per consumer, under one name
    _topological_sort(out.graph)  # and appends its input Casts at the end
    return _finish(out)


def _dedupe_casts(graph) -> None:
    """Drops repeated, identical Cast nodes writing the same tensor (keeps graphs in SSA form)."""
    seen: dict[str, tuple[str, bytes]] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Cast" and len(node.output) == 1:
            key = node.output[0]
            sig = node.SerializeToString(deterministic=True)
            if key in seen:
                probe = type(node)()
                probe.CopyFrom(node)
                probe.name = seen[key][0]
                if probe.SerializeToString(deterministic=True) != seen[key][1]:
                    raise ExportError(f"fp16 conversion wrote {key!r} twice with different Casts")
                continue
            seen[key] = (node.name, sig)
        kept.append(node)
    if len(kept) != len(graph.node):
        copies = [type(n)() for n in kept]
        for c, n in zip(copies, kept):
            c.CopyFrom(n)
        del graph.node[:]
        graph.node.extend(copies)


def _topological_sort(graph) -> None:
    """Reorders graph.node so every input is produced before use (stable for sorted graphs)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError(f"graph has a cycle or a missing input at node {rest[0].name!r}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


# ---- files ------------------------------------------------------------------------------------


def model_bytes(proto: "onnx.ModelProto") -> bytes:
    return proto.SerializeToString(deterministic=True)


def onnx_sha256(proto_or_path: "onnx.ModelProto | str | os.PathLike") -> str:
    """SHA-256 of the serialized model (the engine-cache key's ONNX identity)."""
    if isinstance(proto_or_path, (str, os.PathLike)):
        data = Path(proto_or_path).read_bytes()
    else:
        data = model_bytes(proto_or_path)
    return hashlib.sha256(data).hexdigest()


def save_onnx(proto: "onnx.ModelProto", path: str | os.PathLike) -> Path:
    """Writes atomically (temp file + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(model_bytes(proto))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def has_dynamic_hw(proto: "onnx.ModelProto") -> bool:
    """Whether the model input's H and W axes are symbolic."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return len(dims) == 5 and all(not dims[i].HasField("dim_value") for i in (3, 4))


def io_names(proto: "onnx.ModelProto") -> tuple[str, str]:
    inits = {i.name for i in proto.graph.initializer}
    ins = [i.name for i in proto.graph.input if i.name not in inits]
    return ins[0], proto.graph.output[0].name


def count_ops(proto: "onnx.ModelProto", ops: Sequence[str]) -> int:
    return sum(1 for n in proto.graph.node if n.op_type in ops)


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__
