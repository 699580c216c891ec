"""STDF architecture and official-checkpoint loading, with checkpoints synthesised using exactly the
official key names, shapes and wrappers (../shared/research/models.md §2)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from vsqe.errors import CheckpointError, ModelError
from vsqe.models import build_model, get_model_spec
from vsqe.models.checkpoint import load_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_checkpoints import random_state, shapes  # noqa: E402

# Key -> shape of STDF-PyTorch's R3 Y checkpoint (ckp_290000.pt), without the `module.` prefix.
STDF_PYTORCH_Y_SHAPES = {
    "ffnet.in_conv.0.weight": (32, 7, 3, 3),
    "ffnet.offset_mask.weight": (189, 32, 3, 3),
    "ffnet.offset_mask.bias": (189,),
    "ffnet.deform_conv.weight": (64, 7, 3, 3),
    "ffnet.deform_conv.bias": (64,),
    "ffnet.up_conv1.2.weight": (32, 32, 4, 4),
    "ffnet.tr_conv.4.weight": (32, 32, 4, 4),
    "qenet.in_conv.0.weight": (48, 64, 3, 3),
    "qenet.hid_conv.10.weight": (48, 48, 3, 3),
    "qenet.out_conv.weight": (1, 48, 3, 3),
}


def _to_powervqe(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (STDF-PyTorch) names -> PowerVQE names, written independently of the loader's map."""
    out = {}
    for k, v in state.items():
        if k.startswith("ffnet."):
            k = "generator.stdf." + k[len("ffnet."):]
        elif k.startswith("qenet.in_conv.0."):
            k = "generator.qenet.in_conv." + k[len("qenet.in_conv.0."):]
        elif k.startswith("qenet.hid_conv."):
            idx, rest = k[len("qenet.hid_conv."):].split(".", 1)
            k = f"generator.qenet.hid_conv.{int(idx) + 1}.{rest}"
        elif k.startswith("qenet.out_conv."):
            k = "generator.qenet.out_conv.1." + k[len("qenet.out_conv."):]
        out[k] = v
    return out


def test_stdf_y_matches_official_parameter_count_and_shapes():
    model = get_model_spec("stdf").build()
    assert sum(p.numel() for p in model.parameters()) == 364_510
    found = shapes(model)
    for key, shape in STDF_PYTORCH_Y_SHAPES.items():
        assert found[key] == shape, key
    assert "qenet.hid_conv.1.weight" not in found  # ReLUs sit at the odd indices


def test_stdf_rgb_matches_powervqe_parameter_count():
    model = get_model_spec("stdf-rgb").build()
    assert sum(p.numel() for p in model.parameters()) == 486_714
    assert tuple(model.state_dict()["ffnet.offset_mask.weight"].shape) == (567, 32, 3, 3)


def test_output_is_residual_plus_centre_frame():
    model = get_model_spec("stdf").build().eval()
    with torch.no_grad():
        model.qenet.out_conv.weight.zero_()
        model.qenet.out_conv.bias.zero_()
        x = torch.rand(2, 7, 1, 16, 24)
        assert torch.equal(model(x), x[:, 3])


