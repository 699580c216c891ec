"""Every bad input through every front end: `vsqe run`, `vsqe eval`, `vsqe pqf`, the VapourSynth filter.

The corpus (badinput_corpus.py) is built once for this module from the shared city clip. Each
(case, front end) pair has one expected outcome in EXPECT, the same table as docs/reliability.md
(`python tests/hardening/test_bad_inputs.py` prints it):

* exit 0: the output is complete;
* exit 3: frames were lost or damaged: a warning names the frame, the output holds what decoded;
* exit 2: refused in one line, before or during the run, and nothing is left behind.

For every CLI case: stderr holds no "Traceback", at most one `vsqe: error:` line (the last), and
the output folder afterwards holds exactly what it held before plus a complete output (exit 0/3).
The CLI runs in-process (`vsqe.cli.main`, the same code path as the command without a new
interpreter per case); the interrupt and disk-full cases that need a real process are in
test_faults.py. Cases already covered by tests/test_cli.py and tests/io (run on text/PNG/audio
files, y4m header syntax) are not repeated here.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from badinput_corpus import Case, build_corpus  # noqa: E402

from vsqe.cli import main  # noqa: E402
from vsqe.io.decode import open_video  # noqa: E402

UNTRAINED = ("--allow-untrained", "--no-progress")


@dataclass(frozen=True)
class Want:
    code: int | str  # CLI: exit status; VS: "ok", "source" (bs refuses), "refuse" (vsqe refuses), "ok|frame"
    text: str | None = None  # a regex the warning/error (CLI) or vs.Error message must contain
    frames: int | None = None  # CLI run: frames in the output; VS: clip length
    out: str = ".y4m"  # run: output extension


# Expected behaviour, (case, front end) -> Want. A front end missing for a case is not tested
# there (covered elsewhere, or meaningless: pqf reads bitstreams, not y4m).
EXPECT: dict[str, dict[str, Want]] = {
    "good.hevc": {
        "eval": Want(0), "pqf": Want(0), "vs": Want("ok", frames=8),
    },
    "empty.hevc": {
        "run": Want(2, r"input is empty \(0 bytes\)"), "eval": Want(2, "input is empty"),
        "pqf": Want(2, "empty file"), "vs": Want("source", "Indexing of .* failed"),
    },
    "empty.y4m": {
        "run": Want(2, "input is empty"), "eval": Want(2, "input is empty"), "pqf": Want(2, "empty file"),
        "vs": Want("source", "Couldn't open"),
    },
    "cut10.hevc": {
        "run": Want(2, r"no frame could be decoded \(1 frame lost\)"), "eval": Want(2, "no frame could be decoded"),
        "pqf": Want(2, "no coded pictures found"), "vs": Want("source", "Indexing of .* failed"),
    },
    "cut50.hevc": {
        "run": Want(3, r"1 frame could not be decoded .*frames from 4 on are missing", frames=4),
        "eval": Want(2, "frame counts differ: .*cut50.hevc ended after 4 frames"),
        "pqf": Want(0), "vs": Want("ok|frame", frames=4),
    },
    "cut90.hevc": {
        "run": Want(3, r"frame 4 is damaged: the stream ends inside this frame's data", frames=5, out=".mkv"),
        "eval": Want(2, "frame counts differ"), "pqf": Want(0), "vs": Want("ok|frame", frames=5),
    },
    "cut50.264": {
        "run": Want(3, r"frame 2 is damaged: the stream ends inside", frames=3),
        "eval": Want(2, "frame counts differ"), "pqf": Want(0), "vs": Want("ok|frame", frames=3),
    },
    "cut50.y4m": {
        "run": Want(3, r"frame 3 is truncated \(\d+ of 9216 bytes\); dropped", frames=3),
        "eval": Want(2, "frame counts differ"), "vs": Want("ok|frame", frames=3),
    },
    "cut50.mkv": {
        "run": Want(2, r"no frame could be decoded \(8 frames lost\)"), "eval": Want(2, "no frame could be decoded"),
        "pqf": Want(2, "no coded pictures found"),
    },
    "cut75.mkv": {
        "run": Want(3, r"4 frames could not be decoded .*frames from 4 on are missing", frames=4, out=".mkv"),
        "eval": Want(2, "frame counts differ"), "pqf": Want(0),
    },
    "flip.hevc": {
        "run": Want(3, r"frame \d+ is damaged", frames=8), "eval": Want(3, r"frame \d+ is damaged"),
        "pqf": Want(0), "vs": Want("ok|frame", frames=8),
    },
    "flip.264": {
        "run": Want(3, r"frame \d+ is damaged", frames=8, out=".mkv"), "eval": Want(3, r"frame \d+ is damaged"),
        "pqf": Want(0), "vs": Want("ok|frame", frames=8),
    },
    "noparams.hevc": {
        "run": Want(2, r"no frame could be decoded \(8 frames lost\)"), "eval": Want(2, "no frame could be decoded"),
        "pqf": Want(2, "QPs unreadable and the stream does not decode; try --fallback bits"),
        "pqf-bits": Want(3, r"QP unknown for 8 of 8 frames .*PQFs from the bits fallback"),
        "vs": Want("source", "Indexing of .* failed"),
    },
    "noparams.264": {
        "run": Want(2, "no frame could be decoded"), "eval": Want(2, "no frame could be decoded"),
        "pqf": Want(2, "cannot decode"), "pqf-bits": Want(3, "QP unknown for 8 of 8 frames"),
        "vs": Want("source", "Couldn't open"),
    },
    "text.mkv": {
        "eval": Want(2, "not a video file FFmpeg can read"), "pqf": Want(2, "not a raw H.264/HEVC/VVC"),
        "vs": Want("source", "Couldn't open"),
    },
    "still.png": {
        "eval": Want(2, r"still image \(PNG\)"), "pqf": Want(2, "not a raw H.264/HEVC/VVC"),
        "vs": Want("refuse", "does not take RGB24"),
    },
    "audio.mka": {
        "eval": Want(2, r"no video stream in .* \(it holds audio\)"), "pqf": Want(2, "not a raw H.264/HEVC/VVC"),
        "vs": Want("source", "Invalid track index"),
    },
    "odd_417x241.y4m": {
        "run": Want(0, frames=1), "eval": Want(0), "pqf": Want(2, "not a raw"),
        # VapourSynth 4:2:0 clips have even sizes: BestSource crops to 416x240; a 1-frame clip
        # replicates its one frame across STDF's window, as `vsqe run` does.
        "vs": Want("ok", frames=1),
    },
    "odd_417x241.mkv": {
        "run": Want(2, "x265 cannot encode 417x241 yuv420p: it needs even width and height", out=".mkv"),
        "eval": Want(0), "pqf": Want(2, "not a raw"),
    },
    "10bit.hevc": {
        "run": Want(0, frames=4, out=".mkv"), "eval": Want(0), "pqf": Want(0), "vs": Want("ok", frames=4),
    },
    "422.mkv": {
        "run": Want(0, frames=4), "eval": Want(0), "pqf": Want(0), "vs": Want("refuse", "does not take YUV422P8"),
    },
    "444.hevc": {
        "run": Want(0, frames=4, out=".mkv"), "eval": Want(0), "pqf": Want(0), "vs": Want("refuse", "does not take YUV444P8"),
    },
    "422.y4m": {
        "run": Want(0, frames=3), "eval": Want(0), "vs": Want("refuse", "does not take YUV422P8"),
    },
    "444p10.y4m": {
        "run": Want(0, frames=3, out=".mkv"), "eval": Want(0), "vs": Want("refuse", "does not take YUV444P10"),
    },
    "vfr.mkv": {
        "run": Want(0, frames=8, out=".mkv"), "eval": Want(0), "pqf": Want(0), "vs": Want("ok", frames=8),
    },
    "sizechange.hevc": {
        "run": Want(2, "frame 4 changes the video from 96x64 yuv420p to 64x48 yuv420p"),
        "eval": Want(2, "frame 4 changes the video"), "pqf": Want(0),
        "vs": Want("refuse", "variable-format or variable-size clips are not supported"),
    },
    "one.hevc": {
        "run": Want(0, frames=1), "eval": Want(0), "pqf": Want(0),
        "vs": Want("ok", frames=1),
    },
    "two.264": {
        "run": Want(0, frames=2), "eval": Want(0), "pqf": Want(0), "vs": Want("ok", frames=2),
    },
    "huge.y4m": {
        "run": Want(2, r"frame size 60000x60000 is too large"), "eval": Want(2, "frame size 60000x60000 is too large"),
        "pqf": Want(2, "not a raw"), "vs": Want("source", "Couldn't open"),
    },
}

PAIRS = [(name, fe) for name, fes in EXPECT.items() for fe in fes]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_file) -> dict[str, Case]:
    return build_corpus(tmp_path_factory.mktemp("badinputs"), shared_file("city_416x240.y4m"))


def _listing(folder: Path) -> set[str]:
    return set(os.listdir(folder))


def _cli(capsys, args: list[str]) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # usage errors only; never expected here
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.err


def _check_messages(err: str, want: Want) -> None:
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("vsqe: error: ")]
    if want.code == 0:
        assert not errors, err
        assert not [line for line in lines if "warning" in line and "RANDOM weights" not in line], err
        return
    # One error line, the last one; a problem in the input is named in it or in a warning before it.
    assert len(errors) == 1 and lines[-1] == errors[0], err
    if want.text:
        assert re.search(want.text, err), (want.text, err)
    if want.code == 3:
        assert re.search(r"frames? (from )?\d+", err), err  # the warning names the frame(s)


def _output_frames(path: Path) -> list:
    with open_video(path) as reader:
        return list(reader)


def _same_chroma(src: list, out: list) -> bool:
    return all(np.array_equal(a.planes[p], b.planes[p]) for a, b in zip(src, out) for p in (1, 2))


def _replicated(src: list, out: list) -> bool:
    """A clip shorter than the window: each frame's window is clipped to the clip (the replicate
    rule at every clip's edges), e.g. a 1-frame video feeds the model its frame 7 times."""
    from vsqe.pipeline.enhancer import Enhancer
    from vsqe.pipeline.window import window_indices

    enhancer = Enhancer("stdf", require_weights=False)
    want = enhancer.enhance_window([src[i] for i in window_indices(0, 3, len(src))])
    return np.array_equal(out[0].planes[0], want.planes[0])


