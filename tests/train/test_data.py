import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vsqe.data.codec import ldp_qps


def test_ldp_schedule():
    assert ldp_qps(37, 9) == [37, 40, 39, 40, 38, 40, 39, 40, 38]


def test_build_tiny_manifest(tiny_data):
    out, manifest = tiny_data
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["num_clips"] == 1 == len(on_disk["clips"])
    clip = on_disk["clips"][0]
    assert (clip["width"], clip["height"], clip["frames"]) == (128, 128, 8)
    raw = np.load(out / clip["raw"])
    enc = clip["encodes"]["x265-ldp-qp37"]
    dec = np.load(out / enc["file"])
    assert raw.shape == dec.shape == (8, 128, 128) and raw.dtype == dec.dtype == np.uint8
    assert enc["frame_qps"] == [37, 40, 39, 40, 38, 40, 39, 40]
    assert len(enc["y_psnr"]) == 8 and 20 < enc["y_psnr_mean"] < 50
    # limited-range levels: the Y samples stay within 16..235
    assert raw.min() >= 16 and raw.max() <= 235
    assert "synthetic_motion" in clip and clip["source"].endswith("street.png")


def test_bad_sources_named_and_skipped(tmp_path, shared_data):
    if shutil.which("x265") is None:
        pytest.skip("x265 not installed")
    from vsqe.data.build import BuildConfig, build_dataset

    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "empty").mkdir()
    (src / "garbage.jpg").write_bytes(b"not a jpeg at all")
    Image.new("RGB", (40, 30), (90, 120, 30)).save(src / "tiny.png")
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 100)
    (src / "cityCC0.mpg").write_bytes(b"held out by name")
    lines = []
    cfg = BuildConfig(out=tmp_path / "out", codecs=("x265-ldp",), clip_frames=8, sizes=((128, 128),),
                      clips_per_photo=1, min_size=64, min_photo_pixels=0, log=lines.append)
    m = build_dataset([src, tmp_path / "empty", tmp_path / "missing"], cfg)
    assert m["num_clips"] == 0
    reasons = {s["source"].rsplit("/", 1)[-1]: s["reason"] for s in m["skipped"]}
    assert "unreadable image" in reasons["garbage.jpg"]
    assert "smaller than the 64px patch size" in reasons["tiny.png"]
    assert "video" in reasons["broken.mp4"] or "decode" in reasons["broken.mp4"]
    assert reasons["cityCC0.mpg"].startswith("held out")
    assert "no photos or videos" in reasons["empty"]
    assert "not a readable folder" in reasons["missing"]
    # every problem is one line in the log
    assert all("\n" not in line for line in lines)
    assert any("garbage.jpg" in line for line in lines)


def _pqf_gap(psnr: np.ndarray) -> float:
    """Mean Y-PSNR of the PQFs (POC 4, 8, ...) minus that of the other P frames."""
    idx = np.arange(len(psnr))
    return float(psnr[(idx > 0) & (idx % 4 == 0)].mean() - psnr[(idx > 0) & (idx % 4 != 0)].mean())


def test_hm_lambda_file_scales_only_the_non_pqf_qps():
    from vsqe.data.codec import HM_LAMBDA_FACTOR, hm_lambda_file

    values = [float(v) for v in hm_lambda_file(37).splitlines() if v and not v.startswith("#")]
    assert len(values) == 140  # x265's lambda and lambda2 tables, QP 0..69
    lam, lam2 = values[:70], values[70:]
    for q in range(70):
        base = 2 ** (q / 6 - 2)
        f = HM_LAMBDA_FACTOR if q in (39, 40) else 1.0
        assert lam[q] == pytest.approx(base * f ** 0.5, rel=1e-3)
        assert lam2[q] == pytest.approx(0.85 * base * base * f, rel=1e-3)


def test_x265_ldp_hm_deepens_the_dip_between_pqfs(tmp_path, shared_data):
    """The HM-like encode of a real clip keeps the QP schedule and drops the non-PQFs further below
    the PQFs than the plain x265 LDP encode does (HM's city: 0.65 dB; plain x265: 0.42)."""
    if shutil.which("x265") is None:
        pytest.skip("x265 not installed")
    from vsqe.data.codec import decode_luma, encode
    from vsqe.train.validate import read_y4m_luma

    y4m = shared_data / "city_416x240.y4m"
    raw = read_y4m_luma(y4m).astype(np.float64)
    gaps = {}
    for codec in ("x265-ldp", "x265-ldp-hm"):
        out_dir = tmp_path / codec
        out_dir.mkdir()
        bitstream, qps = encode(codec, y4m, out_dir, 37, len(raw))
        assert qps == ldp_qps(37, len(raw))
        dec = decode_luma(bitstream).astype(np.float64)
        psnr = 10 * np.log10(255 ** 2 / ((dec - raw) ** 2).mean(axis=(1, 2)))
        gaps[codec] = _pqf_gap(psnr)
    assert gaps["x265-ldp-hm"] > gaps["x265-ldp"] + 0.15, gaps
