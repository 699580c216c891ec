"""`vsqe data subset`: a smaller training-data folder cut from a `vsqe data build` folder.

Why: a lent GPU machine receives at most a few tens of MiB per call (docs/training.md, "Training
on a lent GPU"), while the full build is gigabytes. A subset keeps the most variety per byte:
every selected clip contributes one crop (a region on the 8x8 grid, so the codec's block grid
keeps its phase) over its first `frames` frames (frame 0 stays the intra frame and the per-frame
QPs keep the low-delay GOP's phase), for the chosen encodes only. The result is an ordinary data
folder (clips/*.npy, clips/*.json, manifest.json) that every sampler reads unchanged; each clip
records where it was cut from (`subset_of`).

Clips are taken in a seeded random order until the uncompressed size reaches `max_mib`; `skip`
leaves out the first clips of that order, so that `--skip N` (the `next_skip` the manifest
records) with the same seed gives the next, disjoint subset.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsqe.errors import InputError


@dataclass
class SubsetConfig:
    src: Path
    out: Path
    crop: int = 256
    frames: int = 16
    codecs: tuple[str, ...] = ("x265-ldp",)
    max_mib: float = 100.0
    skip: int = 0
    seed: int = 0


def _load_manifest(src: Path) -> dict:
    path = src / "manifest.json"
    if not path.is_file():
        raise InputError(f"no manifest.json in {src} (run `vsqe data build` first)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"unreadable manifest {path}: {exc}") from None


def _crop_box(rng: np.random.Generator, width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """(x0, y0, w, h): a crop of at most crop x crop whose origin lies on the 8x8 grid."""
    w, h = min(crop, width) // 8 * 8, min(crop, height) // 8 * 8
    x0 = int(rng.integers((width - w) // 8 + 1)) * 8
    y0 = int(rng.integers((height - h) // 8 + 1)) * 8
    return x0, y0, w, h


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, np.ascontiguousarray(array))
    os.replace(tmp, path)


def make_subset(cfg: SubsetConfig) -> dict:
    """Writes the subset folder and returns its manifest."""
    if cfg.crop < 64 or cfg.crop % 8:
        raise InputError(f"--crop must be a multiple of 8 and at least 64, got {cfg.crop}")
    if cfg.frames < 2:
        raise InputError(f"--frames must be at least 2, got {cfg.frames}")
    if Path(cfg.out).resolve() == Path(cfg.src).resolve():
        raise InputError("--out must not be the source data folder")
    manifest = _load_manifest(cfg.src)
    clips = sorted(manifest["clips"], key=lambda c: c["id"])
    rng = np.random.default_rng(cfg.seed)
    order = [clips[i] for i in rng.permutation(len(clips))][cfg.skip :]
    (cfg.out / "clips").mkdir(parents=True, exist_ok=True)
    budget = cfg.max_mib * 2**20
    used = 0
    written = []
    next_skip = len(clips)
    for i, clip in enumerate(order):
        encodes = {k: e for k, e in clip["encodes"].items() if e["codec"] in cfg.codecs}
        if not encodes or clip["frames"] < cfg.frames:
            continue
        x0, y0, w, h = _crop_box(rng, clip["width"], clip["height"], cfg.crop)
        size = w * h * cfg.frames * (1 + len(encodes))
        if used + size > budget:
            next_skip = cfg.skip + i
            break
        region = (slice(0, cfg.frames), slice(y0, y0 + h), slice(x0, x0 + w))
        raw = np.load(cfg.src / clip["raw"], mmap_mode="r")[region]
        entry = {k: v for k, v in clip.items() if k not in ("raw", "encodes")}
        entry.update(width=w, height=h, frames=cfg.frames, raw=f"clips/{clip['id']}.raw.npy",
                     subset_of={"data": str(cfg.src), "x0": x0, "y0": y0, "t0": 0})
        _save_npy(cfg.out / entry["raw"], raw)
        entry["encodes"] = {}
        for name, e in sorted(encodes.items()):
            dec = np.load(cfg.src / e["file"], mmap_mode="r")[region]
            sub = dict(e, file=f"clips/{clip['id']}.{name}.npy")
            for key in ("frame_qps", "y_psnr"):  # per-frame lists follow the frames kept
                if isinstance(e.get(key), list):
                    sub[key] = e[key][: cfg.frames]
            sub.pop("y_psnr_mean", None)  # of the whole frame; not this crop's
            _save_npy(cfg.out / sub["file"], dec)
            entry["encodes"][name] = sub
        (cfg.out / "clips" / f"{clip['id']}.json").write_text(json.dumps(entry, indent=1))
        written.append(entry)
        used += size
    if not written:
        raise InputError(f"no clip of {cfg.src} fits: need encodes {', '.join(cfg.codecs)} and >= {cfg.frames} frames "
                         f"within --max-mib {cfg.max_mib}")
    out_manifest = {k: v for k, v in manifest.items() if k not in ("clips", "skipped")}
    out_manifest.update(
        num_clips=len(written), num_frames=int(sum(c["frames"] for c in written)), clips=written, skipped=[],
        codecs=list(cfg.codecs), clip_frames=cfg.frames,
        subset={"of": str(cfg.src), "crop": cfg.crop, "frames": cfg.frames, "seed": cfg.seed, "skip": cfg.skip,
                "taken": len(written), "bytes": used,
                "next_skip": next_skip},  # --skip for the next, disjoint subset
    )
    tmp = cfg.out / "manifest.json.tmp"
    tmp.write_text(json.dumps(out_manifest, indent=1))
    os.replace(tmp, cfg.out / "manifest.json")
    return out_manifest