# What else a successful run must keep, beyond the exit code: (input frames, output frames) -> bool.
RUN_CHECKS = {
    "vfr.mkv": lambda src, out: [f.pts * f.time_base * 1000 for f in out] == [0, 40, 120, 130, 250, 260, 400, 440],
    "10bit.hevc": lambda src, out: out[0].fmt.bit_depth == 10,  # 10-bit in, 10-bit out (x265 Main10)
    "odd_417x241.y4m": lambda src, out: out[0].planes[1].shape == (121, 209) and _same_chroma(src, out),
    "422.y4m": lambda src, out: out[0].fmt.chroma == "422" and out[0].planes[1].shape == (64, 48) and _same_chroma(src, out),
    "444p10.y4m": lambda src, out: (out[0].fmt.chroma, out[0].fmt.bit_depth) == ("444", 10),
    "422.mkv": lambda src, out: out[0].fmt.chroma == "422" and _same_chroma(src, out),
    "444.hevc": lambda src, out: out[0].fmt.chroma == "444",
    "one.hevc": _replicated,
    "two.264": _replicated,
}


@pytest.mark.parametrize("name,front", [p for p in PAIRS if p[1] == "run"])
def test_vsqe_run(corpus, capsys, tmp_path, name, front) -> None:
    case, want = corpus[name], EXPECT[name]["run"]
    before_input = case.path.read_bytes()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("untouched")
    out = folder / ("o" + want.out)
    extra = ("--preset", "ultrafast") if want.out == ".mkv" else ()
    code, err = _cli(capsys, ["run", case.path, out, *UNTRAINED, *extra])
    assert code == want.code, err
    _check_messages(err, want)
    assert case.path.read_bytes() == before_input
    if code in (0, 3):
        assert _listing(folder) == {"keep.txt", out.name}
        frames = _output_frames(out)
        assert len(frames) == want.frames
        assert f"{want.frames} frames in" in err  # the summary counts what was written
        if name in RUN_CHECKS:
            assert RUN_CHECKS[name](_output_frames(case.path), frames), name
    else:
        assert _listing(folder) == {"keep.txt"}  # refused: nothing written, no temporary file left


