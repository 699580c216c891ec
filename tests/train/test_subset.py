"""`vsqe data subset`: crops of a built data folder that the samplers read unchanged."""
import json
import shutil

import numpy as np
import pytest

from vsqe.data.subset import SubsetConfig, make_subset
from vsqe.errors import InputError


def _copy_clip(src_dir, dst_dir, clip, new_id):
    """A second clip in a data folder: the same arrays under another id (for order/skip tests)."""
    entry = json.loads(json.dumps(clip))
    entry["id"] = new_id
    entry["raw"] = f"clips/{new_id}.raw.npy"
    shutil.copy(src_dir / clip["raw"], dst_dir / entry["raw"])
    for name, e in entry["encodes"].items():
        e["file"] = f"clips/{new_id}.{name}.npy"
        shutil.copy(src_dir / clip["encodes"][name]["file"], dst_dir / e["file"])
    return entry


def test_subset_crops_what_it_says(tiny_data, tmp_path):
    src, _ = tiny_data
    m = make_subset(SubsetConfig(src=src, out=tmp_path / "sub", crop=64, frames=5, seed=3))
    assert m["num_clips"] == 1 and m["num_frames"] == 5 and m["clip_frames"] == 5
    clip = m["clips"][0]
    cut = clip["subset_of"]
    assert (clip["width"], clip["height"], clip["frames"]) == (64, 64, 5)
    assert cut["x0"] % 8 == 0 and cut["y0"] % 8 == 0 and cut["t0"] == 0
    full = json.loads((src / "manifest.json").read_text())["clips"][0]
    region = (slice(0, 5), slice(cut["y0"], cut["y0"] + 64), slice(cut["x0"], cut["x0"] + 64))
    assert np.array_equal(np.load(tmp_path / "sub" / clip["raw"]), np.load(src / full["raw"])[region])
    enc, enc_full = clip["encodes"]["x265-ldp-qp37"], full["encodes"]["x265-ldp-qp37"]
    assert np.array_equal(np.load(tmp_path / "sub" / enc["file"]), np.load(src / enc_full["file"])[region])
    assert enc["frame_qps"] == enc_full["frame_qps"][:5] == [37, 40, 39, 40, 38]
    assert "y_psnr_mean" not in enc  # the whole frame's figure, not this crop's
    assert json.loads((tmp_path / "sub" / "manifest.json").read_text())["subset"]["taken"] == 1


def test_samplers_read_a_subset(tiny_data, tmp_path):
    from vsqe.train.sequences import SegmentSampler
    from vsqe.train.triplets import TripletSampler

    src, _ = tiny_data
    make_subset(SubsetConfig(src=src, out=tmp_path / "sub", crop=64, frames=8))
    x, y = SegmentSampler(tmp_path / "sub", frames=4, patch=64, codec_weights={"x265-ldp": 1.0}).batch(2)
    assert tuple(x.shape) == tuple(y.shape) == (2, 4, 1, 64, 64)
    x, y = TripletSampler(tmp_path / "sub", role="nonpqf", patch=64, codec_weights={"x265-ldp": 1.0}).batch(2)
    assert tuple(x.shape) == (2, 3, 1, 64, 64)


def test_budget_and_skip_give_disjoint_subsets(tiny_data, tmp_path):
    src, _ = tiny_data
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    clip = json.loads((src / "manifest.json").read_text())["clips"][0]
    clips = [_copy_clip(src, data, clip, f"c{i}") for i in range(4)]
    (data / "manifest.json").write_text(json.dumps({"format": "vsqe-train-pairs/1", "clips": clips, "skipped": []}))
    one_clip_mib = 64 * 64 * 4 * 2 / 2**20  # crop x frames x (raw + one encode)
    first = make_subset(SubsetConfig(src=data, out=tmp_path / "a", crop=64, frames=4, max_mib=2.5 * one_clip_mib))
    assert first["num_clips"] == 2
    second = make_subset(SubsetConfig(src=data, out=tmp_path / "b", crop=64, frames=4, max_mib=2.5 * one_clip_mib,
                                      skip=first["subset"]["next_skip"]))
    ids_a = {c["id"] for c in first["clips"]}
    ids_b = {c["id"] for c in second["clips"]}
    assert len(ids_b) == 2 and not ids_a & ids_b


def test_refusals(tiny_data, tmp_path):
    src, _ = tiny_data
    with pytest.raises(InputError, match="no manifest"):
        make_subset(SubsetConfig(src=tmp_path, out=tmp_path / "x"))
    with pytest.raises(InputError, match="must not be the source"):
        make_subset(SubsetConfig(src=src, out=src))
    with pytest.raises(InputError, match="no clip"):
        make_subset(SubsetConfig(src=src, out=tmp_path / "y", crop=64, frames=4, max_mib=0.001))
    with pytest.raises(InputError, match="no clip"):
        make_subset(SubsetConfig(src=src, out=tmp_path / "z", crop=64, frames=4, codecs=("x264",)))
    with pytest.raises(InputError, match="--crop"):
        make_subset(SubsetConfig(src=src, out=tmp_path / "w", crop=60))


def test_subset_cli_one_line(tiny_data, tmp_path, capsys):
    from vsqe.train.cli import main

    src, _ = tiny_data
    assert main(["data", "subset", "--data", str(src), "--out", str(tmp_path / "s"), "--crop", "64", "--frames", "4"]) == 0
    assert "1 clips, 4 frames" in capsys.readouterr().out
    assert main(["data", "subset", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "t")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("vsqe: error: no manifest.json") and "\n" not in err
