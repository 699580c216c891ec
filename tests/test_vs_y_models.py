"""The VapourSynth filter with the Y-plane PQF and recurrent models (mfqev2-y, basicvsrpp-y): a
YUV clip's luma goes through the same Enhancer calls as `vsqe run`, chroma passes untouched, and
frames requested in any order equal `vsqe run`'s output bit for bit."""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

vs = pytest.importorskip("vapoursynth", reason="VapourSynth is not installed (make setup installs it)")

import vsqe.vs  # noqa: E402
from vsqe.io.decode import open_video  # noqa: E402

core = vs.core
STREAM = "city_416x240_hm_ldp_qp37.hevc"
FRAMES = 7
X0, Y0, W, H = 160, 88, 96, 64


@pytest.fixture(scope="module")
def cut_y4m(shared_file, tmp_path_factory) -> Path:
    """A 96x64 cut of the HM stream's first frames (a y4m: no slice QPs, so PQFs are estimated)."""
    path = tmp_path_factory.mktemp("vs_y_models") / "cut.y4m"
    with open_video(shared_file(STREAM)) as reader, open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{W} H{H} F25:1 Ip A1:1 C420jpeg\n".encode())
        for _, f in zip(range(FRAMES), reader):
            y, u, v = f.planes
            out.write(b"FRAME\n" + y[Y0 : Y0 + H, X0 : X0 + W].tobytes()
                      + u[Y0 // 2 : (Y0 + H) // 2, X0 // 2 : (X0 + W) // 2].tobytes()
                      + v[Y0 // 2 : (Y0 + H) // 2, X0 // 2 : (X0 + W) // 2].tobytes())
    return path


@pytest.mark.parametrize(
    ("model", "run_args", "vs_args"),
    [
        ("mfqev2-y", ["--pqf", "estimate", "--pqf-lookahead", "8"], {"pqf": "estimate", "pqf_lookahead": 8}),
        ("mfqev2-y", ["--pqf", "every:3"], {"pqf": "every:3", "pqf_lookahead": 6}),
        ("basicvsrpp-y", ["--segment-length", "3", "--segment-overlap", "2"], {"segment_length": 3, "segment_overlap": 2}),
    ],
)
def test_y_models_equal_vsqe_run_bit_for_bit(cut_y4m, tmp_path, model, run_args, vs_args):
    out_y4m = tmp_path / "run.y4m"
    result = subprocess.run(
        [sys.executable, "-m", "vsqe", "run", str(cut_y4m), str(out_y4m), "--model", model, "--allow-untrained",
         "--no-progress", *run_args],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    with open_video(out_y4m) as reader:
        want = [f.planes for f in reader]
    clip = core.bs.VideoSource(source=str(cut_y4m))
    out = vsqe.vs.enhance(clip, model=model, allow_untrained=True, **vs_args)
    assert (out.format.name, out.num_frames, len(want)) == ("YUV420P8", FRAMES, FRAMES)
    order = list(range(FRAMES))
    random.Random(3).shuffle(order)
    for n in order:
        got, src = out.get_frame(n), clip.get_frame(n)
        assert np.array_equal(np.asarray(got[0]), want[n][0]), (model, n)
        for p in (1, 2):  # chroma untouched
            assert np.array_equal(np.asarray(got[p]), np.asarray(src[p])), (model, n, p)
    assert not all(np.array_equal(np.asarray(out.get_frame(n)[0]), np.asarray(clip.get_frame(n)[0])) for n in range(FRAMES))
