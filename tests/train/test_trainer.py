import pytest
import torch

from vsqe.errors import CheckpointError


def _cfg(data, out, iters):
    from vsqe.train.trainer import TrainConfig

    return TrainConfig(data=str(data), out=str(out), iters=iters, batch=2, patch=32, warmup=2, threads=1,
                       val_every=0, val_full_every=0, log_every=1, stats_every=2, codec_weights={"x265-ldp": 1.0})


def _train(data, out, iters, resume=False):
    from vsqe.train.trainer import Trainer

    t = Trainer(_cfg(data, out, iters), resume=resume, log=lambda m: None)
    t.run()
    return t


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


def test_resume_is_exact(tiny_data, tmp_path):
    data, _ = tiny_data
    full = _train(data, tmp_path / "a", 3)
    _train(data, tmp_path / "b", 2)  # "killed" after 2 iterations (its last checkpoint)
    resumed = _train(data, tmp_path / "b", 3, resume=True)
    assert resumed.iteration == full.iteration == 3
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    oa, ob = full.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    for k in oa:
        assert torch.equal(oa[k]["exp_avg"], ob[k]["exp_avg"])
    assert full.sampler.state_dict() == resumed.sampler.state_dict()


def test_corrupt_checkpoint_refused(tiny_data, tmp_path):
    from vsqe.train.trainer import Trainer, load_checkpoint

    data, _ = tiny_data
    _train(data, tmp_path / "c", 1)
    ck = tmp_path / "c" / "last.pt"
    load_checkpoint(ck)  # intact
    raw = bytearray(ck.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ck.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        Trainer(_cfg(data, tmp_path / "c", 2), resume=True, log=lambda m: None)
    ck.write_bytes(bytes(raw[:1000]))  # truncated
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(ck)
    assert "\n" not in str(exc.value)


def test_export_loads_in_registry(tiny_data, tmp_path):
    from vsqe.models import build_model
    from vsqe.train.export import export_checkpoint

    data, _ = tiny_data
    _train(data, tmp_path / "e", 1)
    export_checkpoint(tmp_path / "e" / "last.pt", tmp_path / "w.safetensors")
    model, spec, path = build_model("stdf", str(tmp_path / "w.safetensors"))
    assert spec.name == "stdf" and path
