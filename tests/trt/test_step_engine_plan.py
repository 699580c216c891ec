"""BasicVSR++ on TensorRT without TensorRT: which step engines `vsqe build-engine` builds for a
model and size (export/engine.py's plan_step_engines, a pure function), and the one-line errors
of every entry point when TensorRT (or a GPU) is missing.

The ONNX digests below are made-up SHA-256s: the plan is a function of them, and nothing here
exports, builds or loads anything. Engine outputs are checked on a GPU by test_basicvsrpp_trt_gpu.py.
"""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from vsqe.backends.tensorrt import unavailable_reason
from vsqe.errors import BackendError
from vsqe.export import basicvsrpp_onnx as bo
from vsqe.export.engine import (
    BuildTarget,
    EngineError,
    EngineRequest,
    Profile,
    cache_paths,
    engine_key,
    ensure_step_engines,
    onnx_cache_path,
    plan_step_engines,
    step_engine_model,
    step_profile,
    step_set_fingerprint,
    tensorrt_missing,
)
from vsqe.export.onnx import ExportError
from vsqe.models import get_model_spec
from vsqe.models.basicvsrpp import BasicVSRPlusPlus

TARGET = BuildTarget(precision="fp16", dcn="native", trt_version="11.4.0.106", gpu_name="NVIDIA H100 80GB HBM3",
                     compute_capability=(9, 0), workspace_mb=4096)
needs_no_trt = pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT is installed here")
needs_missing = pytest.mark.skipif(unavailable_reason() is None, reason="TensorRT and a GPU are both here")


def _digests(tag: str = "") -> dict[str, str]:
    return {g: hashlib.sha256(f"{g}{tag}".encode()).hexdigest() for g in bo.GRAPH_NAMES}


def _shapes(name: str, width: int, height: int) -> bo.StepShapes:
    """The step shapes of registered model `name` for width x height frames (random weights:
    shapes depend on the configuration only)."""
    spec = get_model_spec(name)
    return bo.padded_step_shapes(spec.build(), spec, height, width)


def _tiny() -> BasicVSRPlusPlus:
    torch.manual_seed(0)
    return BasicVSRPlusPlus(8, 1, hr_channels=8).eval()


@pytest.mark.parametrize(
    "name, size, frame, feat, out",
    [
        # QE: padded to multiples of 4 and >= 256; features and flows at 1/4 size
        ("basicvsrpp", (1280, 720), (1, 3, 720, 1280), (1, 64, 180, 320), (1, 3, 720, 1280)),
        ("basicvsrpp", (298, 130), (1, 3, 256, 300), (1, 64, 64, 75), (1, 3, 256, 300)),
        ("basicvsrpp-ntire", (720, 720), (1, 3, 720, 720), (1, 128, 180, 180), (1, 3, 720, 720)),
        # SR: features at input size, 4x output
        ("basicvsrpp-mmagic-sr", (320, 180), (1, 3, 180, 320), (1, 64, 180, 320), (1, 3, 720, 1280)),
        # Y: one channel in and out
        ("basicvsrpp-y", (416, 240), (1, 1, 256, 416), (1, 32, 64, 104), (1, 1, 256, 416)),
    ],
)
def test_plan_for_registered_models(tmp_path, name, size, frame, feat, out):
    """Seven engines in graph order, named after model and graph, with the graphs' I/O."""
    shapes = _shapes(name, *size)
    plan = plan_step_engines(name, shapes, _digests(), tmp_path, TARGET)
    assert [e.graph for e in plan] == list(bo.GRAPH_NAMES)
    by = {e.graph: e for e in plan}
    assert by["features"].inputs == {"frame": frame}
    assert by["features"].outputs["feat"] == feat
    assert by["reconstruct"].outputs == {"output": out}
    assert list(by["step_forward_2"].inputs) == [
        "current", "feat_n1", "feat_n2", "flow_n1", "flow_prev", "gates", "prev_0", "prev_1", "prev_2"]
    assert by["step_forward_2"].inputs["flow_n1"] == (1, 2, *feat[2:]) and by["step_backward_1"].inputs["gates"] == (2,)
    label = f"n1t1c{frame[1]}_{frame[3]}x{frame[2]}"
    for e in plan:
        assert e.key.model == f"{name}.{e.graph}" == step_engine_model(name, e.graph)
        assert e.key.input_name == next(iter(e.inputs))
        assert e.key.profile == step_profile(shapes) and e.key.profile.label() == label
        assert e.paths.engine.name.startswith(f"{name}.{e.graph}_{label}_fp16_native_trt11.4.0.106_NVIDIA-H100-80GB-HBM3_sm90_")
        assert e.paths == cache_paths(tmp_path, e.key) and e.paths.engine.parent == tmp_path
        assert e.onnx == onnx_cache_path(tmp_path, e.key.model, e.key.onnx_sha256)
        assert e.onnx.parent == tmp_path / "onnx"


def test_plan_keys_are_the_single_engine_keys(tmp_path):
    """Each step engine is keyed like any engine by engine_key: one cache, one lookup."""
    shapes = _shapes("basicvsrpp", 720, 720)
    digests = _digests()
    for e in plan_step_engines("basicvsrpp", shapes, digests, tmp_path, TARGET):
        assert e.key == engine_key(f"basicvsrpp.{e.graph}", digests[e.graph], step_profile(shapes),
                                   TARGET, input_name=next(iter(e.inputs)))


