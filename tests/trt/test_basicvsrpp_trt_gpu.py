"""BasicVSR++ on TensorRT, on a GPU: the step engines against the torch module.

Needs TensorRT and an NVIDIA GPU (skipped otherwise, with the reason); never run yet (see
docs/tensorrt.md, "What was verified"). A tiny random network (C=8, offset head randomised so
the DCN samples between pixels) at 256x256, the QE layout's minimum. fp32 engines may use TF32
(TensorRT's default for fp32 builds on Ampere and later), hence bounds of 1e-2 rather than the
1e-4 of ONNX Runtime on the CPU.
"""
from __future__ import annotations

import pytest
import torch

from vsqe.backends.tensorrt import unavailable_reason

REASON = unavailable_reason("this test")
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")  # fp16 conversion

from vsqe.export import basicvsrpp_onnx as bo  # noqa: E402
from vsqe.export.engine import EngineRequest, Profile, cached_engine, ensure_step_engines, plugin_library  # noqa: E402
from vsqe.models.basicvsrpp import BasicVSRPlusPlus  # noqa: E402
from vsqe.pipeline.segments import SegmentPlan  # noqa: E402

SIZE = 256


def _tiny() -> BasicVSRPlusPlus:
    torch.manual_seed(0)
    model = BasicVSRPlusPlus(8, 1, hr_channels=8).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "conv_offset.6" in key:
                p.normal_(0, 0.05)
    return model


def _frames(t: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                            indexing="ij")
    x = torch.stack([torch.stack([0.5 + 0.4 * torch.sin((xx + 1.5 * i) / (5 + c) + yy / 7) for c in range(3)])
                     for i in range(t)]).unsqueeze(0)
    return (x + 0.02 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def _request(cache, precision="fp32", dcn="native") -> EngineRequest:
    return EngineRequest("tiny-basicvsrpp", Profile.static((1, 1, 3, SIZE, SIZE)), precision=precision, dcn=dcn,
                         cache_dir=cache)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("trt-cache")


@pytest.mark.parametrize("precision, bound", [("fp32", 1e-2), ("fp16", 5e-2)])
def test_step_engines_match_torch(cache, precision, bound):
    from vsqe.backends.tensorrt import step_loop

    model = _tiny()
    loop = step_loop(model, _request(cache, precision), torch.device("cuda", 0))
    x = _frames(5, seed=1)
    with torch.no_grad():
        ref = model(x)
    out = loop(x)
    assert out.shape == ref.shape and out.device.type == "cpu"
    err = (out - ref).abs().max().item()
    print(f"{precision}: max abs diff vs torch {err:.3g}")
    assert err <= bound, err


def test_cached_set_is_found_again(cache):
    """A second request finds all seven engines (and their ONNX) in the cache: nothing rebuilt."""
    model = _tiny()
    plan = ensure_step_engines(model, _request(cache))
    stamps = {e.paths.engine: e.paths.engine.stat().st_mtime_ns for e in plan}
    again = ensure_step_engines(model, _request(cache))
    assert [e.paths.engine for e in again] == list(stamps)
    assert all(cached_engine(cache, e.key) == e.paths.engine for e in again)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_backend_through_segments(cache):
    """The trt backend in the pipeline's segment machinery (stream_segments + run_segment, L=2,
    O=1, frames cropped and padded back), against the torch module in the same machinery."""
    from vsqe.backends.tensorrt import TensorRTBackend

    model = _tiny()
    backend = TensorRTBackend(model, model_name="tiny-basicvsrpp", cache_dir=cache)
    clip = list(_frames(5, seed=2)[0, :, :, : SIZE - 8, : SIZE - 4])
    kw = dict(multiple=4, min_size=SIZE, scale=1)
    ours = list(bo.enhance_frames(backend, iter(clip), SegmentPlan(2, 1), **kw))
    ref = list(bo.enhance_frames(model, iter(clip), SegmentPlan(2, 1), **kw))
    assert len(ours) == 5 and ours[0].shape == (3, SIZE - 8, SIZE - 4)
    assert max((a - b).abs().max().item() for a, b in zip(ours, ref)) <= 1e-2


@pytest.mark.skipif(plugin_library() is None, reason="libvsqe_dcn_plugin.so not built (docs/tensorrt.md)")
def test_plugin_step_engines_match_torch(cache):
    from vsqe.backends.tensorrt import step_loop

    model = _tiny()
    loop = step_loop(model, _request(cache, dcn="plugin"), torch.device("cuda", 0))
    x = _frames(3, seed=3)
    with torch.no_grad():
        ref = model(x)
    assert (loop(x) - ref).abs().max().item() <= 1e-2
