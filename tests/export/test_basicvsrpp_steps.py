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