def test_plan_follows_its_inputs(tmp_path):
    """A changed graph rebuilds only its engine; a changed build setting rebuilds them all; the
    timing cache stays shared."""
    shapes = _shapes("basicvsrpp", 720, 720)
    base = plan_step_engines("basicvsrpp", shapes, _digests(), tmp_path, TARGET)
    paths = {e.graph: e.paths.engine for e in base}
    assert len(set(paths.values())) == 7
    assert len({e.paths.timing for e in base}) == 1
    one = dict(_digests(), step_backward_2=hashlib.sha256(b"new weights").hexdigest())
    changed = {e.graph for e in plan_step_engines("basicvsrpp", shapes, one, tmp_path, TARGET)
               if e.paths.engine != paths[e.graph]}
    assert changed == {"step_backward_2"}
    for change in (dict(precision="fp32"), dict(gpu_name="NVIDIA A100"), dict(dcn="plugin", plugin_sha256="ab" * 32)):
        other = plan_step_engines("basicvsrpp", shapes, _digests(), tmp_path, dataclasses.replace(TARGET, **change))
        assert not {e.paths.engine for e in other} & set(paths.values()), change
    bigger = plan_step_engines("basicvsrpp", _shapes("basicvsrpp", 1280, 720), _digests(), tmp_path, TARGET)
    assert not {e.paths.engine for e in bigger} & set(paths.values())


def test_plan_refuses_missing_graphs(tmp_path):
    digests = _digests()
    del digests["flow"]
    with pytest.raises(ValueError, match="flow"):
        plan_step_engines("basicvsrpp", _shapes("basicvsrpp", 720, 720), digests, tmp_path, TARGET)


def test_planning_refuses_what_has_no_steps():
    spec = get_model_spec("stdf")
    with pytest.raises(ExportError, match="not a BasicVSR"):
        bo.padded_step_shapes(spec.build(), spec, 720, 1280)
    spec = get_model_spec("basicvsrpp")
    model = spec.build()
    assert bo.padded_step_shapes(model, spec, 100, 100).height == 256  # padded to the minimum, like the pipeline


def test_step_set_fingerprint_follows_weights_size_and_precision():
    model = _tiny()
    s256 = bo.step_shapes(model, 256, 256)
    fp = step_set_fingerprint(model, s256, "fp16", "native", 11)
    assert fp == step_set_fingerprint(model, s256, "fp16", "native", 11)
    assert fp != step_set_fingerprint(model, bo.step_shapes(model, 256, 512), "fp16", "native", 11)
    assert fp != step_set_fingerprint(model, s256, "fp32", "native", 11)
    assert fp != step_set_fingerprint(model, s256, "fp16", "native", 10)
    with torch.no_grad():
        model.backbone["forward_2"].main[0].weight[0, 0, 0, 0] += 1e-6
    assert fp != step_set_fingerprint(model, s256, "fp16", "native", 11)


def test_old_manifests_are_rgb():
    """Manifests written before Y models carry no in_channels: they were RGB."""
    data = dataclasses.asdict(_shapes("basicvsrpp", 256, 256))
    del data["in_channels"]
    assert bo.StepShapes(**data).in_channels == 3


# ---- without TensorRT: one line ----------------------------------------------------------------


@needs_no_trt
def test_ensure_step_engines_without_tensorrt(tmp_path):
    request = EngineRequest("basicvsrpp", Profile.static((1, 1, 3, 256, 256)), cache_dir=tmp_path)
    with pytest.raises(EngineError) as info:
        ensure_step_engines(_tiny(), request)
    message = str(info.value)
    assert "\n" not in message and message.startswith("building the TensorRT engines of basicvsrpp needs TensorRT: ")
    assert "tensorrt" in message
    assert not list(tmp_path.iterdir())  # nothing exported before the check


@needs_missing
def test_step_loop_without_tensorrt(tmp_path):
    from vsqe.backends.tensorrt import step_loop

    request = EngineRequest("basicvsrpp", Profile.static((1, 1, 3, 256, 256)), cache_dir=tmp_path)
    with pytest.raises(BackendError) as info:
        step_loop(_tiny(), request, torch.device("cuda", 0))
    message = str(info.value)
    assert "\n" not in message and message.startswith("BasicVSR++ on TensorRT needs ")


@needs_missing
def test_trt_backend_for_basicvsrpp_one_line():
    """The recurrent path's entry: the Enhancer (segments) with backend 'trt'."""
    from vsqe.pipeline.enhancer import Enhancer

    with pytest.raises(BackendError) as info:
        Enhancer("basicvsrpp-y", backend="trt", require_weights=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("backend 'trt' needs "), message


@needs_missing
def test_build_engine_basicvsrpp_one_line(capsys):
    from vsqe.cli import main

    rc = main(["build-engine", "--model", "basicvsrpp", "--shape", "256x256", "--allow-untrained"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsqe: error: vsqe build-engine needs "), captured.err


def test_build_engine_basicvsrpp_refuses_frames(capsys):
    from vsqe.cli import main

    assert main(["build-engine", "--model", "basicvsrpp", "--shape", "256x256", "--frames", "16"]) == 2
    assert "any length" in capsys.readouterr().err
