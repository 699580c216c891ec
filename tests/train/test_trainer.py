from pathlib import Path

import pytest
import torch

from vsqe.errors import CheckpointError


@pytest.fixture
def scaffold(train_scaffold):
    return train_scaffold(batch=2, patch=32)  # the default model (STDF)


def test_dcn_matches_torchvision():
    import torchvision

    from vsqe.train.dcn import deform_conv2d_gs

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 7, 12, 10, generator=g, dtype=torch.float64)
    off = torch.randn(2, 126, 12, 10, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(2, 63, 12, 10, generator=g, dtype=torch.float64)
    w = torch.randn(16, 7, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(16, generator=g, dtype=torch.float64)
    ref = torchvision.ops.deform_conv2d(x, off, w, b, padding=1, mask=mask)
    got = deform_conv2d_gs(x, off, mask, w, b, padding=1)
    assert torch.allclose(ref, got.double(), atol=1e-4)


def test_resume_is_exact(scaffold):
    full, resumed = scaffold.train_and_resume(3)  # "killed" after 2 iterations (its last checkpoint)
    scaffold.assert_resumed_exactly(full, resumed, 3)


def test_corrupt_checkpoint_refused(scaffold):
    from vsqe.train.trainer import Trainer, load_checkpoint

    run = scaffold.train("c", 1)
    ck = Path(run.cfg.out) / "last.pt"
    load_checkpoint(ck)  # intact
    raw = bytearray(ck.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ck.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        Trainer(scaffold.config("c", 2), resume=True, log=lambda m: None)
    ck.write_bytes(bytes(raw[:1000]))  # truncated
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(ck)
    assert "\n" not in str(exc.value)


def test_export_loads_in_registry(scaffold, tmp_path):
    from vsqe.models import build_model

    out = scaffold.export(scaffold.train("e", 1), tmp_path / "w.safetensors")
    model, spec, path = build_model("stdf", str(out))
    assert spec.name == "stdf" and path