# (model, file name, the official file's layout around our state dict, input [N, 7, C, H, W])
OFFICIAL_CHECKPOINTS = {
    "stdf-pytorch-y": (
        "stdf",
        "ckp_290000.pt",
        lambda state: {
            "num_iter_accum": 290000,
            "state_dict": {"module." + k: v for k, v in state.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        },
        (1, 7, 1, 16, 16),
    ),
    "powervqe-y": (
        "stdf",
        "iter_1000000.pth",
        lambda state: {"meta": {"iter": 1000000}, "state_dict": _to_powervqe(state)},
        (1, 7, 1, 8, 16),
    ),
    "powervqe-rgb": (
        "stdf-rgb",
        "iter_rgb.pth",
        lambda state: {"meta": {}, "state_dict": _to_powervqe(state), "step_counter": torch.zeros(1)},
        (1, 7, 3, 8, 8),
    ),
}


@pytest.mark.parametrize("seed, layout", list(enumerate(OFFICIAL_CHECKPOINTS)), ids=list(OFFICIAL_CHECKPOINTS))
def test_official_checkpoint_loads_into_the_same_network(tmp_path: Path, seed: int, layout: str):
    name, filename, wrap, input_shape = OFFICIAL_CHECKPOINTS[layout]
    reference = get_model_spec(name).build().eval()
    state = random_state(reference, seed)
    reference.load_state_dict(state)
    path = tmp_path / filename
    torch.save(wrap(state), path)
    model, _, used = build_model(name, str(path))
    assert used == str(path)
    x = torch.rand(input_shape)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_foreign_checkpoint_names_the_mis_shaped_key(tmp_path: Path):
    rgb = get_model_spec("stdf-rgb").build()
    path = tmp_path / "rgb.pth"
    torch.save({"state_dict": _to_powervqe(random_state(rgb))}, path)
    with pytest.raises(CheckpointError, match=r"'ffnet\.in_conv\.0\.weight' has shape \[32, 21, 3, 3\]"):
        build_model("stdf", str(path))


def test_missing_and_unexpected_keys_are_named(tmp_path: Path):
    model = get_model_spec("stdf").build()
    state = random_state(model)
    del state["qenet.out_conv.bias"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing key 'qenet\.out_conv\.bias'"):
        build_model("stdf", str(tmp_path / "missing.pt"))
    state = random_state(model)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected key 'extra\.weight'"):
        build_model("stdf", str(tmp_path / "extra.pt"))


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_without_running(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refusing checkpoint"):
        build_model("stdf", str(path))
    assert not marker.exists()


def test_truncated_empty_and_nan_checkpoints(tmp_path: Path):
    model = get_model_spec("stdf").build()
    good = tmp_path / "good.pt"
    torch.save(random_state(model), good)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint"):
        build_model("stdf", str(tmp_path / "cut.pt"))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        build_model("stdf", str(tmp_path / "empty.pt"))
    state = random_state(model)
    state["qenet.in_conv.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        build_model("stdf", str(tmp_path / "nan.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        build_model("stdf", str(tmp_path / "nope.pt"))


def test_safetensors_weights_load(tmp_path: Path):
    from safetensors.torch import save_file

    model = get_model_spec("stdf").build()
    state = random_state(model, seed=3)
    save_file(state, tmp_path / "w.safetensors")
    loaded, _, _ = build_model("stdf", str(tmp_path / "w.safetensors"))
    assert torch.equal(loaded.state_dict()["qenet.out_conv.weight"], state["qenet.out_conv.weight"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        build_model("stdf", str(tmp_path / "bad.safetensors"))


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ModelError, match=r"unknown model 'nope' \(known: .*stdf"):
        get_model_spec("nope")


@pytest.mark.parametrize("bf16", [False, True])
def test_channels_last_inference_fast_path_matches_the_composition(bf16, monkeypatch):
    """STDF's forward hands the offset head's raw output to DeformConv2d.forward_om: the fused
    native path (CPU inference, channels_last) equals slicing + sigmoid + deform_conv2d."""
    import vsqe.models.stdf as stdf_module
    from vsqe.ops import dcn

    if not (dcn.native_available() and dcn._dcn_cpu.has_avx512()):
        pytest.skip("the fused offset+mask DCN path needs AVX-512 (not on this CPU)")
    torch.manual_seed(0)
    model, _, _ = build_model("stdf", None, require_weights=False)
    # Non-zero offsets and masks: the trained offset head's scale.
    torch.nn.init.normal_(model.ffnet.offset_mask.weight, std=0.05)
    model = model.eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 7, 1, 48, 64)
    calls = []
    fused = stdf_module.deform_conv2d_om
    monkeypatch.setattr(stdf_module, "deform_conv2d_om", lambda *a, **k: calls.append(1) or fused(*a, **k))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.inference_mode(), ctx:
        fast = model(x).float()
        assert calls == [1]  # the fused path ran
        monkeypatch.setattr(stdf_module, "om_fast_path_applies", lambda *a: False)
        composed = model(x).float()
        assert calls == [1]
    diff = (fast - composed).abs().max().item()
    assert diff <= (2.0 / 255 if bf16 else 1e-5), diff
