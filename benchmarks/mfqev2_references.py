"""Where an MFQEv2-Y non-PQF network's gain comes from: ΔY-PSNR of one weights file on the dev HM
non-PQFs (every `--step`-th frame) with the PQF references warped by its SpyNet ("flow"), with the
references unwarped ("noflow": SpyNet's flow replaced by zero), and with the frame itself as both
references ("self": no neighbour at all). docs/training.md §7, session 8. Session 10 added the
flow's variants: "nearest" (nearest-sample warping instead of bilinear), "half" (flow x0.5) and
"negated" (flow x-1, the references pushed the wrong way), "enhanced" (the references are the PQF
network's outputs, --pqf-weights), --spynet-from to evaluate the weights with another file's SpyNet
grafted in (a zero-flow network with the SpyNet it trained with), and --alignment: how well that
SpyNet aligns each reference to its non-PQF (Y-PSNR of the references against the decoded frames,
warped and unwarped, 16-px border left out).

  python benchmarks/mfqev2_references.py WEIGHTS [--spynet-from FILE] [--pqf-weights FILE]
      [--modes flow,self,noflow] [--alignment] [--step 2] [--backend torch-fp32] [--threads 2]

Frames: the HM QP37 dev streams in ../shared/data against their raw .y4m; PQF flags and
references from the slice QPs, as `vsqe run` pairs them.
"""
from __future__ import annotations

import argparse
import functools
import math
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

import vsqe.models.mfqev2 as mfqev2
from vsqe.pipeline.enhancer import Enhancer
from vsqe.io.formats import frames_to_luma_tensor
from vsqe.models.spynet import flow_warp
from vsqe.pipeline.pqf_schedule import triplet_for
from vsqe.train import validate as V
from vsqe.train.flow import graft

MODES = ("flow", "self", "noflow", "nearest", "half", "negated", "enhanced")
# the warp each mode puts in MFQEv2.align's place (None: align's own)
WARPS = {
    "nearest": functools.partial(flow_warp, mode="nearest"),
    "half": lambda x, flow, **kw: flow_warp(x, 0.5 * flow, **kw),
    "negated": lambda x, flow, **kw: flow_warp(x, -flow, **kw),
}


def non_pqf_gain(enh: Enhancer, step: int, mode: str) -> list[float]:
    gains = []
    for clip in V.DEV_CLIPS:
        ref, dec = V._decoded(clip, "hm", V.DEV_DIR)
        flags, lookahead = V.dev_pqf_flags(clip, "hm", V.DEV_DIR, len(dec))

        refs: dict[int, object] = {}

        def reference(k: int):
            if mode != "enhanced":
                return dec[k]
            if k not in refs:  # the PQF network's output for reference k, from its own pair
                left, right = triplet_for(k, flags, lookahead)
                refs[k] = enh.enhance_pqf_triplet(dec[left], dec[k], dec[right], flags[k])
            return refs[k]

        def enhanced(n: int):
            left, right = (n, n) if mode == "self" else triplet_for(n, flags, lookahead)
            return enh.enhance_pqf_triplet(reference(left), dec[n], reference(right), flags[n])

        frames = [n for n in range(0, len(dec), step) if not flags[n]]
        gains.append(V._score(clip, "hm", ref, dec, ((n, enhanced(n)) for n in frames)).delta)
    return gains


def alignment(enh: Enhancer, step: int) -> None:
    """Per clip: Y-PSNR of each non-PQF's references against it, unwarped and warped by the
    network's SpyNet (what the flow achieves, whatever the QE net makes of it)."""
    model = enh.module
    for clip in V.DEV_CLIPS:
        _, dec = V._decoded(clip, "hm", V.DEV_DIR)
        flags, lookahead = V.dev_pqf_flags(clip, "hm", V.DEV_DIR, len(dec))
        plain, warped = [], []
        for n in (n for n in range(0, len(dec), step) if not flags[n]):
            centre = frames_to_luma_tensor([dec[n]])[:, 0]
            for k in set(triplet_for(n, flags, lookahead)) - {n}:
                ref = frames_to_luma_tensor([dec[k]])[:, 0]
                with torch.no_grad():
                    aligned = model.align(ref, centre)
                inner = (..., slice(16, -16), slice(16, -16))
                for out, r in ((plain, ref), (warped, aligned)):
                    out.append(((r - centre)[inner] ** 2).mean().item())
        # PSNR of the mean error: a skipped frame can equal its reference exactly
        db = [-10 * math.log10(sum(e) / len(e)) for e in (plain, warped)]
        print(f"alignment {clip}: unwarped {db[0]:.2f} dB, warped {db[1]:.2f} dB ({len(plain)} references)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--spynet-from", help="weights whose spynet.* replace WEIGHTS' own (e.g. basicvsrpp-y's)")
    ap.add_argument("--pqf-weights", help="the PQF network of mode enhanced (default: WEIGHTS)")
    ap.add_argument("--modes", default="flow,self,noflow", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--alignment", action="store_true", help="also print how well the SpyNet aligns")
    ap.add_argument("--step", type=int, default=2)
    ap.add_argument("--backend", default="torch-fp32")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        ap.error(f"unknown mode(s) {', '.join(sorted(unknown))} (known: {', '.join(MODES)})")
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        weights = a.weights
        if a.spynet_from:
            weights = str(Path(tmp) / "grafted.safetensors")
            donor = load_file(a.spynet_from)
            graft(a.weights, "mfqev2-y", {k[len("spynet."):]: v for k, v in donor.items() if k.startswith("spynet.")},
                  weights)
        enh = Enhancer("mfqev2-y", weights=weights, pqf_weights=a.pqf_weights or weights, backend=a.backend,
                       threads=a.threads)
    if a.alignment:
        alignment(enh, a.step)
    align, warp = mfqev2.MFQEv2.align, mfqev2.flow_warp
    for mode in modes:
        # "noflow": the reference goes in as it is (what a zero flow gives)
        mfqev2.MFQEv2.align = align if mode != "noflow" else (lambda self, neighbour, centre: neighbour)
        mfqev2.flow_warp = WARPS.get(mode, warp)
        g = non_pqf_gain(enh, a.step, mode)
        print(f"{mode:7s} " + " ".join(f"{c} {v:+.4f}" for c, v in zip(V.DEV_CLIPS, g)) + f"  mean {sum(g) / len(g):+.4f}",
              flush=True)
    mfqev2.MFQEv2.align, mfqev2.flow_warp = align, warp


if __name__ == "__main__":
    main()
