"""PowerVQE MFQEv2: official parameter count, key names and shapes (../shared/research/models.md
§3.2), loading synthetic PQF / non-PQF checkpoints with the official names, and the forward's
conventions (alignment direction, dense wiring, residual). Forward passes run on small frames."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vsqe.errors import CheckpointError
from vsqe.models import build_model, get_model_spec
from vsqe.models.mfqev2 import MFQEv2
from vsqe.models.spynet import flow_warp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_checkpoints import SPYNET_SHAPES, assert_loaded_key_for_key, meta_model, mmedit_checkpoint, random_state, shapes  # noqa: E402,E501

# Key -> shape, from models.md §3.2, without the `generator.` prefix.
OFFICIAL_SHAPES = {
    **SPYNET_SHAPES,
    **{f"ks{k}_conv_list.{i}.weight": (32, 3, k, k) for k in (3, 5, 7) for i in range(3)},
    **{f"ks{k}_conv_list.{i}.bias": (32,) for k in (3, 5, 7) for i in range(3)},
    **{f"rec_conv.{j}.0.weight": (32, cin, 3, 3) for j, cin in enumerate((288, 32, 64, 96, 128))},
    **{f"rec_conv.{j}.0.bias": (32,) for j in range(5)},
    **{f"rec_conv.{j}.1.weight": (1,) for j in range(5)},
    **{f"rec_conv.{j}.2.{b}": (32,) for j in range(5) for b in ("weight", "bias", "running_mean", "running_var")},
    **{f"rec_conv.{j}.2.num_batches_tracked": () for j in range(5)},
    "rec_conv.5.weight": (3, 32, 3, 3),
    "rec_conv.5.bias": (3,),
}


def test_parameter_count_key_names_and_shapes():
    model = meta_model("mfqev2")
    assert sum(p.numel() for p in model.parameters()) == 1_640_948
    assert sum(p.numel() for p in model.spynet.parameters()) == 1_440_300
    found = shapes(model)
    non_spynet = {k: s for k, s in found.items() if not k.startswith("spynet.")}
    assert non_spynet == {k: s for k, s in OFFICIAL_SHAPES.items() if not k.startswith("spynet.")}
    for key, shape in OFFICIAL_SHAPES.items():
        assert found[key] == shape, key
    spec = get_model_spec("mfqev2")
    assert (spec.color, spec.window, spec.size_multiple, spec.temporal, spec.default_weights) == (
        "rgb", 3, 1, "pqf", None)


def test_pqf_and_non_pqf_checkpoints_load_key_for_key(tmp_path: Path, single_thread):
    template = meta_model("mfqev2")
    for seed, name in ((1, "non_pqf_iter_600000.pth"), (2, "pqf_iter_600000.pth")):
        state = random_state(template, seed)
        path = tmp_path / name
        torch.save(mmedit_checkpoint(state, 600000), path)
        model, spec, used = build_model("mfqev2", str(path))
        assert used == str(path) and spec.name == "mfqev2" and not model.training
        assert_loaded_key_for_key(model, state)


def test_checkpoint_without_spynet_buffers_and_foreign_checkpoints(tmp_path: Path, single_thread):
    state = random_state(meta_model("mfqev2"), 3)
    del state["spynet.mean"], state["spynet.std"]
    path = tmp_path / "latest.pth"
    torch.save(mmedit_checkpoint(state), path)
    model, _, _ = build_model("mfqev2", str(path))
    assert torch.allclose(model.state_dict()["spynet.mean"].flatten(), torch.tensor([0.485, 0.456, 0.406]))
    bad = dict(state)
    bad["rec_conv.0.0.weight"] = torch.zeros(32, 96, 3, 3)  # e.g. a Y (1-channel) variant's shapes
    torch.save(mmedit_checkpoint(bad), path)
    with pytest.raises(CheckpointError, match=r"rec_conv\.0\.0\.weight.*\[32, 96, 3, 3\]"):
        build_model("mfqev2", str(path))
    del bad["ks7_conv_list.2.weight"]
    torch.save(mmedit_checkpoint(bad), path)
    with pytest.raises(CheckpointError, match=r"missing key 'ks7_conv_list\.2\.weight'"):
        build_model("mfqev2", str(path))


class _ConstFlow(torch.nn.Module):
    """Stands in for SpyNet: records its calls and returns a constant flow."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        self.calls.append((ref, supp))
        flow = torch.zeros(ref.shape[0], 2, *ref.shape[-2:])
        flow[:, 0], flow[:, 1] = 1.5, -0.5
        return flow


