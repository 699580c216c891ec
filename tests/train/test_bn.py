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
