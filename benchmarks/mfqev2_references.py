"""Where an MFQEv2-Y non-PQF network's gain comes from: ΔY-PSNR of one weights file on the dev HM
non-PQFs (every `--step`-th frame) with the PQF references warped by its SpyNet ("flow"), with the
references unwarped ("noflow": SpyNet's flow replaced by zero), and with the frame itself as both
references ("self": no neighbour at all). docs/training.md §7, session 8.

  python benchmarks/mfqev2_references.py WEIGHTS [--step 2] [--backend torch-fp32] [--threads 2]

Frames: the HM QP37 dev streams in ../shared/data against their raw .y4m; PQF flags and
references from the slice QPs, as `vsqe run` pairs them.
"""
from __future__ import annotations

import argparse

import torch

import vsqe.models.mfqev2 as mfqev2
from vsqe.pipeline.enhancer import Enhancer
from vsqe.pipeline.pqf_schedule import triplet_for
from vsqe.train import validate as V


def non_pqf_gain(enh: Enhancer, step: int, mode: str) -> list[float]:
    gains = []
    for clip in V.DEV_CLIPS:
        ref, dec = V._decoded(clip, "hm", V.DEV_DIR)
        flags, lookahead = V.dev_pqf_flags(clip, "hm", V.DEV_DIR, len(dec))

        def enhanced(n: int):
            left, right = (n, n) if mode == "self" else triplet_for(n, flags, lookahead)
            return enh.enhance_pqf_triplet(dec[left], dec[n], dec[right], flags[n])

        frames = [n for n in range(0, len(dec), step) if not flags[n]]
        gains.append(V._score(clip, "hm", ref, dec, ((n, enhanced(n)) for n in frames)).delta)
    return gains


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--step", type=int, default=2)
    ap.add_argument("--backend", default="torch-fp32")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    enh = Enhancer("mfqev2-y", weights=a.weights, pqf_weights=a.weights, backend=a.backend, threads=a.threads)
    warp = mfqev2.MFQEv2.align
    for mode in ("flow", "self", "noflow"):
        # "noflow": the reference goes in as it is (what a zero flow gives)
        mfqev2.MFQEv2.align = warp if mode != "noflow" else (lambda self, neighbour, centre: neighbour)
        g = non_pqf_gain(enh, a.step, mode)
        print(f"{mode:6s} " + " ".join(f"{c} {v:+.4f}" for c, v in zip(V.DEV_CLIPS, g)) + f"  mean {sum(g) / len(g):+.4f}",
              flush=True)
    mfqev2.MFQEv2.align = warp


if __name__ == "__main__":
    main()
