"""MFQEv2-Y training: the PQF-triplet sampler (the pipeline's PQF rule and pairing, exact resume),
a 3-iteration run that checkpoints, resumes exactly and exports weights that `vsqe run` loads,
and the PQF validation path (per-class figures, the other class left as decoded)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vsqe.pipeline.pqf_schedule import default_lookahead, schedule
from vsqe.pqf.detect import QP_RADIUS, peak_flags

# The two QP patterns of the training data (manifest frame_qps, 32 frames): x265 forced to HM's
# LDP GOP4 schedule, and x264 at --qp 37 (its I frame 3 lower).
X265_QPS = [37] + [40, 39, 40, 38] * 7 + [40, 39, 40]
X264_QPS = [34] + [37] * 31


def _sampler(data, role="nonpqf", seed=3):
    from vsqe.train.triplets import TripletSampler

    return TripletSampler(data, role=role, patch=32, codec_weights={"x265-ldp": 1.0}, seed=seed)


@pytest.mark.parametrize("qps", [X265_QPS, X264_QPS], ids=["x265-ldp", "x264"])
def test_triplets_are_the_pipeline_pairing(qps):
    from vsqe.train.triplets import encode_triplets

    flags, refs = encode_triplets(qps)
    # the project's one PQF rule (QP radius 2) on quality = -QP
    assert flags == peak_flags([-float(q) for q in qps], QP_RADIUS)
    # and the streaming scheduler's pairing at that look-ahead (clip ends included)
    streamed = list(schedule(zip(range(len(qps)), flags), default_lookahead(flags)))
    assert [(f, left, right) for f, left, right, _ in streamed] == [(t, *refs[t]) for t in range(len(qps))]
    if qps is X265_QPS:
        assert [t for t, f in enumerate(flags) if f] == [0, 4, 8, 12, 16, 20, 24, 28]
        assert refs[0] == (0, 4) and refs[4] == (0, 8) and refs[5] == (4, 8) and refs[29] == (28, 29)


def test_sampler_roles_follow_the_flags(tiny_data):
    data, manifest = tiny_data
    qps = manifest["clips"][0]["encodes"]["x265-ldp-qp37"]["frame_qps"]
    flags = peak_flags([-float(q) for q in qps], QP_RADIUS)
    from vsqe.train.triplets import encode_triplets

    _, refs = encode_triplets(qps)
    raw = np.load(data / manifest["clips"][0]["encodes"]["x265-ldp-qp37"]["file"])
    for role in ("nonpqf", "pqf"):
        s = _sampler(data, role)
        for _ in range(12):
            window, target = s.sample()
            _, _, t, left, right = s.last
            assert flags[t] == (role == "pqf") and (left, right) == refs[t]
            assert window.shape == (3, 32, 32) and target.shape == (32, 32) and window.dtype == np.uint8
            # the centre of the triplet is frame t of the encode (up to the flips/transpose)
            frame = raw[t]
            assert any(_contains(frame, np.ascontiguousarray(c)) for c in _orientations(window[1]))


def _orientations(p):
    for q in (p, p.T):
        for r in (q, q[::-1], q[:, ::-1], q[::-1, ::-1]):
            yield r


def _contains(frame, patch):
    h, w = patch.shape
    return any(
        np.array_equal(frame[y : y + h, x : x + w], patch)
        for y in range(0, frame.shape[0] - h + 1, 8)
        for x in range(0, frame.shape[1] - w + 1, 8)
    )


def test_sampler_is_deterministic_and_resumes_exactly(tiny_data):
    data, _ = tiny_data
    a, b = _sampler(data), _sampler(data)
    for _ in range(5):
        (wa, ta), (wb, tb) = a.sample(), b.sample()
        assert np.array_equal(wa, wb) and np.array_equal(ta, tb)
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint stores
    ahead = [a.sample() for _ in range(6)]
    c = _sampler(data, seed=99)
    c.load_state_dict(state)
    for (wa, ta), (wc, tc) in zip(ahead, (c.sample() for _ in range(6))):
        assert np.array_equal(wa, wc) and np.array_equal(ta, tc)
    x, y = c.batch(2)
    assert x.shape == (2, 3, 1, 32, 32) and y.shape == (2, 1, 32, 32)


@pytest.fixture
def scaffold(train_scaffold):
    return train_scaffold(model="mfqev2-y", batch=2, patch=32)


def test_train_resume_export_and_run(scaffold, tmp_path, shared_file, monkeypatch):
    from vsqe.cli import main
    from vsqe.models import build_model

    full, resumed = scaffold.train_and_resume(3)  # the second run stopped after 2 iterations (its last checkpoint)
    scaffold.assert_resumed_exactly(full, resumed, 3)
    assert isinstance(resumed.sampler, type(full.sampler)) and resumed.sampler.role == "nonpqf"
    run_dir = Path(resumed.cfg.out)
    assert (run_dir / "train.csv").read_text().count("\n") >= 4

    out = scaffold.export(resumed, tmp_path / "nonpqf.safetensors")
    model, spec, _ = build_model("mfqev2-y", str(out))
    assert spec.color == "y" and model.rec_conv[5].weight.shape == (1, 32, 3, 3)

    # the PQF network starts from the non-PQF export (PowerVQE's recipe)
    pqf_run = scaffold.train("p", 1, pqf_role="pqf", init_from=str(out))
    assert pqf_run.sampler.role == "pqf"
    pqf_dir = Path(pqf_run.cfg.out)
    pqf_out = scaffold.export(pqf_run, tmp_path / "pqf.safetensors")

    # shipping: the shipped registry names one file for both networks (below); first a registry
    # with two names: both files under them, one card (measurement stubbed: the real one runs
    # every dev frame)
    import dataclasses

    from vsqe.models import registry
    from vsqe.train import ship

    one_file = registry.get_model_spec("mfqev2-y")
    monkeypatch.setitem(registry._REGISTRY, "mfqev2-y",
                        dataclasses.replace(one_file, default_pqf_weights="mfqev2_y_pqf_qp37.safetensors"))
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    monkeypatch.setattr(ship, "WEIGHTS_DIR", weights_dir)
    calls = []

    def fake_report(weights, streams, step, threads=None, model="stdf", pqf_weights=None):
        calls.append((model, Path(weights).name, Path(pqf_weights).name))
        return {"backend": "torch-fp32", "streams": {"hm": {"delta_mean": 0.1, "per_clip": {"city_416x240": 0.1}}}}

    monkeypatch.setattr(ship, "report", fake_report)
    assert ship.main(["--ckpt", str(run_dir / "last.pt"), "--run", str(run_dir),
                      "--pqf-ckpt", str(pqf_dir / "last.pt"), "--streams", "hm"]) == 0
    assert calls == [("mfqev2-y", "mfqev2_y_qp37.candidate.safetensors", "mfqev2_y_pqf_qp37.candidate.safetensors")]
    card = json.loads((weights_dir / "mfqev2_y_qp37.json").read_text())
    assert card["model"] == "mfqev2-y" and card["pqf_network"]["weights"] == "mfqev2_y_pqf_qp37.safetensors"
    assert "--pqf-weights vsqe/weights/mfqev2_y_pqf_qp37.safetensors" in card["evaluation"]["command"]
    assert (weights_dir / "mfqev2_y_pqf_qp37.safetensors").is_file()
    # the roles cannot be swapped
    assert ship.main(["--ckpt", str(pqf_dir / "last.pt"), "--run", str(pqf_dir)]) == 2
    assert "rounds" not in card["trained_by"]

    assert card["pqf_network"]["init_from"]["iteration"] == "3"  # the PQF run began from the non-PQF export

    # a second non-PQF round starts from the first round's export; its card tells both rounds, as
    # they were when it started, even after the file it started from is replaced (shipping does that)
    first_round = hashlib.sha256(out.read_bytes()).hexdigest()
    round2 = scaffold.train("r2", 1, init_from=str(out))
    out.write_bytes(pqf_out.read_bytes())
    assert ship.main(["--ckpt", str(Path(round2.cfg.out) / "last.pt"), "--run", round2.cfg.out,
                      "--pqf-ckpt", str(pqf_dir / "last.pt"), "--streams", "hm"]) == 0
    card = json.loads((weights_dir / "mfqev2_y_qp37.json").read_text())
    assert ("in 2 rounds, each starting from the weights of the one before with a fresh cosine: round 1: 3 "
            "iterations") in card["trained_by"], card["trained_by"]
    assert card["trained_by"].endswith("round 2 (this run): 1 iterations")
    assert card["init_from"]["pqf_role"] == "nonpqf" and card["init_from"]["iteration"] == "3"
    assert card["init_from"]["sha256"] == first_round

    # a new non-PQF network beside the PQF network already shipped (--pqf-weights): measured with
    # it, the file left as it was, the card telling where it came from
    shipped_pqf = weights_dir / "mfqev2_y_pqf_qp37.safetensors"
    before = shipped_pqf.read_bytes()
    calls.clear()
    assert ship.main(["--ckpt", str(Path(round2.cfg.out) / "last.pt"), "--run", round2.cfg.out,
                      "--pqf-weights", str(shipped_pqf), "--streams", "hm"]) == 0
    assert calls == [("mfqev2-y", "mfqev2_y_qp37.candidate.safetensors", "mfqev2_y_pqf_qp37.candidate.safetensors")]
    assert shipped_pqf.read_bytes() == before
    kept = json.loads((weights_dir / "mfqev2_y_qp37.json").read_text())["pqf_network"]["kept_from"]
    assert kept["pqf_role"] == "pqf" and kept["sha256"] == hashlib.sha256(before).hexdigest()

    # the registry as shipped: one file serves both classes. Shipped alone, measured as both
    # networks; a PQF checkpoint or a different PQF file is refused, the same file is accepted.
    monkeypatch.setitem(registry._REGISTRY, "mfqev2-y", one_file)
    one_dir = tmp_path / "one"
    one_dir.mkdir()
    monkeypatch.setattr(ship, "WEIGHTS_DIR", one_dir)
    r2 = str(Path(round2.cfg.out) / "last.pt")
    assert ship.main(["--ckpt", r2, "--run", round2.cfg.out, "--pqf-ckpt", str(pqf_dir / "last.pt")]) == 2
    assert ship.main(["--ckpt", r2, "--run", round2.cfg.out, "--pqf-weights", str(pqf_out)]) == 2
    assert not list(one_dir.iterdir()) and not list(Path(round2.cfg.out).glob("*.candidate.*"))
    calls.clear()
    assert ship.main(["--ckpt", r2, "--run", round2.cfg.out, "--streams", "hm"]) == 0
    assert calls == [("mfqev2-y", "mfqev2_y_qp37.candidate.safetensors", "mfqev2_y_qp37.candidate.safetensors")]
    assert sorted(f.name for f in one_dir.iterdir()) == ["mfqev2_y_qp37.json", "mfqev2_y_qp37.safetensors"]
    card = json.loads((one_dir / "mfqev2_y_qp37.json").read_text())
    assert card["pqf_network"]["weights"] == "mfqev2_y_qp37.safetensors" and card["pqf_network"]["same_network"]
    assert ("--weights vsqe/weights/mfqev2_y_qp37.safetensors --pqf-weights vsqe/weights/mfqev2_y_qp37.safetensors"
            in card["evaluation"]["command"])
    assert ship.main(["--ckpt", r2, "--run", round2.cfg.out, "--pqf-weights", str(one_dir / "mfqev2_y_qp37.safetensors"),
                      "--streams", "hm"]) == 0

    # `vsqe run` loads both files (Y model: chroma passes through)
    src = shared_file("city_416x240_hm_ldp_qp37.hevc")
    dst = tmp_path / "out.y4m"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rc = main(["run", str(src), str(dst), "--model", "mfqev2-y", "--weights", str(out), "--pqf-weights",
               str(pqf_out), "--frames", "5", "--threads", "1", "--no-progress", "--backend", "torch-fp32"])
    assert rc == 0 and dst.stat().st_size > 5 * 416 * 240


def test_pqf_validation_reports_both_classes(tmp_path, shared_data):
    from safetensors.torch import save_file

    from vsqe.pipeline.enhancer import Enhancer
    from vsqe.train.trainer import build_train_model, init_weights
    from vsqe.train.validate import evaluate_pqf, summarize

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_train_model("mfqev2-y")
    init_weights(model)
    with torch.no_grad():
        model.rec_conv[5].weight.mul_(1e-3)  # a small residual: a measurable, non-zero change
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    enh = Enhancer(model="mfqev2-y", weights=str(path), pqf_weights=str(path), backend="torch-fp32", threads=1)
    res = evaluate_pqf(enh, clips=("city_416x240",), frame_step=15, enhance=("nonpqf",), dev_dir=shared_data)
    assert res[0].frames == [0, 15] and res[0].pqf == [True, False]
    s = summarize(res)
    assert s["pqf_class"]["pqf"] == 0.0  # PQFs left as decoded: exactly no change
    assert s["pqf_class"]["nonpqf"] != 0.0 and s["by_pqf"]["city_416x240"]["nonpqf"] == s["pqf_class"]["nonpqf"]
    # the PQF run's subset measures every PQF (0, 4, ..., 28), not only every 3rd frame
    res = evaluate_pqf(enh, clips=("city_416x240",), frame_step=100, enhance=(), all_of="pqf", dev_dir=shared_data)
    assert res[0].frames == [0, 4, 8, 12, 16, 20, 24, 28] and all(res[0].pqf)


def test_missing_weight_files_are_refused_at_the_start(tmp_path, capsys):
    from vsqe.train.cli import main

    for option in ("--init-from", "--partner-weights"):
        assert main(["train", "--model", "mfqev2-y", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                     option, str(tmp_path / "missing.safetensors")]) != 0
        assert f"{option} {tmp_path / 'missing.safetensors'}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_freeze_flow_keeps_the_spynet_of_init_from(scaffold, tmp_path):
    """--freeze-flow (after `vsqe train flow`): SpyNet stays exactly --init-from's, the QE net trains,
    a resumed run keeps it frozen, and a run without --init-from is refused."""
    first = scaffold.train("f0", 1)
    start = scaffold.export(first, tmp_path / "start.safetensors")
    frozen = scaffold.train("f1", 2, init_from=str(start), freeze_flow=True)
    before = first.model.state_dict()
    after = frozen.model.state_dict()
    spy = [k for k in after if k.startswith("spynet.") and after[k].is_floating_point()]
    assert spy and all(torch.equal(after[k], before[k]) for k in spy)
    assert not torch.equal(after["rec_conv.5.weight"], before["rec_conv.5.weight"])
    from vsqe.train.export import weights_origin

    assert weights_origin(str(scaffold.export(frozen, tmp_path / "frozen.safetensors")))["spynet"] == "frozen"
    resumed = scaffold.train("f1", 3, resume=True)
    assert resumed.cfg.freeze_flow and all(torch.equal(resumed.model.state_dict()[k], before[k]) for k in spy)
    with pytest.raises(ValueError, match="freeze_flow needs --init-from"):
        scaffold.train("f2", 1, freeze_flow=True)


def test_zero_flow_holds_spynet_at_zero_flow(scaffold):
    """--zero-flow: SpyNet's last conv of every level is zero from the start and stays zero; the QE net trains."""
    run = scaffold.train("z0", 2, zero_flow=True)
    sd = run.model.state_dict()
    for level in range(6):
        assert not sd[f"spynet.basic_module.{level}.basic_module.4.conv.weight"].any()
        assert not sd[f"spynet.basic_module.{level}.basic_module.4.conv.bias"].any()
    x = torch.rand(1, 3, 1, 32, 32)
    with torch.no_grad():
        aligned = run.model.align(x[:, 0], x[:, 1])
    assert torch.equal(aligned, x[:, 0])  # zero flow: the reference as it is
    assert all(not p.requires_grad for p in run.model.spynet.parameters())
    # the export records it, and a card's list of rounds says it
    from vsqe.train.export import weights_origin
    from vsqe.train.ship import _rounds_text

    out = scaffold.export(run, Path(run.cfg.out) / "z.safetensors")
    assert weights_origin(str(out))["spynet"] == "zero flow"
    assert "round 1: 2 iterations, 0.000 h, SpyNet's flow held at zero" in _rounds_text(weights_origin(str(out)), 1)


