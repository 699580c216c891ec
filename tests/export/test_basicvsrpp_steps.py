"""BasicVSR++ per-step ONNX graphs (vsqe/export/basicvsrpp_onnx.py) against the torch module.

A tiny random-weight network (C=8, one block per backbone, hr_channels=8) with a randomised
offset head, so the DCN samples between pixels instead of just following the flow. The QE layout
(the default `basicvsrpp`) runs at 256x256 (its minimum: SpyNet sees 64x64); the x4 SR layout at
64x64 only with VSQE_SLOW_TESTS=1 (a second export, ~15 CPU s).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from vsqe.errors import ModelError  # noqa: E402
from vsqe.export import basicvsrpp_onnx as bo  # noqa: E402
from vsqe.export import onnx as vx  # noqa: E402
from vsqe.models.basicvsrpp import BasicVSRPlusPlus  # noqa: E402
from vsqe.pipeline.segments import SegmentPlan  # noqa: E402

SLOW = os.environ.get("VSQE_SLOW_TESTS") == "1"
LAYOUTS = [
    pytest.param((False, 256), id="qe-256"),
    pytest.param((True, 64), id="sr-64", marks=pytest.mark.skipif(not SLOW, reason="set VSQE_SLOW_TESTS=1")),
]


def _tiny(low_res: bool) -> BasicVSRPlusPlus:
    torch.manual_seed(0)
    model = BasicVSRPlusPlus(8, 1, is_low_res_input=low_res, hr_channels=8).eval()
    with torch.no_grad():  # offset residuals of a few pixels: samples fall between pixels
        for key, p in model.named_parameters():
            if "conv_offset.6" in key:
                p.normal_(0, 0.05)
    return model


def _frames(t: int, size: int, seed: int) -> torch.Tensor:
    """Smooth content moving ~1.5 px per frame (so flows are not zero) plus a little noise."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    frames = [torch.stack([0.5 + 0.4 * torch.sin((xx + 1.5 * i) / (5 + c) + yy / 7) for c in range(3)])
              for i in range(t)]
    x = torch.stack(frames).unsqueeze(0)
    return (x + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


@pytest.fixture(scope="module", params=LAYOUTS)
def exported(request):
    low_res, size = request.param
    model = _tiny(low_res)
    graphs = bo.export_steps(model, size, size)
    return model, size, graphs, bo.StepRunner(graphs, bo.step_shapes(model, size, size))


def test_graph_structure(exported):
    """Opset 19, IR 10, plain ONNX; one DeformConv in each step graph and none elsewhere."""
    model, size, graphs, _ = exported
    assert list(graphs) == list(bo.GRAPH_NAMES)
    for name, proto in graphs.items():
        assert proto.ir_version == vx.IR_VERSION
        assert any(o.domain in ("", "ai.onnx") and o.version == vx.OPSET for o in proto.opset_import)
        assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
        assert vx.count_ops(proto, ["DeformConv"]) == (1 if name.startswith("step_") else 0), name
        for value in proto.graph.input:  # static shapes: every dim is a number
            assert all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim), (name, value.name)
    dcn = next(n for n in graphs["step_forward_2"].graph.node if n.op_type == "DeformConv")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in dcn.attribute}
    assert attrs["offset_group"] == 16 and list(attrs["kernel_shape"]) == [3, 3]
    ins = [[i.name for i in graphs[f"step_{b}"].graph.input] for b in bo.BRANCHES]
    assert ins[0][-1] == "gates" and ins[3][-3:] == ["prev_0", "prev_1", "prev_2"]


def test_segment_matches_torch(exported):
    """A whole 4-frame segment through ONNX Runtime equals the torch module's forward."""
    model, size, _, runner = exported
    x = _frames(4, size, seed=1)
    with torch.no_grad():
        ref = model(x)
    out = runner(x)
    assert out.shape == ref.shape == (1, 4, 3, size * model.scale, size * model.scale)
    err = (out - ref).abs().max().item()
    assert err <= 1e-4, err


def test_segments_of_a_clip_match_torch(exported):
    """Through the pipeline's segment machinery (stream_segments + run_segment, L=2, O=1, 5 frames,
    smaller frames padded up): segments of 2..4 frames, one set of graphs."""
    model, size, _, runner = exported
    clip = list(_frames(5, size, seed=2)[0, :, :, : size - 8, : size - 4])
    kw = dict(multiple=1 if model.is_low_res_input else 4, min_size=size, scale=model.scale)
    plan = SegmentPlan(2, 1)
    ours = list(bo.enhance_frames(runner, iter(clip), plan, **kw))
    ref = list(bo.enhance_frames(model, iter(clip), plan, **kw))
    assert len(ours) == len(ref) == 5
    assert ours[0].shape == ((3, (size - 8) * model.scale, (size - 4) * model.scale))
    assert max((a - b).abs().max().item() for a, b in zip(ours, ref)) <= 1e-4


