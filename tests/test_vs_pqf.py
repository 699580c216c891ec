"""The VapourSynth filter with MFQEv2: random access in any order equals `vsqe run`'s stream bit
for bit, flags from pqf_source / every:N / the estimator, and the fallback warning."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

vs = pytest.importorskip("vapoursynth", reason="VapourSynth is not installed (make setup installs it)")

import vsqe.vs  # noqa: E402
from vsqe.cli import main  # noqa: E402
from vsqe.io.decode import open_video  # noqa: E402
from vsqe.io.formats import frames_to_rgb_tensor, rgb_tensor_to_planes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "pipeline"))
from pqf_weights import save_random_mfqev2  # noqa: E402

core = vs.core
STREAM = "city_416x240_hm_ldp_qp37.hevc"
FRAMES = 9
X0, Y0, W, H = 160, 88, 96, 64


@pytest.fixture(scope="module")
def setup(shared_file, tmp_path_factory):
    """A 96x64 cut of the HM stream's first frames: as y4m (for vsqe run) and as an RGBS clip made
    with vsqe's own YUV -> RGB conversion (what `vsqe run` feeds the model), plus two weight sets."""
    folder = tmp_path_factory.mktemp("vs_pqf")
    with open_video(shared_file(STREAM)) as reader:
        frames = []
        for _, f in zip(range(FRAMES), reader):
            y, u, v = f.planes
            frames.append(f.with_planes([np.ascontiguousarray(y[Y0 : Y0 + H, X0 : X0 + W]),
                                         np.ascontiguousarray(u[Y0 // 2 : (Y0 + H) // 2, X0 // 2 : (X0 + W) // 2]),
                                         np.ascontiguousarray(v[Y0 // 2 : (Y0 + H) // 2, X0 // 2 : (X0 + W) // 2])]))
    y4m = folder / "cut.y4m"
    with open(y4m, "wb") as out:
        out.write(f"YUV4MPEG2 W{W} H{H} F25:1 Ip A1:1 C420jpeg\n".encode())
        for f in frames:
            out.write(b"FRAME\n" + b"".join(p.tobytes() for p in f.planes))
    rgb = [frames_to_rgb_tensor([f])[0, 0].numpy() for f in frames]
    blank = core.std.BlankClip(format=vs.RGBS, width=W, height=H, length=FRAMES)

    def fill(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        out = f.copy()
        for p in range(3):
            np.copyto(np.asarray(out[p]), rgb[n][p])
        return out

    clip = blank.std.ModifyFrame(clips=blank, selector=fill)
    weights = (save_random_mfqev2(folder / "a.safetensors", 1), save_random_mfqev2(folder / "b.safetensors", 2))
    return frames, y4m, clip, weights


def _yuv(out: vs.VideoNode, n: int, like) -> list[np.ndarray]:
    f = out.get_frame(n)
    rgb = torch.from_numpy(np.stack([np.array(f[p], copy=True) for p in range(3)]))
    return rgb_tensor_to_planes(rgb, like)


def test_random_access_in_any_order_equals_vsqe_run_bit_for_bit(setup, tmp_path, capsys):
    frames, y4m, clip, (a, b) = setup
    out_y4m = tmp_path / "run.y4m"
    assert main(["run", str(y4m), str(out_y4m), "--model", "mfqev2", "--weights", str(a), "--pqf-weights", str(b),
                 "--pqf", "every:4", "--no-progress", "-q"]) == 0, capsys.readouterr().err
    with open_video(out_y4m) as reader:
        streamed = [f.planes for f in reader]
    assert len(streamed) == FRAMES
    for seed in (None, 7):  # forward, then shuffled on a fresh node (nothing from VapourSynth's cache)
        out = vsqe.vs.mfqev2(clip, weights=str(a), pqf_weights=str(b), pqf="every:4")
        order = list(range(FRAMES))
        if seed is not None:
            random.Random(seed).shuffle(order)
        for n in order:
            got = _yuv(out, n, frames[n])
            for p in range(3):
                assert np.array_equal(got[p], streamed[n][p]), (seed, n, p)


def test_pqf_source_gives_the_qp_pqfs(setup, shared_file):
    """The HM stream's QP PQFs are 0, 4, 8: the same frames as every:4, so the same output."""
    _, _, clip, (a, b) = setup
    from_qp = vsqe.vs.enhance(clip, model="mfqev2", weights=str(a), pqf_weights=str(b), pqf_source=str(shared_file(STREAM)))
    every = vsqe.vs.enhance(clip, model="mfqev2", weights=str(a), pqf_weights=str(b), pqf="every:4")
    for n in (8, 4, 5):
        assert np.array_equal(np.asarray(from_qp.get_frame(n)[0]), np.asarray(every.get_frame(n)[0])), n


def test_pqf_source_without_parameter_sets_falls_back_with_one_warning(setup, shared_file, tmp_path, capfd):
    _, _, clip, (a, _) = setup
    data = shared_file(STREAM).read_bytes()
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\x00\x00\x01"]
    cut = bytearray()
    for k, s in enumerate(starts):
        nal = data[s : starts[k + 1] if k + 1 < len(starts) else len(data)]
        if (nal[3] >> 1) & 0x3F not in (32, 33, 34):  # drop VPS, SPS, PPS
            cut += nal
    source = tmp_path / "no_params.hevc"
    source.write_bytes(bytes(cut))
    out = vsqe.vs.enhance(clip[:5], model="mfqev2", weights=str(a), pqf_source=str(source))
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "no-reference estimator" in line]
    assert len(warnings) == 1 and "frame 0 (display order): slice QP unknown" in warnings[0], err
    assert "Traceback" not in err
    assert np.asarray(out.get_frame(2)[0]).shape == (H, W)


def test_pqf_options_are_checked_at_evaluation_time(setup):
    _, _, clip, (a, _) = setup
    with pytest.raises(vs.Error, match="pqf='qp' needs pqf_source"):
        vsqe.vs.mfqev2(clip, weights=str(a), pqf="qp")
    with pytest.raises(vs.Error, match="pqf must be auto, qp, estimate or every:N"):
        vsqe.vs.mfqev2(clip, weights=str(a), pqf="every:0")
    with pytest.raises(vs.Error, match="does not use PQFs"):
        vsqe.vs.enhance(core.std.BlankClip(format=vs.YUV420P8, width=32, height=32, length=3), allow_untrained=True,
                        pqf="every:4")
    with pytest.raises(vs.Error, match="look-ahead must be at least 1"):
        vsqe.vs.mfqev2(clip, weights=str(a), pqf_lookahead=0)