@pytest.mark.parametrize("name,front", [p for p in PAIRS if p[1] == "eval"])
def test_vsqe_eval(corpus, capsys, tmp_path, name, front) -> None:
    case, want = corpus[name], EXPECT[name]["eval"]
    ref = case.ref or (case.path if want.code == 0 else corpus["good.hevc"].ref)
    csv = tmp_path / "frames.csv"
    code, err = _cli(capsys, ["eval", "--ref", ref, "--dist", case.path, "--csv", csv])
    assert code == want.code, err
    _check_messages(err, want)
    if code in (0, 3):
        assert _listing(tmp_path) == {"frames.csv"} and csv.read_text().startswith("frame,type,dist_y")
    else:
        assert _listing(tmp_path) == set()


def test_eval_refuses_a_bad_reference_too(corpus, capsys, tmp_path) -> None:
    for ref, text in [("huge.y4m", "too large"), ("audio.mka", "no video stream"), ("empty.y4m", "empty")]:
        code, err = _cli(capsys, ["eval", "--ref", corpus[ref].path, "--dist", corpus["good.hevc"].path,
                                  "--csv", tmp_path / "f.csv"])
        assert code == 2 and text in err and err.count("\n") == 1, err
    assert _listing(tmp_path) == set()


@pytest.mark.parametrize("name,front", [p for p in PAIRS if p[1].startswith("pqf")])
def test_vsqe_pqf(corpus, capsys, tmp_path, name, front) -> None:
    case, want = corpus[name], EXPECT[name][front]
    csv = tmp_path / "frames.csv"
    extra = ["--fallback", "bits"] if front == "pqf-bits" else []
    code, err = _cli(capsys, ["pqf", case.path, "--csv", csv, *extra])
    assert code == want.code, err
    if want.code == 0:
        assert "vsqe: error" not in err, err
    else:
        errors = [line for line in err.splitlines() if line.startswith("vsqe: error: ")]
        assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
        assert re.search(want.text, errors[0]), err
    if code in (0, 3):
        assert _listing(tmp_path) == {"frames.csv"} and csv.read_text().startswith("frame,poc,type,qp")
    else:
        assert _listing(tmp_path) == set()


