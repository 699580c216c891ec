"""The INT8 experiment's bench backends (bench/int8.py): which convs stay fp32, and that the
quantized graph runs and stays near fp32 (loosely: its accuracy is docs/benchmarks.md's question)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime.quantization")

from vsqe.bench.backends import make_backend  # noqa: E402
from vsqe.models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def stdf():
    torch.manual_seed(0)
    module, spec, _ = build_model("stdf", require_weights=False)
    return module, spec


def test_sensitive_convs_are_the_offset_head_and_the_last_conv(stdf):
    from vsqe.bench.int8 import sensitive_convs
    from vsqe.export.onnx import example_shape, export_module

    module, spec = stdf
    proto = export_module(module.eval().float(), spec, example_shape(spec, 64, 64), dynamic=True)
    names = sensitive_convs(proto)
    assert len(names) == 2
    nodes = {n.name: n for n in proto.graph.node}
    deform = next(n for n in proto.graph.node if n.op_type == "DeformConv")
    producers = {o: n for n in proto.graph.node for o in n.output}
    # the offset input of the DCN comes (through a Slice) from one of them
    offset_src = producers[deform.input[2]]
    assert any(i in nodes[name].output for name in names for i in offset_src.input)


@pytest.mark.parametrize("name", ["ort-int8", "ort-int8-mixed"])
def test_int8_backend_runs_close_to_fp32(stdf, name, tmp_path, monkeypatch, single_thread):
    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(1)
    for k in range(2):  # tiny stand-ins for the training set's compressed clips
        np.save(clips / f"c{k}.x265-ldp-qp37.npy", rng.integers(0, 256, (10, 24, 40), dtype=np.uint8))
    monkeypatch.setenv("VSQE_INT8_CALIB", str(tmp_path))
    module, _ = stdf
    x = torch.rand(1, 7, 1, 24, 40, generator=torch.Generator().manual_seed(2))
    backend = make_backend(name, module, "stdf", threads=1)
    assert backend.name == name and backend.calibration.startswith("2 windows")
    assert (name == "ort-int8-mixed") == bool(backend.fp32_nodes)
    out = backend(x)
    with torch.inference_mode():
        want = module.eval().float()(x)
    assert out.shape == want.shape
    assert (out - want).abs().max().item() < 0.1  # 8-bit activations through ~20 layers