def test_context_is_the_teachers_window_around_the_same_patch(tiny_data):
    """With a context, the samples are the same as without one (no extra RNG draws); the context
    is frames t-3..t+3 (replicated at the clip ends) around the triplet's patch, 16 px wider, with
    the same flips, transpose and temporal reversal."""
    from vsqe.pipeline.window import window_indices
    from vsqe.train.triplets import TripletSampler

    data, manifest = tiny_data
    enc = np.load(data / manifest["clips"][0]["encodes"]["x265-ldp-qp37"]["file"])
    plain = _sampler(data)
    ctx = TripletSampler(data, patch=32, codec_weights={"x265-ldp": 1.0}, seed=3,
                         context_radius=3, context_margin=16)
    m = 16
    padded = np.pad(enc, ((0, 0), (m, m), (m, m)), mode="edge")
    for _ in range(10):
        w0, t0 = plain.sample()
        w1, t1, c = ctx.sample(with_context=True)
        assert np.array_equal(w0, w1) and np.array_equal(t0, t1)
        assert c.shape == (7, 64, 64) and c.dtype == np.uint8
        _, _, t, _, _ = ctx.last
        # the context's centre crop is the triplet's centre frame, and each context frame is that
        # frame of the window, in the same orientation (the frame order reversed or not)
        assert np.array_equal(c[3, m:-m, m:-m], w1[1])
        frames = [padded[i] for i in window_indices(t, 3, enc.shape[0], "replicate")]
        found = [any(_contains_any(f, np.ascontiguousarray(o)) for o in _orientations(c[0])) for f in (frames[0], frames[-1])]
        assert any(found)
    x, y, cx = ctx.batch_with_context(2)
    assert x.shape == (2, 3, 1, 32, 32) and y.shape == (2, 1, 32, 32) and cx.shape == (2, 7, 1, 64, 64)
    with pytest.raises(ValueError, match="context_radius"):
        plain.batch_with_context(1)


