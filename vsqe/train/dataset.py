"""Patch sampling from a `vsqe data build` folder, with a sampler state that can be saved exactly.

A sample: a clip (weighted by its pixels), a codec (weighted), a centre frame t with its 7-frame
window (indices replicated at the clip ends, the STDF rule), a patch whose origin lies on the 8x8
grid (the codec's block grid keeps its phase), random flips / transpose and temporal reversal.
Near-flat patches and patches the codec left almost untouched are mostly rejected: they teach
nothing at QP 37; patches without a strong edge (a step of 40 levels) are kept half the time.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vsqe.errors import InputError
from vsqe.pipeline.window import window_indices


class PatchSampler:
    def __init__(
        self,
        data_dir: str | Path,
        patch: int = 96,
        radius: int = 3,
        codec_weights: dict[str, float] | None = None,
        seed: int = 0,
        flat_std: float = 4.0,
        flat_keep: float = 0.1,
        edge_level: float = 40.0,
        no_edge_keep: float = 0.5,
        max_clips: int | None = None,
        clip_ids: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        mpath = self.data_dir / "manifest.json"
        if not mpath.is_file():
            raise InputError(f"no manifest.json in {self.data_dir} (run `vsqe data build` first)")
        try:
            manifest = json.loads(mpath.read_text())
        except ValueError as exc:
            raise InputError(f"unreadable manifest {mpath}: {exc}") from None
        self.patch = patch
        self.radius = radius
        self.flat_std = flat_std
        self.flat_keep = flat_keep
        self.edge_level = edge_level
        self.no_edge_keep = no_edge_keep
        codec_weights = codec_weights or {"x265-ldp": 0.8, "x264": 0.2}
        self.clips: list[dict] = []
        wanted = set(clip_ids) if clip_ids is not None else None
        for c in sorted(manifest["clips"], key=lambda c: c["id"]):
            if wanted is not None and c["id"] not in wanted:
                continue
            if c["width"] < patch or c["height"] < patch:
                continue
            encs = [
                (name, e) for name, e in sorted(c["encodes"].items()) if codec_weights.get(e["codec"], 0) > 0
            ]
            if not encs:
                continue
            self.clips.append(
                {
                    "id": c["id"],
                    "raw": self.data_dir / c["raw"],
                    "encodes": [self.data_dir / e["file"] for _, e in encs],
                    # Per-frame QPs of each encode (display order): the PQF flags of triplet
                    # sampling (vsqe/train/triplets.py); None for manifests without them.
                    "enc_qps": [e.get("frame_qps") for _, e in encs],
                    "enc_w": np.array([codec_weights[e["codec"]] for _, e in encs], dtype=np.float64),
                    "frames": c["frames"],
                    "pixels": c["width"] * c["height"] * c["frames"],
                }
            )
            if max_clips is not None and len(self.clips) >= max_clips:
                break
        if not self.clips:
            raise InputError(f"no usable clips (>= {patch}px) in {self.data_dir}")
        w = np.array([c["pixels"] for c in self.clips], dtype=np.float64)
        self.clip_p = w / w.sum()
        self._arrays: dict[Path, np.ndarray] = {}
        self.rng = np.random.default_rng(seed)
        self.stats = {"drawn": 0, "rejected": 0}

    @property
    def clip_ids(self) -> list[str]:
        return [c["id"] for c in self.clips]

    def _arr(self, path: Path) -> np.ndarray:
        a = self._arrays.get(path)
        if a is None:
            a = np.load(path, mmap_mode="r")
            self._arrays[path] = a
        return a

    # The draws every sampler makes, in this order: clip, encode, (its own frame draw), origin.
    # Shared so that the clip/codec weighting and the 8x8 grid phase are one rule; the order of
    # RNG calls is part of exact resume and of tests/train's recorded sample-stream digest.
    def _draw_encode(self) -> tuple[dict, np.ndarray, int, np.ndarray]:
        """A clip (weighted by its pixels) and one of its encodes (weighted by codec): (clip, raw
        frames, encode index, decoded frames)."""
        rng = self.rng
        clip = self.clips[int(rng.choice(len(self.clips), p=self.clip_p))]
        k = int(rng.choice(len(clip["encodes"]), p=clip["enc_w"] / clip["enc_w"].sum()))
        return clip, self._arr(clip["raw"]), k, self._arr(clip["encodes"][k])

    def _draw_origin(self, h: int, w: int) -> tuple[int, int]:
        """A patch origin on the 8x8 grid (the codec's block grid keeps its phase)."""
        p = self.patch
        y0 = int(self.rng.integers((h - p) // 8 + 1)) * 8
        x0 = int(self.rng.integers((w - p) // 8 + 1)) * 8
        return y0, x0

    # --- exact resume -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # JSON-able: torch.load(weights_only=True) accepts it.
        return {"bit_generator": json.dumps(self.rng.bit_generator.state), "stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["bit_generator"])
        self.stats = dict(state["stats"])

    # --- sampling -----------------------------------------------------------------------------
    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One (window [T, P, P] uint8, target [P, P] uint8)."""
        rng = self.rng
        p = self.patch
        for _ in range(20):
            clip, raw, k, enc = self._draw_encode()
            t_len, h, w = raw.shape
            t = int(rng.integers(t_len))
            y0, x0 = self._draw_origin(h, w)
            target = np.asarray(raw[t, y0 : y0 + p, x0 : x0 + p])
            centre = np.asarray(enc[t, y0 : y0 + p, x0 : x0 + p])
            if self._keep(target, centre):
                break
        idx = window_indices(t, self.radius, t_len, "replicate")
        window = np.stack([np.asarray(enc[i, y0 : y0 + p, x0 : x0 + p]) for i in idx])
        return self._augment(window, target)

    def _augment(self, window: np.ndarray, target: np.ndarray, context: np.ndarray | None = None):
        """Temporal reversal of `window` [T, P, P] (for a triplet: left <-> right), flips and
        transpose of window and 2-D target alike; all keep the 8x8 grid phase. A `context` stack
        [T', P', P'] centred on the same patch (a teacher's input) gets the same four changes and
        is returned third; it draws nothing more from the RNG."""
        rng = self.rng
        ctx = context
        if rng.random() < 0.5:
            window = window[::-1]
            ctx = None if ctx is None else ctx[::-1]
        if rng.random() < 0.5:
            window, target = window[:, :, ::-1], target[:, ::-1]
            ctx = None if ctx is None else ctx[:, :, ::-1]
        if rng.random() < 0.5:
            window, target = window[:, ::-1, :], target[::-1, :]
            ctx = None if ctx is None else ctx[:, ::-1, :]
        if rng.random() < 0.5:
            window, target = window.transpose(0, 2, 1), target.T
            ctx = None if ctx is None else ctx.transpose(0, 2, 1)
        if context is None:
            return np.ascontiguousarray(window), np.ascontiguousarray(target)
        return np.ascontiguousarray(window), np.ascontiguousarray(target), np.ascontiguousarray(ctx)

    def _keep(self, target: np.ndarray, centre: np.ndarray) -> bool:
        """Whether to train on this patch (draws from the RNG only when a rule applies, so the
        sample stream of a run is the same as before this was factored out)."""
        rng = self.rng
        self.stats["drawn"] += 1
        flat = target.std() < self.flat_std
        untouched = np.abs(centre.astype(np.int16) - target).mean() < 0.5
        if (flat or untouched) and rng.random() > self.flat_keep:
            self.stats["rejected"] += 1
            return False
        # Strong edges carry the learnable artefacts (ringing, blocking beside them): patches
        # without one are kept only half the time.
        ti = target.astype(np.int16)
        edge = max(np.abs(np.diff(ti, axis=0)).max(), np.abs(np.diff(ti, axis=1)).max()) >= self.edge_level
        if not edge and rng.random() > self.no_edge_keep:
            self.stats["rejected"] += 1
            return False
        return True

    def _flip_stacks(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flips and transpose of two [T, P, P] stacks alike (samplers whose targets are stacks:
        clip segments, flow pairs); three RNG draws, in this order (part of exact resume)."""
        rng = self.rng
        if rng.random() < 0.5:
            a, b = a[:, :, ::-1], b[:, :, ::-1]
        if rng.random() < 0.5:
            a, b = a[:, ::-1, :], b[:, ::-1, :]
        if rng.random() < 0.5:
            a, b = a.transpose(0, 2, 1), b.transpose(0, 2, 1)
        return np.ascontiguousarray(a), np.ascontiguousarray(b)

    def _stacks_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y [n, T, 1, P, P] float in [0, 1] from n samples that are both [T, P, P] stacks."""
        xs, ys = zip(*(self.sample() for _ in range(n)))
        x = torch.from_numpy(np.stack(xs)).float().div_(255).unsqueeze(2)
        y = torch.from_numpy(np.stack(ys)).float().div_(255).unsqueeze(2)
        return x, y

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x [n, T, 1, P, P] float in [0, 1], y [n, 1, P, P]."""
        xs, ys = zip(*(self.sample() for _ in range(n)))
        x = torch.from_numpy(np.stack(xs)).float().div_(255).unsqueeze(2)
        y = torch.from_numpy(np.stack(ys)).float().div_(255).unsqueeze(1)
        return x, y
