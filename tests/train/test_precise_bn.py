"""PreciseBN (vsqe/train/precise_bn.py): the running statistics become the plain average over the
batches given, nothing else in the weights changes, and the CLI writes a file the Enhancer loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vsqe.errors import VsqeError
from vsqe.train.precise_bn import recompute_bn_stats

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "vsqe/weights/mfqev2_y_qp37.safetensors"


def test_statistics_are_the_average_over_the_batches():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    bn = torch.nn.BatchNorm2d(4)
    model = torch.nn.Sequential(conv, bn)
    weight = conv.weight.detach().clone()
    batches = [torch.randn(3, 1, 8, 8) * (i + 1) + i for i in range(5)]
    assert recompute_bn_stats(model, batches) == 5
    with torch.no_grad():
        feats = [conv(x) for x in batches]
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    # momentum 0.1 would weigh the last batch most; the cumulative average weighs all the same
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, rtol=1e-4)
    assert torch.equal(conv.weight, weight) and bn.momentum == 0.1 and not model.training


def test_models_without_bn_and_empty_streams_are_refused():
    with pytest.raises(VsqeError, match="no BatchNorm"):
        recompute_bn_stats(torch.nn.Conv2d(1, 1, 3), [torch.zeros(1, 1, 4, 4)])
    with pytest.raises(VsqeError, match="no batches"):
        recompute_bn_stats(torch.nn.BatchNorm2d(2), [])


def test_cli_recomputes_only_the_bn_buffers(tiny_data, tmp_path):
    from vsqe.cli import main

    data, _ = tiny_data
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        rc = main(["train", "precise-bn", "--model", "mfqev2-y", "--init-from", str(SHIPPED), "--pqf-role", "nonpqf",
                   "--data", str(data), "--codecs", "x265-ldp=1", "--batches", "3", "--batch", "2", "--patch", "32",
                   "--seed", "7", "--threads", "1", "--out", str(out)])
        assert rc == 0 and out.is_file() and not out.with_name(out.name + ".tmp").exists()
        outs.append(out)
    src, new, again = load_file(SHIPPED), load_file(outs[0]), load_file(outs[1])
    assert set(new) == set(src)
    changed = {k for k in src if not torch.equal(src[k], new[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert all(torch.equal(new[k], again[k]) for k in new)  # same seed, same draws, same statistics
    with safe_open(str(outs[0]), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["bn_stats"])["batches"] == 3
    assert json.loads(meta["init_from"])["sha256"]

    from vsqe.pipeline.enhancer import Enhancer

    Enhancer(model="mfqev2-y", weights=str(outs[0]), pqf_weights=str(outs[0]), backend="torch-fp32", threads=1)


def test_cli_needs_its_inputs(capsys):
    from vsqe.cli import main

    assert main(["train", "precise-bn", "--model", "mfqev2-y"]) != 0
    assert "precise-bn needs --init-from" in capsys.readouterr().err