def test_plugin_flavour_saved_and_loaded(exported, tmp_path):
    """The plugin flavour carries our TensorRT node; saved with a manifest, loaded back (mapped to
    DeformConv for ONNX Runtime), it gives the same numbers."""
    model, size, graphs, runner = exported
    plug = {k: vx.deformconv_to_plugin(v) for k, v in graphs.items()}
    assert all(vx.count_ops(plug[f"step_{b}"], [vx.PLUGIN_NAME]) == 1 for b in bo.BRANCHES)
    shapes = bo.step_shapes(model, size, size)
    bo.save_steps(plug, tmp_path, model="tiny", shapes=shapes, dcn="plugin")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{g}.onnx" for g in bo.GRAPH_NAMES] + [bo.MANIFEST])
    loaded = bo.StepRunner.load(tmp_path)
    x = _frames(3, size, seed=3).numpy()
    np.testing.assert_array_equal(loaded(x), runner(x))


def test_wrong_size_is_one_line(exported):
    model, size, _, runner = exported
    with pytest.raises(ModelError, match="exported for"):
        runner(torch.zeros(1, 2, 3, size + 4, size))


def test_size_rules():
    with pytest.raises(vx.ExportError, match="at least 64x64"):
        bo.step_shapes(_tiny(False), 128, 256)
    with pytest.raises(vx.ExportError, match="multiples of 4"):
        bo.step_shapes(_tiny(False), 258, 256)
    s = bo.step_shapes(_tiny(True), 64, 72)
    assert (s.feat_height, s.feat_width, s.small_height, s.small_width, s.scale) == (64, 72, 64, 72, 4)


# ---- the loop over an engine set (StepLoop + StepExecutor) -------------------------------------


def test_graph_io_is_what_the_graphs_have(exported):
    """graph_io (what TensorRT engines are checked against and build-engine plans with) names
    and sizes every input and output of the exported graphs, in graph order."""
    model, size, graphs, _ = exported
    shapes = bo.step_shapes(model, size, size)
    for name, proto in graphs.items():
        ins, outs = bo.graph_io(name, shapes)
        dims = lambda values: {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in values}  # noqa: E731
        assert list(dims(proto.graph.input).items()) == list(ins.items()), name
        assert list(dims(proto.graph.output).items()) == list(outs.items()), name
    with pytest.raises(ValueError, match="unknown BasicVSR"):
        bo.graph_io("step_sideways", shapes)


class _Recording:
    """An engine set that runs another one and records each call (graph, gates): the sequence a
    TensorRT engine set sees, checked here on ONNX Runtime."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.shapes = inner.shapes
        self.calls: list[tuple[str, tuple[float, ...] | None]] = []

    def frames(self, lqs):
        return self.inner.frames(lqs)

    def zeros(self, shape):
        return self.inner.zeros(shape)

    def gates(self, has_n1, has_n2):
        return self.inner.gates(has_n1, has_n2)

    def run(self, graph, inputs):
        gates = tuple(inputs["gates"].tolist()) if "gates" in inputs else None
        self.calls.append((graph, gates))
        return self.inner.run(graph, inputs)

    def output(self, frames):
        return self.inner.output(frames)

    def store(self, out, index, frame):
        self.inner.store(out, index, frame)

    def finish(self, out):
        return self.inner.finish(out)


def test_loop_over_an_engine_set(exported):
    """StepLoop over the ONNX Runtime engine set is StepRunner, bit for bit; per frame it makes
    the 8 calls of docs/basicvsrpp.md (features, 2 flows, 4 branch steps, reconstruct), with
    gates (0,0), (1,0), then (1,1) along each branch."""
    model, size, graphs, runner = exported
    t = 4
    x = _frames(t, size, seed=4)
    rec = _Recording(runner.executor)
    out = bo.StepLoop(rec)(x)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), runner(x).numpy())
    names = [g for g, _ in rec.calls]
    assert names.count("features") == t and names.count("flow") == 2 * (t - 1)
    assert all(names.count(f"step_{b}") == t for b in bo.BRANCHES) and names.count("reconstruct") == t
    assert len(names) == 8 * t - 2  # 8 per frame, less the flow a segment's last frame has no partner for
    for b in bo.BRANCHES:
        gates = [g for n, g in rec.calls if n == f"step_{b}"]
        assert gates == [(0.0, 0.0), (1.0, 0.0)] + [(1.0, 1.0)] * (t - 2), b
    # Each frame is reconstructed right after forward_2's step at that frame.
    tail = names[names.index("step_forward_2"):]
    assert tail == ["step_forward_2", "reconstruct"] * t


def test_y_model_steps_match_torch():
    """A Y model (in_channels=1, basicvsrpp-y's layout): 1-channel frames and output, SpyNet fed
    Y replicated inside the flow graph, as the module does."""
    torch.manual_seed(0)
    model = BasicVSRPlusPlus(8, 1, hr_channels=8, in_channels=1).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "conv_offset.6" in key:
                p.normal_(0, 0.05)
    shapes = bo.step_shapes(model, 256, 256)
    assert shapes.in_channels == 1
    graphs = bo.export_steps(model, 256, 256)
    x = _frames(3, 256, seed=5)[:, :, :1]
    with torch.no_grad():
        ref = model(x)
    out = bo.StepRunner(graphs, shapes)(x)
    assert out.shape == ref.shape == (1, 3, 1, 256, 256)
    assert (out - ref).abs().max().item() <= 1e-4
