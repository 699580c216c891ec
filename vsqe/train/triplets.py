"""(left PQF, frame, right PQF) patch triplets for training MFQEv2, from `vsqe data build` folders.

The triplets are the ones inference forms, so the network trains on what it will see:

* PQF flags of an encode: `vsqe.pipeline.pqf_schedule.qp_flags` on its per-frame QPs
  (`frame_qps` in the manifest), the rule `vsqe run` applies to slice-header QPs (peak_flags,
  radius 2, bounded plateaus). No second PQF rule exists here.
* References: `triplet_for(t, flags, default_lookahead(flags))`, the scheduler's random-access
  form, with its clip-start, clip-end and look-ahead rules.
* Roles: "nonpqf" samples only non-PQF frames t (the non-PQF network's inputs); "pqf" samples only
  PQFs, whose references are then the previous and next PQFs (the PQF network's inputs).

Everything else is PatchSampler's (clip weighted by pixels, codec weights, a patch on the 8x8 grid,
the flat/untouched/no-edge rejection rules, flips / transpose / temporal reversal - which swaps
the left and right references - and an RNG state that saves and restores exactly).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vsqe.errors import InputError
from vsqe.pipeline.pqf_schedule import default_lookahead, qp_flags, triplet_for
from vsqe.train.dataset import PatchSampler

ROLES = ("nonpqf", "pqf")


def encode_triplets(frame_qps: list[int]) -> tuple[list[bool], list[tuple[int, int]]]:
    """PQF flags and the (left, right) references of every frame of one encode, as inference
    pairs them when it reads these QPs from the slice headers."""
    flags = qp_flags(frame_qps)
    lookahead = default_lookahead(flags)
    return flags, [triplet_for(t, flags, lookahead) for t in range(len(flags))]


class TripletSampler(PatchSampler):
    def __init__(self, data_dir: str | Path, role: str = "nonpqf", **kwargs) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown PQF role {role!r} (one of {', '.join(ROLES)})")
        kwargs.setdefault("radius", 1)
        super().__init__(data_dir, **kwargs)
        self.role = role
        kept = []
        for clip in self.clips:
            refs, frames, weights = [], [], []
            for qps, w in zip(clip["enc_qps"], clip["enc_w"]):
                # An encode without per-frame QPs has no flags: it gets weight 0.
                flags, triplets = encode_triplets(qps) if qps and len(qps) == clip["frames"] else ([], [])
                wanted = [t for t, f in enumerate(flags) if f == (role == "pqf")]
                refs.append(triplets)
                frames.append(wanted)
                weights.append(float(w) if wanted else 0.0)
            if sum(weights) > 0:
                clip["enc_refs"], clip["enc_frames"] = refs, frames
                clip["enc_w"] = np.array(weights, dtype=np.float64)
                kept.append(clip)
        if not kept:
            raise InputError(f"no clip in {self.data_dir} has {role} frames with known per-frame QPs")
        self.clips = kept
        w = np.array([c["pixels"] for c in self.clips], dtype=np.float64)
        self.clip_p = w / w.sum()

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One (triplet [3, P, P] uint8 = left reference, frame, right reference; target [P, P])."""
        rng = self.rng
        p = self.patch
        for _ in range(20):
            clip, raw, k, enc = self._draw_encode()
            _, h, w = raw.shape
            frames = clip["enc_frames"][k]
            t = frames[int(rng.integers(len(frames)))]
            y0, x0 = self._draw_origin(h, w)
            target = np.asarray(raw[t, y0 : y0 + p, x0 : x0 + p])
            if self._keep(target, np.asarray(enc[t, y0 : y0 + p, x0 : x0 + p])):
                break
        left, right = clip["enc_refs"][k][t]
        window = np.stack([np.asarray(enc[i, y0 : y0 + p, x0 : x0 + p]) for i in (left, t, right)])
        self.last = (clip["id"], k, t, left, right)  # for tests and debugging
        return self._augment(window, target)
