"""`vsqe run` with a PQF model (MFQEv2): where the flags come from, the two networks, the
fallbacks, and the options that do not apply (one line, exit 2)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from vsqe.cli import main
from vsqe.io.decode import open_video
from vsqe.pqf.detect import indices, pqfs_from_qp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))
from pqf_weights import save_random_mfqev2  # noqa: E402

STREAM = "city_416x240_hm_ldp_qp37.hevc"
FRAMES = 9


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mfqev2_cli")
    return save_random_mfqev2(folder / "non_pqf.safetensors", 1), save_random_mfqev2(folder / "pqf.safetensors", 2)


@pytest.fixture(scope="module")
def small_y4m(shared_file, tmp_path_factory) -> Path:
    """The first frames of the HM stream, decoded and cut to 96x64 (no slice QPs in a y4m)."""
    path = tmp_path_factory.mktemp("pqf_y4m") / "city96x64.y4m"
    with open_video(shared_file(STREAM)) as reader, open(path, "wb") as out:
        out.write(b"YUV4MPEG2 W96 H64 F25:1 Ip A1:1 C420jpeg\n")
        for _, frame in zip(range(FRAMES), reader):
            y, u, v = frame.planes
            out.write(b"FRAME\n" + y[88:152, 160:256].tobytes() + u[44:76, 80:128].tobytes() + v[44:76, 80:128].tobytes())
    return path


def _decoded(path: Path) -> list:
    with open_video(path) as reader:
        return list(reader)


def _pqf_line(err: str) -> str:
    return next(line for line in err.splitlines() if "PQFs from" in line and "look-ahead" in line)


def test_pqf_qp_picks_the_hm_log_pocs_and_the_right_network(shared_file, weights, tmp_path, capsys):
    from vsqe.pipeline.enhancer import Enhancer

    src, out = shared_file(STREAM), tmp_path / "out.y4m"
    non_pqf, pqf = weights
    rc = main(["run", str(src), str(out), "--model", "mfqev2", "--weights", str(non_pqf), "--pqf-weights", str(pqf),
               "--pqf", "qp", "--frames", str(FRAMES), "--no-progress", "-v"])
    err = capsys.readouterr().err
    assert rc == 0, err
    with open(shared_file(STREAM.replace(".hevc", ".csv"))) as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["poc"]))[:FRAMES]
    want = indices(pqfs_from_qp([int(r["qp"]) for r in rows]))
    assert want == [0, 4, 8]
    assert f"PQFs from slice QPs: 3 of {FRAMES} frames [0, 4, 8], look-ahead 8" in err
    assert "no PQF weights" not in err

    got, inp = _decoded(out), _decoded(src)[:FRAMES]
    assert len(got) == FRAMES
    enh = Enhancer("mfqev2", weights=str(non_pqf), pqf_weights=str(pqf))
    # (left, frame, right, network): a PQF from its neighbouring PQFs, a non-PQF between two, the last PQF.
    for n, left, right, is_pqf in [(4, 0, 8, True), (5, 4, 8, False), (8, 4, 8, True)]:
        want_frame = enh.enhance_pqf_triplet(inp[left], inp[n], inp[right], is_pqf)
        for p in range(3):
            assert np.array_equal(got[n].planes[p], want_frame.planes[p]), (n, p)


def test_pqf_every_n_matches_the_rule(small_y4m, weights, tmp_path, capsys):
    out = tmp_path / "every.y4m"
    rc = main(["run", str(small_y4m), str(out), "--model", "mfqev2", "--weights", str(weights[0]),
               "--pqf", "every:3", "--no-progress", "-v"])
    err = capsys.readouterr().err
    assert rc == 0, err
    # The fixed rule needs no look at the frames: flags as they stream in, look-ahead 2x the period.
    assert _pqf_line(err).endswith("PQFs from every 3, found as the frames stream in, look-ahead 6")
    # One set of weights: used for both networks, said once.
    assert err.count("no PQF weights given") == 1
    assert len(_decoded(out)) == FRAMES


def test_y4m_without_slice_qps_falls_back_to_the_estimator(small_y4m, tmp_path, capsys):
    rc = main(["run", str(small_y4m), str(tmp_path / "o.y4m"), "--model", "mfqev2", "--allow-untrained",
               "--frames", "5", "--no-progress", "-v"])
    err = capsys.readouterr().err
    assert rc == 0, err
    warning = [line for line in err.splitlines() if "no-reference estimator" in line]
    assert len(warning) == 1 and "no slice QPs" in warning[0], err
    assert "PQFs from estimate" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("trim", "message"),
    [
        (lambda qps: qps[:-1], "the PQF flags cover 2 frames, the decoder gave more (frame 2)"),
        (lambda qps: qps + [37], "the PQF flags cover 4 frames, the decoder gave 3"),
    ],
)
def test_qps_that_do_not_line_up_with_the_decoded_frames_fall_back(shared_file, tmp_path, capsys, monkeypatch, trim, message):
    """Found while streaming (the input is decoded once): the output is dropped and the run
    decodes again with estimated flags; the result has every frame."""
    from vsqe.pipeline import pqf_schedule

    real = pqf_schedule.bitstream_qps
    monkeypatch.setattr(pqf_schedule, "bitstream_qps", lambda path, count=None: trim(real(path, count)))
    out = tmp_path / "o.y4m"
    rc = main(["run", str(shared_file(STREAM)), str(out), "--model", "mfqev2", "--allow-untrained",
               "--frames", "3", "--no-progress", "-v", "--pqf-lookahead", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert message in err and "decoding again" in err
    assert "PQFs from estimate" in err and "look-ahead 2" in err
    assert len(_decoded(out)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["o.y4m"]  # no leftover of the dropped attempt


def test_misaligned_qps_on_a_pipe_output_fail_in_one_line(shared_file, tmp_path, monkeypatch, capsys):
    """Frames already written to stdout cannot be taken back: exit non-zero naming the problem."""
    from vsqe.pipeline import pqf_schedule

    real = pqf_schedule.bitstream_qps
    monkeypatch.setattr(pqf_schedule, "bitstream_qps", lambda path, count=None: real(path, count)[:-1])
    monkeypatch.setattr(sys, "stdout", open(tmp_path / "pipe.y4m", "w"))
    rc = main(["run", str(shared_file(STREAM)), "-", "--model", "mfqev2", "--allow-untrained",
               "--frames", "3", "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0
    errors = [line for line in err.splitlines() if "run again with --pqf estimate" in line]
    assert len(errors) == 1 and "the PQF flags cover 2 frames" in errors[0], err
    assert "Traceback" not in err


def test_estimate_on_a_file_scores_frames_as_they_arrive(small_y4m, tmp_path, capsys):
    rc = main(["run", str(small_y4m), str(tmp_path / "o.y4m"), "--model", "mfqev2", "--allow-untrained",
               "--pqf", "estimate", "--frames", "5", "--no-progress", "-v"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "PQFs from estimate, found as the frames stream in, look-ahead 8" in err


def test_stream_without_parameter_sets_gives_a_one_line_warning(shared_file, tmp_path):
    """bitstream_qps names the first frame whose QP is unknown (the run then uses the estimator)."""
    from vsqe.pipeline.pqf_schedule import PqfUnavailable, bitstream_qps

    cut = tmp_path / "no_params.hevc"
    cut.write_bytes(_without_parameter_sets(shared_file(STREAM).read_bytes()))
    with pytest.raises(PqfUnavailable, match=r"frame 0 \(display order\): slice QP unknown \(.*PPS 0.*\)") as exc:
        bitstream_qps(str(cut))
    assert "\n" not in str(exc.value)


def _without_parameter_sets(data: bytes) -> bytes:
    """An HEVC Annex-B stream without its VPS, SPS and PPS NAL units."""
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\x00\x00\x01"]
    out = bytearray()
    for k, s in enumerate(starts):
        nal = data[s : starts[k + 1] if k + 1 < len(starts) else len(data)]
        if (nal[3] >> 1) & 0x3F not in (32, 33, 34):
            out += nal
    return bytes(out)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "stdf", "--pqf", "qp"], "--pqf: model 'stdf' does not use PQFs"),
        (["--model", "stdf", "--pqf-weights", "w.safetensors"], "--pqf-weights: model 'stdf' does not use PQFs"),
        (["--model", "mfqev2", "--segment-length", "4"], "--segment-length: model 'mfqev2' is not a recurrent"),
        (["--model", "basicvsrpp", "--segment-length", "0"], "--segment-length must be at least 1, got 0"),
        (["--model", "basicvsrpp", "--segment-overlap", "-1"], "--segment-overlap must be at least 0, got -1"),
        (["--model", "mfqev2", "--pqf-lookahead", "0"], "--pqf-lookahead must be at least 1, got 0"),
        (["--model", "mfqev2", "--pqf", "every:0"], "expected auto, qp, estimate or every:N"),
        (["--model", "mfqev2", "--pqf", "sometimes"], "expected auto, qp, estimate or every:N"),
    ],
)
def test_options_that_do_not_apply_exit_2_with_one_line(small_y4m, tmp_path, vsqe_cli, args, message):
    result = vsqe_cli("run", small_y4m, tmp_path / "o.y4m", "--allow-untrained", *args, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "o.y4m").exists()


def test_pqf_qp_on_stdin_is_refused(tmp_path, capsys):
    assert main(["run", "-", str(tmp_path / "o.y4m"), "--model", "mfqev2", "--pqf", "qp", "--allow-untrained"]) == 2
    assert "--pqf qp needs the input bitstream" in capsys.readouterr().err


def test_segment_options_reach_the_enhancer(small_y4m, tmp_path, monkeypatch, capsys):
    """--segment-length/--segment-overlap are passed through to the Enhancer's SegmentPlan."""
    import vsqe.pipeline.enhancer as enhancer_module
    from vsqe.errors import ModelError

    seen = {}

    class Recorder:
        def __init__(self, model, **kwargs):
            seen.update(kwargs, model=model)
            raise ModelError("recorded")

    monkeypatch.setattr(enhancer_module, "Enhancer", Recorder)
    assert main(["run", str(small_y4m), str(tmp_path / "o.y4m"), "--model", "basicvsrpp", "--allow-untrained",
                 "--segment-length", "5", "--segment-overlap", "0"]) == 2
    assert "recorded" in capsys.readouterr().err
    assert (seen["model"], seen["segment_length"], seen["segment_overlap"]) == ("basicvsrpp", 5, 0)
    assert seen["pqf_weights"] is None and seen["pqf_lookahead"] is None


def test_stdin_scores_frames_as_they_arrive(small_y4m, tmp_path, vsqe_cli):
    out = tmp_path / "o.y4m"
    with open(small_y4m, "rb") as stdin:
        result = vsqe_cli("run", "-", out, "--model", "mfqev2", "--allow-untrained", "--no-progress", "--frames", "4",
                          stdin=stdin, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "stdin: no bitstream to read slice QPs from; PQFs from the no-reference estimator" in result.stderr
    assert "Traceback" not in result.stderr
    with open_video(out) as reader:
        assert sum(1 for _ in reader) == 4
