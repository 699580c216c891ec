"""`vsqe train flow`: SpyNet alone on photometric consistency (vsqe/train/flow.py)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from vsqe.models.spynet import SpyNet
from vsqe.train.flow import FlowConfig, FlowPairSampler, FlowTrainer, evaluate_flow, graft, photometric_loss
from vsqe.train.trainer import zero_flow


def _shifted_pair(dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 80, 80, generator=g), 3, 1, 1)
    return img[..., 8:72, 8:72], img[..., 8:72, 8 + dx : 72 + dx]  # ref(x) = frame(x + dx)


def test_photometric_loss_is_lowest_at_the_true_motion():
    frame, ref = _shifted_pair(2)
    zero = torch.zeros(1, 2, 64, 64)
    true = zero.clone()
    true[:, 0] = -2.0  # frame(x) = ref(x - 2): sample the reference 2 px to the left
    wrong = zero.clone()
    wrong[:, 0] = 2.0
    loss = {name: float(photometric_loss(f, frame, ref, 1e-3, 0.02)[0]) for name, f in
            (("zero", zero), ("true", true), ("wrong", wrong))}
    assert loss["true"] == pytest.approx(1e-3, abs=2e-4)  # Charbonnier's floor: every sample inside matches
    assert loss["zero"] > 20 * loss["true"] and loss["wrong"] > loss["zero"]


def test_photometric_loss_ignores_samples_from_outside_the_patch():
    frame, ref = _shifted_pair(0)
    flow = torch.zeros(1, 2, 64, 64)
    flow[:, 0] = 40.0  # most samples land outside: only the inside ones count, and they are wrong
    loss, _ = photometric_loss(flow, frame, ref, 1e-3, 0.0)
    assert 0.02 < float(loss) < 0.5  # a mean over inside pixels, not diluted by zero-padded ones


def test_pairs_are_one_to_max_distance_frames_apart(tiny_data):
    data, manifest = tiny_data
    s = FlowPairSampler(data, max_distance=3, patch=64, codec_weights={"x265-ldp": 1.0}, seed=1)
    distances = set()
    for _ in range(40):
        dec, raw = s.sample()
        assert dec.shape == raw.shape == (2, 64, 64) and dec.dtype == raw.dtype == np.uint8
        _, _, t, r = s.last
        distances.add(abs(t - r))
    assert distances <= {1, 2, 3} and len(distances) >= 2


def test_evaluate_flow_scores_zero_flow_as_zero(shared_data):
    net = SpyNet()
    zero_flow(net)
    s = evaluate_flow(net, clips=("city_416x240",), frame_step=10)
    assert s["gain_db"] == 0.0 and s["per_clip"] == {"city_416x240": 0.0}


def _cfg(data, out, base, **kw) -> FlowConfig:
    return FlowConfig(data=str(data), out=str(out), base=str(base), batch=2, patch=64, warmup=2, threads=1,
                      val_every=0, log_every=1, codec_weights={"x265-ldp": 1.0}, max_distance=2, **kw)


def _base(tmp_path):
    """mfqev2-y weights with a random QE net and a zero-flow SpyNet."""
    from safetensors.torch import save_file

    from vsqe.train.trainer import build_train_model, plain_state_dict

    torch.manual_seed(0)
    model = build_train_model("mfqev2-y", batchnorm=True)
    zero_flow(model.spynet)
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in plain_state_dict(model).items()}, str(path))
    return path


def test_train_resume_and_graft(tiny_data, tmp_path):
    from safetensors.torch import load_file

    data, _ = tiny_data
    base = _base(tmp_path)
    whole = FlowTrainer(_cfg(data, tmp_path / "a", base, iters=3), log=lambda m: None)
    whole.run()
    first = FlowTrainer(_cfg(data, tmp_path / "b", base, iters=2), log=lambda m: None)
    first.run()
    resumed = FlowTrainer(_cfg(data, tmp_path / "b", base, iters=3), resume=True, log=lambda m: None,
                          overrides={"iters"})
    assert resumed.iteration == 2
    resumed.run()
    for k, v in whole.spynet.state_dict().items():
        assert torch.equal(v, resumed.spynet.state_dict()[k]), k  # exact resume
    assert any(not torch.equal(v, SpyNet().state_dict()[k]) for k, v in whole.spynet.state_dict().items())
    out = tmp_path / "grafted.safetensors"
    graft(base, "mfqev2-y", whole.spynet.state_dict(), out)
    got, before = load_file(str(out)), load_file(str(base))
    assert set(got) == set(before)
    for k, v in got.items():
        if k.startswith("spynet."):
            assert torch.equal(v, whole.spynet.state_dict()[k[len("spynet."):]]), k
        else:
            assert torch.equal(v, before[k]), k  # the QE network is the base's, untouched
    from vsqe.pipeline.enhancer import Enhancer

    Enhancer("mfqev2-y", weights=str(out), pqf_weights=str(out))  # loads as the model's weights


def test_resume_keeps_the_runs_options_unless_given(tiny_data, tmp_path):
    data, _ = tiny_data
    base = _base(tmp_path)
    FlowTrainer(_cfg(data, tmp_path / "r", base, iters=1, lr=3e-4), log=lambda m: None).run()
    again = FlowTrainer(_cfg(data, tmp_path / "r", base, iters=5), resume=True, log=lambda m: None, overrides=set())
    assert again.cfg.iters == 1 and again.cfg.lr == 3e-4  # nothing given: the checkpoint's values


def test_cli_refuses_a_missing_base_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vsqe", "train", "flow", "--base", str(tmp_path / "nope.safetensors"),
                        "--data", str(tmp_path), "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "nope.safetensors: no such file" in r.stderr
    assert not (tmp_path / "run").exists()


def test_export_grafts_with_the_stage_record_and_cards_list_it(tiny_data, tmp_path):
    import hashlib
    import json

    from safetensors import safe_open

    from vsqe.train.export import export_checkpoint, weights_origin
    from vsqe.train.ship import _has_flow_stage, _rounds_text

    data, _ = tiny_data
    base = _base(tmp_path)
    base_sha = hashlib.sha256(base.read_bytes()).hexdigest()
    run = FlowTrainer(_cfg(data, tmp_path / "e", base, iters=2), log=lambda m: None)
    run.run()
    out = tmp_path / "grafted.safetensors"
    export_checkpoint(tmp_path / "e" / "last.pt", out)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["flow_stage"] == "1" and meta["iteration"] == "2" and meta["max_distance"] == "2"
    assert json.loads(meta["init_from"])["sha256"] == base_sha
    origin = weights_origin(str(out))
    assert _has_flow_stage(origin)
    text = _rounds_text(origin, 7)
    assert "round 2: SpyNet alone on photometric consistency (vsqe train flow, 64-px patches" in text
    assert text.endswith("round 3 (this run): 7 iterations")

    # the checkpoint holds SpyNet alone: grafting into a base replaced since the run began is refused
    from vsqe.errors import CheckpointError

    base.write_bytes(out.read_bytes())
    with pytest.raises(CheckpointError, match="no longer the base this flow run started from"):
        export_checkpoint(tmp_path / "e" / "last.pt", tmp_path / "again.safetensors")
    assert not (tmp_path / "again.safetensors").exists()

    # --into: the SpyNet grafted into other weights of the model (a stage trained beside the flow
    # stage); the record names that file as the start and keeps the stage's fields
    import torch
    from safetensors.torch import load_file

    other = tmp_path / "other.safetensors"
    other.write_bytes(out.read_bytes())
    into = tmp_path / "into.safetensors"
    export_checkpoint(tmp_path / "e" / "last.pt", into, into=other)
    got, src = load_file(str(into)), load_file(str(other))
    assert all(torch.equal(got[k], src[k]) for k in src if not k.startswith("spynet."))
    rec = weights_origin(str(into))
    assert rec["flow_stage"] == "1" and rec["patch"] == "64" and rec["device"] == "cpu"
    assert rec["init_from"]["file"] == str(other)
    from vsqe.train.trainer import save_checkpoint

    save_checkpoint(tmp_path / "plain.pt", {"format": "vsqe-train-ckpt/1", "config": {"model": "mfqev2-y"}})
    with pytest.raises(CheckpointError, match="--into is for `vsqe train flow` checkpoints"):
        export_checkpoint(tmp_path / "plain.pt", tmp_path / "x.safetensors", into=other)


def test_cli_refuses_a_base_without_spynet_and_leaves_no_run_folder(tmp_path, tiny_data):
    from vsqe.models.registry import get_model_spec

    stdf = get_model_spec("stdf").default_weights_path()
    data, _ = tiny_data
    r = subprocess.run([sys.executable, "-m", "vsqe", "train", "flow", "--model", "stdf", "--base", str(stdf),
                        "--data", str(data), "--out", str(tmp_path / "run"), "--iters", "1"], capture_output=True, text=True)
    assert r.returncode != 0 and "no spynet.* keys" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()


def test_flow_curves_plot_from_val_csv(tmp_path):
    from vsqe.train.flow import plot_flow_curves

    (tmp_path / "val.csv").write_text("iteration,hours,gain_db,city_416x240,phone_832x480\n"
                                      "0,0.0,-0.16,0.32,-0.13\n500,0.1,7.3,9.3,7.6\n")
    plot_flow_curves(tmp_path)
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
