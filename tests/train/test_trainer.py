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


def test_minutes_fit_the_schedule_to_the_measured_rate(scaffold, monkeypatch):
    import vsqe.train.trainer as trainer

    monkeypatch.setattr(trainer, "FIT_AFTER", 3)
    # A budget far too small for more steps: the schedule ends right after the fit ...
    run = scaffold.train("m", 1000, minutes=1e-6)
    assert run.iteration == run.cfg.iters == 4
    # ... and a budget of hours lets the fitted length exceed the steps measured by far.
    logs = []
    t = trainer.Trainer(scaffold.config("n", 3, minutes=600.0), log=logs.append)
    t.cfg.iters = 3
    stop_after_fit = t._fit_schedule
    t._fit_schedule = lambda *a: (stop_after_fit(*a), setattr(t, "_stop", True))
    t.run()
    assert t.iteration == 3 and t.cfg.iters > 1000
    assert any(m.startswith("schedule fitted to 600 min") for m in logs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_device_refused_in_one_line(tiny_data, tmp_path, capsys):
    from vsqe.errors import InputError
    from vsqe.train.cli import main
    from vsqe.train.trainer import train_device

    assert train_device("cpu") == torch.device("cpu")
    for name, msg in (("cuda", "sees no CUDA GPU"), ("cuda:1", "sees no CUDA GPU"), ("mps", "only cpu and cuda"),
                      ("bogus", "unknown device")):
        with pytest.raises(InputError, match=msg):
            train_device(name)
    data, _ = tiny_data
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--device", "cuda", "--iters", "1"]) != 0
    err = capsys.readouterr().err.strip()
    assert err == "vsqe: error: device cuda: torch sees no CUDA GPU here"


def test_device_is_not_part_of_the_run_identity(scaffold):
    """A run may move between machines: --device is a resume override like --threads."""
    from vsqe.train.trainer import RESUME_OVERRIDES, Trainer

    assert "device" in RESUME_OVERRIDES and "minutes" in RESUME_OVERRIDES
    scaffold.train("d", 1)
    t = Trainer(scaffold.config("d", 2, device="cpu", threads=1), resume=True, log=lambda m: None)
    assert t.device == torch.device("cpu") and t.iteration == 1


def test_resume_keeps_the_fitted_schedule_unless_asked_to_refit(scaffold, monkeypatch):
    import vsqe.train.trainer as trainer

    monkeypatch.setattr(trainer, "FIT_AFTER", 2)
    run = scaffold.train("f", 1000, minutes=1e-6)
    assert run.iteration == run.cfg.iters == 3
    resumed = trainer.Trainer(scaffold.config("f", 5), resume=True, overrides={"iters"}, log=lambda m: None)
    assert resumed.cfg.minutes == 0.0 and resumed.cfg.iters == 5


def test_codecs_option_picks_the_encodes_drawn(tiny_data, tmp_path, capsys):
    """--codecs replaces --x264-weight; a name no encoder makes, or no positive weight, is one line."""
    from vsqe.train.cli import main

    data, _ = tiny_data
    common = ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--iters", "1", "--threads", "1",
              "--val-every", "0", "--val-full-every", "0", "--batch", "2", "--patch", "32"]
    for bad, msg in (("nope=1", "unknown codec 'nope'"), ("x265-ldp=0", "no codec with a positive weight"),
                     ("x265-ldp=a", "expected CODEC=WEIGHT")):
        with pytest.raises(SystemExit) as exc:
            main([*common, "--codecs", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert msg in err[-1]
    # the tiny data has x265-ldp encodes only: asking for x264 alone finds no usable clip
    assert main([*common, "--codecs", "x264=1"]) != 0
    assert "no usable clips" in capsys.readouterr().err
    assert main([*common, "--codecs", "x265-ldp=1"]) == 0
    import json

    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["codec_weights"] == {"x265-ldp": 1.0}
