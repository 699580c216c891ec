"""Training-only BN folds into the plain STDF exactly; checkpoints with BN export plain weights."""
from __future__ import annotations

import torch

from vsqe.models import get_model_spec
from vsqe.train.bn import ConvBN2d, ConvTransposeBN2d, add_batchnorm, folded_state_dict


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def test_bn_goes_after_every_conv_that_feeds_a_relu_only():
    model = get_model_spec("stdf").build()
    n = add_batchnorm(model)
    kinds = [type(m) for m in model.modules()]
    assert n == kinds.count(ConvBN2d) + kinds.count(ConvTransposeBN2d)
    assert kinds.count(ConvTransposeBN2d) > 0
    # heads without a ReLU keep their plain conv: their scale means something
    assert type(model.ffnet.offset_mask) is torch.nn.Conv2d
    assert type(model.qenet.out_conv) is torch.nn.Conv2d


def test_folded_weights_load_into_plain_stdf_and_match_eval_output():
    torch.manual_seed(0)
    plain = get_model_spec("stdf").build().eval()
    with_bn = get_model_spec("stdf").build()
    add_batchnorm(with_bn)
    _randomise_bn(with_bn)
    with_bn.eval()
    sd = folded_state_dict(with_bn)
    assert set(sd) == set(plain.state_dict())  # key for key: no bn.* left
    plain.load_state_dict(sd, strict=True)
    x = torch.rand(1, 7, 1, 48, 64)
    with torch.no_grad():
        a, b = with_bn(x), plain(x)
    assert (a - b).abs().max() < 1e-4
    assert (a - x[:, 3]).abs().max() > 1e-3  # the BN really changed something


def test_basicvsrpp_per_frame_bn_stays_out_of_the_recurrence_and_folds_exactly():
    from vsqe.models.basicvsrpp import BasicVSRPlusPlus
    from vsqe.train.bn import add_batchnorm_per_frame

    torch.manual_seed(0)
    make = lambda: BasicVSRPlusPlus(8, 1, is_low_res_input=False, hr_channels=8, in_channels=1,  # noqa: E731
                                    extract_blocks=1, reconstruction_blocks=1)
    plain, with_bn = make().eval(), make()
    with_bn.load_state_dict(plain.state_dict())
    # the defaults: the feature extraction only (2 strided convs, the input conv, 1 block's conv1)
    assert add_batchnorm_per_frame(with_bn) == 4
    for name, m in with_bn.named_modules():
        if isinstance(m, ConvBN2d):
            assert name.startswith("feat_extract."), name
    # nothing that reads propagated features: reconstruction, output path, backbone
    assert not any(isinstance(m, ConvBN2d) for m in with_bn.reconstruction.modules())
    assert type(with_bn.conv_hr) is torch.nn.Conv2d and type(with_bn.conv_last) is torch.nn.Conv2d
    # other placements stay possible (diagnostics): the output path by name
    assert add_batchnorm_per_frame(with_bn, roots=(), convs=("conv_hr",)) == 1
    assert not any(isinstance(m, ConvBN2d) for m in with_bn.backbone.modules())
    _randomise_bn(with_bn)
    with_bn.eval()
    sd = folded_state_dict(with_bn)
    assert set(sd) == set(plain.state_dict())
    plain.load_state_dict(sd, strict=True)
    x = torch.rand(1, 2, 1, 256, 256)  # the QE layout's minimum size (SpyNet sees 64x64)
    with torch.no_grad():
        a, b = with_bn(x), plain(x)
    assert (a - b).abs().max() < 1e-4