def test_pqf_bad_reference_is_one_line(corpus, capsys, tmp_path) -> None:
    for ref in ("audio.mka", "text.mkv"):
        code, err = _cli(capsys, ["pqf", corpus["good.hevc"].path, "--ref", corpus[ref].path])
        assert code == 2 and err.count("vsqe: error:") == 1 and "internal error" not in err, err


@pytest.mark.parametrize("name,front", [p for p in PAIRS if p[1] == "vs"])
def test_vapoursynth(corpus, name, front) -> None:
    """bs.VideoSource -> vsqe.vs.enhance: only vs.Error ever escapes, vsqe's own refusals are one
    line starting "vsqe: ", and an accepted clip keeps its format, size and length."""
    vs = pytest.importorskip("vapoursynth", reason="VapourSynth is not installed (make setup installs it)")
    import vsqe.vs

    case, want = corpus[name], EXPECT[name]["vs"]
    listing = _listing(case.path.parent)
    try:
        clip = vs.core.bs.VideoSource(source=str(case.path))
    except vs.Error as exc:
        assert want.code == "source", exc
        assert re.search(want.text, str(exc)), exc
        return
    finally:
        assert _listing(case.path.parent) == listing  # BestSource keeps its index elsewhere
    assert want.code != "source"
    if want.frames is not None:
        assert clip.num_frames == want.frames
    try:
        out = vsqe.vs.enhance(clip, allow_untrained=True)
    except vs.Error as exc:
        message = str(exc)
        assert want.code == "refuse", message
        assert message.startswith("vsqe: ") and "\n" not in message and re.search(want.text, message), message
        return
    assert want.code in ("ok", "ok|frame")
    assert (out.format.id, out.width, out.height, out.num_frames) == (clip.format.id, clip.width, clip.height, clip.num_frames)
    for n in (0, out.num_frames - 1):
        try:
            frame = out.get_frame(n)
        except vs.Error as exc:  # the source could not deliver the frame (BestSource on damaged data)
            assert want.code == "ok|frame" and "VideoSource" in str(exc), exc
            continue
        assert np.asarray(frame[0]).shape == (clip.height, clip.width)


def test_vapoursynth_y4m_with_a_huge_header_is_refused_by_the_source(corpus) -> None:
    """No allocation of the claimed 5.4 GB: BestSource refuses the y4m (FFmpeg checks the size)."""
    vs = pytest.importorskip("vapoursynth")
    with pytest.raises(vs.Error):
        vs.core.bs.VideoSource(source=str(corpus["huge.y4m"].path))


def markdown_table() -> str:
    """The table of docs/reliability.md, from EXPECT."""

    def cell(w: Want | None, front: str) -> str:
        if w is None:
            return "—"
        if front == "vs":
            return {"ok": "enhanced", "source": "bs refuses (vs.Error)", "refuse": "vs.Error (vsqe)",
                    "ok|frame": "enhanced; bs may fail a frame"}[w.code]
        text = {0: "0", 2: "2 refused", 3: "3 conceal+warn"}[w.code]
        return text
    fronts = ["run", "eval", "pqf", "vs"]
    lines = ["| input | " + " | ".join(fronts) + " |", "|---|" + "---|" * len(fronts)]
    for name, fes in EXPECT.items():
        lines.append(f"| `{name}` | " + " | ".join(cell(fes.get(f), f) for f in fronts) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
