"""BasicVSR++ and SpyNet: official parameter counts, key names and shapes, official-checkpoint loading
(synthesised with the PowerVQE / mmagic names, wrappers and prefixes, ../shared/research/models.md §3.2
and §4), and the pieces of the forward whose conventions are easy to get wrong (warp direction, DCN
offset layout, residual). Forward passes use a narrow variant (C=8) to stay fast."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vsqe.errors import CheckpointError
from vsqe.models import build_model, get_model_spec
from vsqe.models.basicvsrpp import BasicVSRPlusPlus, SecondOrderDeformableAlignment
from vsqe.models.spynet import SpyNet, flow_warp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_checkpoints import SPYNET_SHAPES, assert_loaded_key_for_key, meta_model, mmedit_checkpoint, random_state, shapes  # noqa: E402,E501

# Key -> shape, from models.md §4 (C=64, B=7), without the `generator.` prefix.
QE_SHAPES = {
    **SPYNET_SHAPES,
    "feat_extract.0.weight": (64, 3, 3, 3),
    "feat_extract.2.weight": (64, 64, 3, 3),
    "feat_extract.4.main.0.weight": (64, 64, 3, 3),
    "feat_extract.4.main.2.4.conv2.weight": (64, 64, 3, 3),
    "deform_align.backward_1.weight": (64, 128, 3, 3),
    "deform_align.forward_2.bias": (64,),
    "deform_align.forward_1.conv_offset.0.weight": (64, 196, 3, 3),
    "deform_align.backward_2.conv_offset.2.weight": (64, 64, 3, 3),
    "deform_align.backward_2.conv_offset.4.weight": (64, 64, 3, 3),
    "deform_align.forward_2.conv_offset.6.weight": (432, 64, 3, 3),
    "deform_align.forward_2.conv_offset.6.bias": (432,),
    "backbone.backward_1.main.0.weight": (64, 128, 3, 3),
    "backbone.forward_1.main.0.weight": (64, 192, 3, 3),
    "backbone.backward_2.main.0.weight": (64, 256, 3, 3),
    "backbone.forward_2.main.0.weight": (64, 320, 3, 3),
    "backbone.forward_2.main.2.6.conv1.weight": (64, 64, 3, 3),
    "reconstruction.main.0.weight": (64, 320, 3, 3),
    "reconstruction.main.2.4.conv2.bias": (64,),
    "upsample1.upsample_conv.weight": (256, 64, 3, 3),
    "upsample2.upsample_conv.weight": (256, 64, 3, 3),
    "conv_hr.weight": (64, 64, 3, 3),
    "conv_last.weight": (3, 64, 3, 3),
    "conv_last.bias": (3,),
}


def _tiny(**kw) -> BasicVSRPlusPlus:
    torch.manual_seed(0)
    return BasicVSRPlusPlus(mid_channels=8, num_blocks=1, hr_channels=8, **kw).eval()


class _ShiftFlow(torch.nn.Module):
    """Stands in for SpyNet where only the propagation matters: a constant sub-pixel flow."""

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> torch.Tensor:
        flow = torch.zeros(ref.shape[0], 2, *ref.shape[-2:])
        flow[:, 0], flow[:, 1] = 0.7, -0.3
        return flow


@pytest.fixture(scope="module")
def qe_model() -> torch.nn.Module:
    return meta_model("basicvsrpp")


def test_qe_model_matches_the_official_parameter_count_and_shapes(qe_model):
    assert sum(p.numel() for p in qe_model.parameters()) == 7_396_783
    assert sum(p.numel() for p in qe_model.spynet.parameters()) == 1_440_300
    found = shapes(qe_model)
    for key, shape in QE_SHAPES.items():
        assert found.get(key) == shape, key
    assert not any(k.startswith("feat_extract.main.") for k in found)


def test_sr_and_ntire_configs_match_the_official_parameter_counts():
    sr = meta_model("basicvsrpp-mmagic-sr")
    assert sum(p.numel() for p in sr.parameters()) == 7_322_927
    found = shapes(sr)
    assert found["feat_extract.main.0.weight"] == (64, 3, 3, 3)
    assert found["feat_extract.main.2.4.conv2.weight"] == (64, 64, 3, 3)
    assert "feat_extract.0.weight" not in found
    ntire = meta_model("basicvsrpp-ntire")
    assert sum(p.numel() for p in ntire.parameters()) == 44_075_631
    found = shapes(ntire)
    assert found["upsample2.upsample_conv.weight"] == (256, 128, 3, 3)
    assert found["conv_hr.weight"] == (64, 64, 3, 3)
    assert found["backbone.forward_2.main.2.24.conv2.weight"] == (128, 128, 3, 3)


def test_specs_declare_what_the_pipeline_needs():
    qe = get_model_spec("basicvsrpp")
    assert (qe.temporal, qe.color, qe.size_multiple, qe.min_size, qe.scale) == ("recurrent", "rgb", 4, 256, 1)
    assert qe.segment_length >= 1 and qe.segment_overlap >= 0
    sr = get_model_spec("basicvsrpp-mmagic-sr")
    assert (sr.temporal, sr.color, sr.size_multiple, sr.min_size, sr.scale) == ("recurrent", "rgb", 1, 64, 4)
    ntire = get_model_spec("basicvsrpp-ntire")
    assert (ntire.temporal, ntire.color, ntire.size_multiple, ntire.min_size, ntire.scale) == ("recurrent", "rgb", 4, 256, 1)
    assert get_model_spec("stdf").temporal == "window"


def test_powervqe_qe_checkpoint_loads_key_for_key(tmp_path: Path, qe_model):
    state = random_state(qe_model)
    path = tmp_path / "iter_600000.pth"
    torch.save(mmedit_checkpoint(state, 600000), path)
    model, spec, used = build_model("basicvsrpp", str(path))
    assert used == str(path) and spec.name == "basicvsrpp"
    assert_loaded_key_for_key(model, state)


def test_mmagic_sr_checkpoint_without_spynet_buffers_loads(tmp_path: Path):
    sr = meta_model("basicvsrpp-mmagic-sr")
    state = random_state(sr, seed=1)
    del state["spynet.mean"], state["spynet.std"]
    path = tmp_path / "basicvsr_plusplus_c64n7_8x1_600k_reds4_20210217-db622b2f.pth"
    torch.save({"meta": {}} | mmedit_checkpoint(state), path)
    model, _, _ = build_model("basicvsrpp-mmagic-sr", str(path))
    loaded = model.state_dict()
    assert torch.equal(loaded["feat_extract.main.0.weight"], state["feat_extract.main.0.weight"])
    assert torch.allclose(loaded["spynet.mean"].flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(loaded["spynet.std"].flatten(), torch.tensor([0.229, 0.224, 0.225]))


def test_sr_checkpoint_in_the_qe_model_names_the_first_foreign_key(tmp_path: Path):
    sr = meta_model("basicvsrpp-mmagic-sr")
    path = tmp_path / "sr.pth"
    torch.save(mmedit_checkpoint(random_state(sr)), path)
    with pytest.raises(CheckpointError, match=r"missing key 'feat_extract\.0\.weight'"):
        build_model("basicvsrpp", str(path))


def test_flow_warp_samples_at_p_plus_flow():
    x = torch.arange(5 * 6, dtype=torch.float32).reshape(1, 1, 5, 6)
    flow = torch.zeros(1, 2, 5, 6)
    flow[:, 0] = 1.0  # one pixel to the right
    out = flow_warp(x, flow)
    assert torch.allclose(out[..., :, :5], x[..., :, 1:])
    assert torch.all(out[..., :, 5] == 0)  # zero padding outside
    flow = torch.zeros(1, 2, 5, 6)
    flow[:, 1] = -2.0  # two pixels up
    assert torch.allclose(flow_warp(x, flow)[..., 2:, :], x[..., :3, :])


def test_spynet_with_silent_last_layers_gives_zero_flow_at_any_size(single_thread):
    net = SpyNet().eval()
    for module in net.basic_module:
        last = module.basic_module[-1].conv
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    ref, supp = torch.rand(2, 3, 40, 72), torch.rand(2, 3, 40, 72)
    with torch.no_grad():
        flow = net(ref, supp)
    assert flow.shape == (2, 2, 40, 72)
    assert torch.equal(flow, torch.zeros_like(flow))


def test_deformable_alignment_offsets_are_flipped_flows_per_group():
    """With a zero offset head the DCN samples feature p + flow (groups 0-7: previous feature with
    flow_1, groups 8-15: the one two steps back with flow_2), masks 0.5. A centre-tap identity
    kernel must therefore reproduce 0.5 * flow_warp, which pins the (dy, dx) order and grouping."""
    c = 16
    align = SecondOrderDeformableAlignment(c).eval()
    with torch.no_grad():
        align.weight.zero_()
        align.bias.zero_()
        for j in range(c // 2):
            align.weight[j, j, 1, 1] = 1.0  # feat_prop channel j (group j // 1 of 0-7)
            align.weight[c // 2 + j, c + j, 1, 1] = 1.0  # feat_n2 channel j (groups 8-15)
    gen = torch.Generator().manual_seed(3)
    feat_prop = torch.rand(1, c, 12, 14, generator=gen)
    feat_n2 = torch.rand(1, c, 12, 14, generator=gen)
    flow_1 = torch.randn(1, 2, 12, 14, generator=gen) * 2
    flow_2 = torch.randn(1, 2, 12, 14, generator=gen) * 2
    extra = torch.rand(1, 3 * c, 12, 14, generator=gen)
    with torch.no_grad():
        out = align(torch.cat([feat_prop, feat_n2], 1), extra, flow_1, flow_2)
    expect_1 = 0.5 * flow_warp(feat_prop, flow_1)[:, : c // 2]
    expect_2 = 0.5 * flow_warp(feat_n2, flow_2)[:, : c // 2]
    assert torch.allclose(out[:, : c // 2], expect_1, atol=1e-5)
    assert torch.allclose(out[:, c // 2 :], expect_2, atol=1e-5)


def test_qe_output_is_the_input_plus_a_residual_and_propagates_both_ways(single_thread):
    model = _tiny()
    model.spynet = _ShiftFlow()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 3, 256, 256, generator=gen)
    with torch.no_grad():
        y = model(x)
        assert y.shape == x.shape
        # Bidirectional: changing the last frame changes the first output, and vice versa.
        x_last = x.clone()
        x_last[:, -1] = torch.rand(3, 256, 256, generator=gen)
        y_last = model(x_last)
        assert not torch.equal(y_last[:, 0], y[:, 0])
        x_first = x.clone()
        x_first[:, 0] = torch.rand(3, 256, 256, generator=gen)
        assert not torch.equal(model(x_first)[:, -1], y[:, -1])
        model.conv_last.weight.zero_()
        model.conv_last.bias.zero_()
        assert torch.equal(model(x), x)


def test_single_frame_sequences_and_size_checks(single_thread):
    model = _tiny()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 3, 256, 260)).shape == (1, 1, 3, 256, 260)
        with pytest.raises(ValueError, match="multiples of 4"):
            model(torch.rand(1, 2, 3, 256, 258))
        with pytest.raises(ValueError, match="at least 256x256"):
            model(torch.rand(1, 2, 3, 252, 256))


def test_sr_variant_upsamples_by_four(single_thread):
    model = _tiny(is_low_res_input=True)
    model.spynet = _ShiftFlow()
    x = torch.rand(1, 2, 3, 64, 68)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (1, 2, 3, 256, 272)
        model.conv_last.weight.zero_()
        model.conv_last.bias.zero_()
        base = torch.nn.functional.interpolate(x[0], scale_factor=4, mode="bilinear", align_corners=False)
        assert torch.allclose(model(x)[0], base)


def test_y_variant_is_narrow_with_y_in_and_out_and_the_official_spynet(single_thread):
    spec = get_model_spec("basicvsrpp-y")
    assert (spec.temporal, spec.color, spec.size_multiple, spec.min_size, spec.scale) == ("recurrent", "y", 4, 256, 1)
    assert (spec.segment_length, spec.segment_overlap) == (get_model_spec("basicvsrpp").segment_length,
                                                          get_model_spec("basicvsrpp").segment_overlap)
    assert spec.default_weights == "basicvsrpp_y_qp37.safetensors"
    model = meta_model("basicvsrpp-y")
    found = shapes(model)
    assert found["feat_extract.0.weight"] == (32, 1, 3, 3) and found["conv_last.weight"] == (1, 32, 3, 3)
    assert found["backbone.forward_2.main.0.weight"] == (32, 160, 3, 3)
    assert "backbone.forward_2.main.2.2.conv1.weight" not in found  # B = 2
    assert "feat_extract.4.main.2.2.conv1.weight" not in found and "reconstruction.main.2.2.conv1.weight" not in found
    assert all(found[k] == v for k, v in SPYNET_SHAPES.items())  # 3-channel, official keys
    assert sum(p.numel() for p in model.spynet.parameters()) == 1_440_300
    # a Y sequence in, every frame out (SpyNet sees Y replicated); a silent conv_last = identity
    torch.manual_seed(0)
    y = spec.build().eval()
    torch.nn.init.zeros_(y.conv_last.weight)
    torch.nn.init.zeros_(y.conv_last.bias)
    x = torch.rand(1, 2, 1, 256, 256)
    with torch.no_grad():
        assert torch.equal(y(x), x)
