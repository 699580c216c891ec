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


def test_resume_keeps_the_options_the_command_line_does_not_give(tiny_data, tmp_path, capsys):
    """`vsqe train --resume --iters N`: only --iters changes; the run's other resumable options
    (threads, logging, partner weights...) stay what the run was started with, not the parser's
    defaults (a resumed MFQEv2 PQF run once lost its --partner-weights that way)."""
    from vsqe.cli import main
    from vsqe.train.trainer import load_checkpoint

    data, _ = tiny_data
    out = tmp_path / "run"
    common = ["train", "--model", "stdf", "--data", str(data), "--out", str(out), "--batch", "2", "--patch", "32",
              "--warmup", "1"]
    partner = str(tmp_path / "partner.safetensors")
    Path(partner).write_bytes(b"")  # must exist (checked at the start); never read: no validation here
    assert main([*common, "--iters", "1", "--threads", "1", "--val-every", "0", "--val-full-every", "0",
                 "--log-every", "7", "--partner-weights", partner]) == 0
    assert main([*common, "--resume", "--iters", "2"]) == 0
    state = load_checkpoint(out / "last.pt")
    cfg = state["config"]
    assert state["iteration"] == 2 and cfg["iters"] == 2
    assert (cfg["threads"], cfg["log_every"], cfg["val_every"], cfg["val_full_every"]) == (1, 7, 0, 0)
    assert cfg["partner_weights"] == partner
    # given explicitly, they do change
    assert main([*common, "--resume", "--iters", "3", "--log-every", "5", "--partner-weights", ""]) == 0
    cfg = load_checkpoint(out / "last.pt")["config"]
    assert (cfg["iters"], cfg["log_every"], cfg["partner_weights"]) == (3, 5, "")
    capsys.readouterr()
