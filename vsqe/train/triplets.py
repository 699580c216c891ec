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

With a context (`context_radius` > 0) each sample also carries the consecutive decoded frames
t-r..t+r (`context_border`'s rule at the clip ends) around the same patch, `context_margin`
pixels wider on every side (edge pixels repeated outside the frame): a window model's input,
whose output becomes the target (knowledge distillation, `vsqe train --teacher`). The context
draws nothing from the RNG: the samples are the same with or without it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vsqe.errors import InputError
from vsqe.pipeline.pqf_schedule import default_lookahead, qp_flags, triplet_for
from vsqe.pipeline.window import window_indices
from vsqe.train.dataset import PatchSampler

ROLES = ("nonpqf", "pqf")


def encode_triplets(frame_qps: list[int]) -> tuple[list[bool], list[tuple[int, int]]]:
    """PQF flags and the (left, right) references of every frame of one encode, as inference
    pairs them when it reads these QPs from the slice headers."""
    flags = qp_flags(frame_qps)
    lookahead = default_lookahead(flags)
    return flags, [triplet_for(t, flags, lookahead) for t in range(len(flags))]


class TripletSampler(PatchSampler):
    def __init__(
        self,
        data_dir: str | Path,
        role: str = "nonpqf",
        context_radius: int = 0,
        context_margin: int = 0,
        context_border: str = "replicate",
        **kwargs,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown PQF role {role!r} (one of {', '.join(ROLES)})")
        kwargs.setdefault("radius", 1)
        super().__init__(data_dir, **kwargs)
        self.role = role
        self.context_radius, self.context_margin, self.context_border = context_radius, context_margin, context_border
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

    def sample(self, with_context: bool = False):
        """One (triplet [3, P, P] uint8 = left reference, frame, right reference; target [P, P]),
        and with `with_context` (a sampler made with context_radius > 0) the context third."""
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
        if with_context:
            return self._augment(window, target, self._context(enc, t, y0, x0))
        return self._augment(window, target)

    def _context(self, enc: np.ndarray, t: int, y0: int, x0: int) -> np.ndarray:
        """Frames t-r..t+r of the encode around the patch at (y0, x0), m pixels wider on each side."""
        m, p = self.context_margin, self.patch
        t_len, h, w = enc.shape
        idx = window_indices(t, self.context_radius, t_len, self.context_border)
        ys, xs = max(y0 - m, 0), max(x0 - m, 0)
        ye, xe = min(y0 + p + m, h), min(x0 + p + m, w)
        crop = np.stack([np.asarray(enc[i, ys:ye, xs:xe]) for i in idx])
        pad = ((0, 0), (ys - (y0 - m), (y0 + p + m) - ye), (xs - (x0 - m), (x0 + p + m) - xe))
        return np.pad(crop, pad, mode="edge") if any(any(q) for q in pad) else crop

    def batch_with_context(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [n, 3, 1, P, P], y [n, 1, P, P] and the contexts [n, 2r+1, 1, P+2m, P+2m], in [0, 1]."""
        if self.context_radius <= 0:
            raise ValueError("batch_with_context needs a sampler made with context_radius > 0")
        xs, ys, cs = zip(*(self.sample(with_context=True) for _ in range(n)))
        x = torch.from_numpy(np.stack(xs)).float().div_(255).unsqueeze(2)
        y = torch.from_numpy(np.stack(ys)).float().div_(255).unsqueeze(1)
        c = torch.from_numpy(np.stack(cs)).float().div_(255).unsqueeze(2)
        return x, y, c
