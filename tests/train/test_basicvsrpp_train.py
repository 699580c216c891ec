"""BasicVSR++-Y training: the clip-segment sampler (exact resume, targets = the raw frames of the
same segment), a 3-iteration run that validates through the Enhancer's segments, checkpoints,
resumes bit-exactly and exports weights that `vsqe run --model basicvsrpp-y` loads; and STDF's
sample stream unchanged by the new sampler."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

# STDF's PatchSampler stream on the tiny data (patch 32, seed 5, 16 samples), recorded before the
# segment sampler existed; keyed on the tiny data's own bytes (another x265 build encodes other
# bytes, and the stream then cannot be compared).
STDF_STREAM = {("1e4bdaac813dfd19", "ae297ac75c3f68b0"): "b215e8af6bfe379e"}


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def test_stdf_sample_stream_unchanged(tiny_data):
    from vsqe.train.dataset import PatchSampler

    data, manifest = tiny_data
    clip = manifest["clips"][0]
    key = (_digest(np.load(data / clip["encodes"]["x265-ldp-qp37"]["file"])), _digest(np.load(data / clip["raw"])))
    if key not in STDF_STREAM:
        pytest.skip(f"tiny data encoded differently here ({key}): no recorded stream to compare")
    s = PatchSampler(data, patch=32, codec_weights={"x265-ldp": 1.0}, seed=5)
    h = hashlib.sha256()
    for _ in range(16):
        w, t = s.sample()
        h.update(w.tobytes())
        h.update(t.tobytes())
    assert h.hexdigest()[:16] == STDF_STREAM[key]


def _sampler(data, seed=3, frames=5):
    from vsqe.train.sequences import SegmentSampler

    return SegmentSampler(data, frames=frames, patch=64, codec_weights={"x265-ldp": 1.0}, seed=seed)


def _orientations(p):
    for q in (p, p.T):
        for r in (q, q[::-1], q[:, ::-1], q[::-1, ::-1]):
            yield np.ascontiguousarray(r)


def _where(frame, patch):
    """Grid positions (and orientation index) where `patch` sits in `frame`."""
    h, w = patch.shape
    return {
        (y, x, o)
        for o, q in enumerate(_orientations(patch))
        for y in range(0, frame.shape[0] - h + 1, 8)
        for x in range(0, frame.shape[1] - w + 1, 8)
        if np.array_equal(frame[y : y + h, x : x + w], q)
    }


def test_segment_sampler_pairs_and_resumes_exactly(tiny_data):
    data, manifest = tiny_data
    enc_file = manifest["clips"][0]["encodes"]["x265-ldp-qp37"]["file"]
    raw, enc = np.load(data / manifest["clips"][0]["raw"]), np.load(data / enc_file)
    s = _sampler(data)
    for _ in range(6):
        window, target = s.sample()
        _, _, t0 = s.last
        assert window.shape == target.shape == (5, 64, 64) and window.dtype == target.dtype == np.uint8
        # inputs and targets: the same frames (forward or reversed) at the same place
        for j in range(5):
            fwd, rev = t0 + j, t0 + 4 - j
            w_at = _where(enc[fwd], window[j]) | _where(enc[rev], window[j])
            t_at = _where(raw[fwd], target[j]) | _where(raw[rev], target[j])
            assert w_at & t_at, j
    a, b = _sampler(data), _sampler(data)
    for _ in range(4):
        (wa, ta), (wb, tb) = a.sample(), b.sample()
        assert np.array_equal(wa, wb) and np.array_equal(ta, tb)
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint stores
    ahead = [a.sample() for _ in range(5)]
    c = _sampler(data, seed=99)
    c.load_state_dict(state)
    for (wa, ta), (wc, tc) in zip(ahead, (c.sample() for _ in range(5))):
        assert np.array_equal(wa, wc) and np.array_equal(ta, tc)
    x, y = c.batch(2)
    assert x.shape == y.shape == (2, 5, 1, 64, 64)
    with pytest.raises(Exception, match="has 9 frames"):
        _sampler(data, frames=9)  # the tiny clip has 8


@pytest.fixture
def scaffold(train_scaffold):
    return train_scaffold(model="basicvsrpp-y", batch=1, patch=64, frames=4)


def test_train_resume_validate_export_and_run(scaffold, tmp_path, shared_file, monkeypatch):
    from vsqe.cli import main
    from vsqe.models import build_model, registry

    # validation at iteration 3 (uninterrupted run only): the first 3 frames of city through the
    # Enhancer's segments; the other run stopped after 2 iterations (its last checkpoint)
    full, resumed = scaffold.train_and_resume(3, val_every=3, val_clips=("city_416x240",), val_frames=3)
    assert full.cfg.batchnorm  # per-frame parts only (bn.add_batchnorm_per_frame)
    val = json.loads((Path(full.cfg.out) / "val.jsonl").read_text().splitlines()[-1])
    assert val["iteration"] == 3 and set(val["per_clip"]) == {"city_416x240"}
    assert val["psnr_in"]["city_416x240"] > 20 and "worst_frame" in val
    assert isinstance(resumed.sampler, type(full.sampler))
    scaffold.assert_resumed_exactly(full, resumed, 3)
    run_dir = Path(resumed.cfg.out)

    out = scaffold.export(resumed, tmp_path / "basicvsrpp_y.safetensors")
    model, spec, _ = build_model("basicvsrpp-y", str(out))
    assert spec.color == "y" and spec.temporal == "recurrent" and model.conv_last.weight.shape[0] == 1
    # the file under the registry's default name is what a plain `--model basicvsrpp-y` loads
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    out.rename(tmp_path / spec.default_weights)
    assert build_model("basicvsrpp-y")[2] == tmp_path / spec.default_weights
    out = tmp_path / spec.default_weights

    # `vsqe run` (segments; Y model: chroma passes through), on a real clip
    src = shared_file("city_416x240_hm_ldp_qp37.hevc")
    dst = tmp_path / "out.y4m"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rc = main(["run", str(src), str(dst), "--model", "basicvsrpp-y", "--weights", str(out), "--frames", "5",
               "--threads", "1", "--no-progress", "--backend", "torch-fp32"])
    assert rc == 0 and dst.stat().st_size > 5 * 416 * 240 * 3 // 2

    # shipping: the registry's default name and a card (the measurement stubbed: the real one runs
    # every dev frame)
    from vsqe.train import ship

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    monkeypatch.setattr(ship, "WEIGHTS_DIR", weights_dir)

    def fake_report(weights, streams, step, threads=None, model="stdf", pqf_weights=None):
        assert model == "basicvsrpp-y" and pqf_weights is None
        return {"backend": "torch-fp32", "streams": {"hm": {"delta_mean": 0.1, "per_clip": {"city_416x240": 0.1}}}}

    monkeypatch.setattr(ship, "report", fake_report)
    assert ship.main(["--ckpt", str(run_dir / "last.pt"), "--run", str(run_dir), "--streams", "hm"]) == 0
    card = json.loads((weights_dir / "basicvsrpp_y_qp37.json").read_text())
    assert card["model"] == "basicvsrpp-y" and "mid_channels=32" in card["variant"]
    assert card["hyper_parameters"]["frames"] == 4
    assert "--model basicvsrpp-y" in card["evaluation"]["command"]
    assert (weights_dir / "basicvsrpp_y_qp37.safetensors").is_file()


def test_per_frame_stage_then_the_full_network(scaffold, tmp_path, monkeypatch):
    """Stage 1 (`per_frame`, the STDF teacher's targets for its first 2 iterations) trains the
    per-frame path with the reconstruction's weights for the propagated features held at zero, so
    its export is a full network whose forward is its per-frame path; stage 2 starts the full
    recurrent network (no BN) from that export, unchanged at its start, and its first step moves
    those weights off zero."""
    import torch

    from vsqe.models import build_model
    from vsqe.train.trainer import Trainer

    stage1 = scaffold.train("stage1", 3, per_frame=True, teacher="stdf", teacher_iters=2)
    assert stage1.teacher is not None and stage1.teacher.weights.name == "stdf_y_qp37.safetensors"
    c = stage1.model.mid_channels
    w = stage1.model.reconstruction.main[0].weight
    assert w[:, c:].abs().max() == 0 and w[:, :c].abs().max() > 0
    exported = scaffold.export(stage1, tmp_path / "stage1.safetensors")

    model, _, _ = build_model("basicvsrpp-y", str(exported))
    model.min_flow_size = 16  # 64-px training patches
    x, _ = stage1.sampler.batch(1)
    with torch.no_grad():
        full, alone = model(x), model.per_frame(x)
    assert torch.allclose(full, alone, atol=1e-6)
    assert (full - x).abs().max() > 1e-4  # not the identity

    stage2 = Trainer(scaffold.config("stage2", 1, init_from=str(exported), batchnorm=False), log=lambda m: None)
    stage2.model.eval()
    with torch.no_grad():
        assert torch.allclose(stage2.model(x), full, atol=1e-5)
    stage2.run()
    assert stage2.model.reconstruction.main[0].weight[:, c:].abs().max() > 0

    # the model card tells both stages (the measurement stubbed, as above)
    from vsqe.train import ship

    monkeypatch.setattr(ship, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(ship, "report", lambda *a, **k: {
        "backend": "torch-fp32", "streams": {"hm": {"delta_mean": 0.1, "per_clip": {"city_416x240": 0.1}}}})
    assert ship.main(["--ckpt", str(Path(stage2.cfg.out) / "last.pt"), "--run", stage2.cfg.out, "--streams", "hm"]) == 0
    card = json.loads((tmp_path / "basicvsrpp_y_qp37.json").read_text())
    assert "in 2 stages" in card["trained_by"], card["trained_by"]
    assert ("1. the per-frame path alone (propagation off), training-only BN folded on export, the shipped stdf "
            "default's outputs as targets for its first 2 iterations, 3 iterations; 2. the full network") in card["trained_by"]
    assert "no BN, 1 iterations" in card["trained_by"]
    assert card["init_from"]["per_frame"] == "1" and card["init_from"]["iteration"] == "3"

    # a later stage's export carries the whole chain (what a third stage's card reads)
    from vsqe.train.export import origin_chain, weights_origin

    stage2_file = scaffold.export(stage2, tmp_path / "stage2.safetensors")
    chain = origin_chain(weights_origin(str(stage2_file)))
    assert [(st["per_frame"], st["iteration"], st["teacher_iters"]) for st in chain] == [("1", "3", "2"), ("0", "1", "0")]
    assert chain[0]["file"] == str(exported)

    # an export whose checkpoint stayed elsewhere (a lent GPU) ships from the export + run folder
    exported2 = scaffold.export(stage2, tmp_path / "stage2.safetensors")
    (tmp_path / "basicvsrpp_y_qp37.json").unlink()
    assert ship.main(["--weights", str(exported2), "--run", stage2.cfg.out, "--streams", "hm",
                      "--note", "trained elsewhere"]) == 0
    card2 = json.loads((tmp_path / "basicvsrpp_y_qp37.json").read_text())
    assert card2["trained_by"] == card["trained_by"] and card2["iterations"] == 1
    assert card2["selected_by"].startswith("the run's last iteration") and card2["note"] == "trained elsewhere"
    with pytest.raises(SystemExit, match="cannot ship .* with run .*nowhere"):
        ship.main(["--weights", str(exported), "--run", str(tmp_path / "nowhere"), "--streams", "hm"])


def test_teacher_targets_are_the_window_models_output(scaffold):
    """Each frame's target is the teacher's output on its window, clamped to the segment."""
    import torch

    from vsqe.train.trainer import TeacherTargets

    sampler = scaffold.train("t", 0).sampler
    x, y = sampler.batch(2)  # [2, 4, 1, 64, 64]
    teacher = TeacherTargets("stdf")
    targets = teacher(x)
    assert targets.shape == x.shape
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = teacher.model(x[:, [0, 0, 0, 0, 1, 2, 3]]).float().clamp(0, 1)
    assert torch.equal(targets[:, 0], first)
    assert not torch.equal(targets, x) and not torch.equal(targets, y)
    with pytest.raises(ValueError, match="not a window model"):
        TeacherTargets("mfqev2-y")


def test_stage_options_are_for_recurrent_models_only(tmp_path, capsys):
    from vsqe.train.cli import main

    assert main(["train", "--model", "stdf", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--per-frame"]) != 0
    assert "for recurrent models" in capsys.readouterr().err
    assert main(["train", "--model", "basicvsrpp-y", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                 "--teacher-iters", "5"]) != 0
    assert "--teacher-iters needs --teacher" in capsys.readouterr().err
