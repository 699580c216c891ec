"""A tiny training set built once per session: one photo made from a dev-clip frame (a temporary
artefact: the dev clips never enter real training data) -> 8-frame 128x128 clip -> x265 LDP QP37."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image


def _photo(shared_data, path):
    from vsqe.train.validate import read_y4m_luma

    y = read_y4m_luma(shared_data / "city_416x240.y4m")[5].astype(np.float32)
    rgb = np.stack([y, np.roll(y, 3, 0), np.roll(y, 5, 1)], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, shared_data):
    if shutil.which("x265") is None:
        pytest.skip("x265 not installed (apt-get install -y x265)")
    from vsqe.data.build import BuildConfig, build_dataset

    root = tmp_path_factory.mktemp("tinydata")
    src = root / "src"
    src.mkdir()
    _photo(shared_data, src / "street.png")
    cfg = BuildConfig(
        out=root / "pairs", codecs=("x265-ldp",), clip_frames=8, sizes=((128, 128),), clips_per_photo=1,
        min_size=32, min_photo_pixels=0, log=lambda m: None,
    )
    manifest = build_dataset([src], cfg)
    return root / "pairs", manifest
