"""A tiny training set built once per session: one photo made from a dev-clip frame (a temporary
artefact: the dev clips never enter real training data) -> 8-frame 128x128 clip -> x265 LDP QP37.

And the scaffold the per-model training tests share (`train_scaffold`): train a few iterations on
that set, checkpoint, resume, export."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image

if TYPE_CHECKING:
    from vsqe.train.trainer import TrainConfig, Trainer


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


# TrainConfig fields every scaffold run shares: single-threaded, no validation unless a test asks,
# a log line per iteration and stats every 2 (so short runs exercise both), the tiny set's one codec.
SCAFFOLD_BASE = dict(warmup=2, threads=1, val_every=0, val_full_every=0, log_every=1, stats_every=2,
                     codec_weights={"x265-ldp": 1.0})


class TrainScaffold:
    """Short training runs of one model on the tiny data, each in its own folder under `root`.

    `base` holds that model's TrainConfig fields (model, batch, patch, ...); keyword arguments
    of each method override them for one run."""

    def __init__(self, data: Path, root: Path, **base) -> None:
        self.data = data
        self.root = root
        self.base = {**SCAFFOLD_BASE, **base}

    def config(self, name: str, iters: int, **kw) -> TrainConfig:
        from vsqe.train.trainer import TrainConfig

        return TrainConfig(data=str(self.data), out=str(self.root / name), iters=iters, **{**self.base, **kw})

    def train(self, name: str, iters: int, resume: bool = False, **kw) -> Trainer:
        """Trains (or resumes) the run in root/name up to `iters` iterations."""
        from vsqe.train.trainer import Trainer

        t = Trainer(self.config(name, iters, **kw), resume=resume, log=lambda m: None)
        t.run()
        return t

    def train_and_resume(self, iters: int = 3, **full_kw) -> tuple[Trainer, Trainer]:
        """An uninterrupted run of `iters` iterations (root/a, with `full_kw`), and a run stopped
        after iters-1 (its last checkpoint: a "kill") then resumed to `iters` (root/b)."""
        full = self.train("a", iters, **full_kw)
        self.train("b", iters - 1)
        resumed = self.train("b", iters, resume=True)
        return full, resumed

    @staticmethod
    def assert_resumed_exactly(full: Trainer, resumed: Trainer, iters: int = 3) -> None:
        """The resumed run is bit-identical to the uninterrupted one: weights, Adam moments, sampler."""
        assert resumed.iteration == full.iteration == iters
        sa, sb = full.model.state_dict(), resumed.model.state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
        oa, ob = full.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
        for k in oa:
            assert torch.equal(oa[k]["exp_avg"], ob[k]["exp_avg"])
        assert full.sampler.state_dict() == resumed.sampler.state_dict()

    @staticmethod
    def export(run: Trainer, dst: Path) -> Path:
        """Exports the run's last checkpoint to `dst` (inference weights) and returns `dst`."""
        from vsqe.train.export import export_checkpoint

        export_checkpoint(Path(run.cfg.out) / "last.pt", dst)
        return dst


@pytest.fixture
def train_scaffold(tiny_data, tmp_path) -> Callable[..., TrainScaffold]:
    """train_scaffold(**model_fields) -> a TrainScaffold on the tiny data under this test's tmp_path."""
    data, _ = tiny_data
    return lambda **base: TrainScaffold(data, tmp_path, **base)