def _contains_any(frame, patch):
    h, w = patch.shape
    return any(
        np.array_equal(frame[y : y + h, x : x + w], patch)
        for y in range(0, frame.shape[0] - h + 1)
        for x in range(0, frame.shape[1] - w + 1)
    )


def test_distillation_targets_are_the_teachers_centre_frame(scaffold):
    """A PQF-model run with a teacher trains on the STDF default's output for the patch (its
    context cropped back), for --teacher-iters iterations, and resumes exactly."""
    from vsqe.train.trainer import TeacherTargets

    run = scaffold.train("kd", 1, teacher="stdf", teacher_iters=5)
    assert run.teacher is not None and run.teacher.weights.name == "stdf_y_qp37.safetensors"
    assert run.sampler.context_radius == 3 and run.sampler.context_margin == TeacherTargets.MARGIN
    x, y, c = run.sampler.batch_with_context(2)
    target = run.teacher.centre(c, TeacherTargets.MARGIN)
    assert target.shape == y.shape
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = run.teacher.model(c).float().clamp(0, 1)
    m = TeacherTargets.MARGIN
    assert torch.equal(target, whole[..., m:-m, m:-m])
    # the teacher improves on the decoded centre (it is the shipped default), so the targets differ from raw
    assert float((target - y).abs().mean()) > 1e-4
    full = scaffold.train("kd_a", 3, teacher="stdf", teacher_iters=5)
    scaffold.train("kd_b", 2, teacher="stdf", teacher_iters=5)
    resumed = scaffold.train("kd_b", 3, resume=True, teacher="stdf", teacher_iters=5)
    assert resumed.teacher is not None
    scaffold.assert_resumed_exactly(full, resumed, 3)


def test_teacher_is_refused_for_plain_window_models(tmp_path, tiny_data, capsys):
    from vsqe.cli import main

    data, _ = tiny_data
    assert main(["train", "--model", "stdf", "--data", str(data), "--out", str(tmp_path / "r"), "--teacher", "stdf",
                 "--teacher-iters", "2", "--iters", "1"]) != 0
    assert "--teacher is for recurrent" in capsys.readouterr().err