def _reference_forward(model: MFQEv2, x: torch.Tensor) -> torch.Tensor:
    """PowerVQE's forward, written out layer by layer."""
    c = x[:, 1]
    left = flow_warp(x[:, 0], model.spynet(c, x[:, 0]))
    right = flow_warp(x[:, 2], model.spynet(c, x[:, 2]))
    feats = []
    for ks in (3, 5, 7):
        convs = getattr(model, f"ks{ks}_conv_list")
        feats += [convs[0](left), convs[1](c), convs[2](right)]
    r = model.rec_conv
    o0 = r[0](torch.cat(feats, 1))
    o1 = r[1](o0)
    o2 = r[2](torch.cat([o0, o1], 1))
    o3 = r[3](torch.cat([o0, o1, o2], 1))
    o4 = r[4](torch.cat([o0, o1, o2, o3], 1))
    return r[5](o4) + c


def test_forward_aligns_pqfs_to_the_centre_and_adds_the_residual(single_thread):
    torch.manual_seed(0)
    model = MFQEv2().eval()
    model.load_state_dict(random_state(model, 4))
    flow = _ConstFlow()
    model.spynet = flow
    x = torch.rand(2, 3, 3, 20, 28)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 3, 20, 28)
        # Flow from the centre (ref) to each PQF (supp), left first.
        assert len(flow.calls) == 2
        assert torch.equal(flow.calls[0][0], x[:, 1]) and torch.equal(flow.calls[0][1], x[:, 0])
        assert torch.equal(flow.calls[1][1], x[:, 2])
        assert torch.allclose(y, _reference_forward(model, x), atol=1e-5)
        model.rec_conv[5].weight.zero_()
        model.rec_conv[5].bias.zero_()
        assert torch.equal(model(x), x[:, 1])
    with pytest.raises(ValueError, match=r"\[N, 3, C, H, W\]"):
        model(torch.rand(1, 5, 3, 8, 8))


def test_real_spynet_runs_at_odd_sizes(single_thread):
    model = MFQEv2().eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 3, 36, 50)).shape == (1, 3, 36, 50)


def test_y_model_keys_shapes_and_spynet_input(single_thread):
    """`mfqev2-y`: the RGB model's keys, 1-channel feature convs and output; SpyNet keeps its
    official shapes and sees Y replicated to three channels."""
    y_shapes = shapes(meta_model("mfqev2-y"))
    assert set(y_shapes) == set(shapes(meta_model("mfqev2")))
    for key, shape in OFFICIAL_SHAPES.items():
        if key.startswith("ks"):
            shape = (shape[0], 1, *shape[2:]) if key.endswith("weight") else shape
        elif key.startswith("rec_conv.5"):
            shape = (1, *shape[1:])
        assert y_shapes[key] == shape, key
    spec = get_model_spec("mfqev2-y")
    assert (spec.color, spec.window, spec.temporal) == ("y", 3, "pqf")
    assert spec.default_weights == "mfqev2_y_qp37.safetensors" and spec.default_pqf_weights == "mfqev2_y_qp37.safetensors"
    model = spec.build().eval()
    flow = _ConstFlow()
    model.spynet = flow
    x = torch.rand(1, 3, 1, 16, 24)
    with torch.no_grad():
        assert model(x).shape == (1, 1, 16, 24)
    ref, supp = flow.calls[0]
    assert ref.shape == (1, 3, 16, 24) and torch.equal(ref[:, 2], x[:, 1, 0]) and torch.equal(supp[:, 0], x[:, 0, 0])


def test_shipped_pqf_weights_are_the_default_partner(tmp_path: Path, monkeypatch, single_thread):
    """`mfqev2-y` runs with no weight options: the registry's non-PQF file as --weights and its PQF
    file as --pqf-weights. As shipped both name one file: one network, loaded once. A registry with
    two files gets two networks; explicit --weights keep the one-file behaviour."""
    import dataclasses

    from safetensors.torch import save_file

    from vsqe.models import registry
    from vsqe.pipeline.enhancer import Enhancer

    shipped = get_model_spec("mfqev2-y")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in shipped.build().state_dict().items()}, str(tmp_path / shipped.default_weights))
    enh = Enhancer(model="mfqev2-y", backend="torch-fp32", threads=1)
    assert Path(enh.weights_path) == Path(enh.pqf_weights_path) == tmp_path / shipped.default_weights
    assert enh.pqf_weights_shared and enh.pqf_backend is enh.backend

    spec = dataclasses.replace(shipped, default_pqf_weights="mfqev2_y_pqf_qp37.safetensors")
    monkeypatch.setitem(registry._REGISTRY, "mfqev2-y", spec)
    save_file({k: v.contiguous() for k, v in spec.build().state_dict().items()}, str(tmp_path / spec.default_pqf_weights))
    enh = Enhancer(model="mfqev2-y", backend="torch-fp32", threads=1)
    assert Path(enh.weights_path) == tmp_path / spec.default_weights
    assert Path(enh.pqf_weights_path) == tmp_path / spec.default_pqf_weights and not enh.pqf_weights_shared
    own = Enhancer(model="mfqev2-y", weights=str(tmp_path / spec.default_pqf_weights), backend="torch-fp32", threads=1)
    assert own.pqf_weights_shared
