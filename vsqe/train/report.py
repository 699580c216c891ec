"""ΔY-PSNR of a weights file on every dev clip and encode (HM, x265, VVC, x264), for the model card.

  python -m vsqe.train.report --weights vsqe/weights/stdf_y_qp37.safetensors [--streams hm,x265,vvenc,x264]
      [--step 1] [--json out.json] [--backend torch-fp32]

Runs through vsqe.pipeline.enhancer.Enhancer (the inference path of every front end).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from vsqe.train.validate import DEV_CLIPS, STREAM_SUFFIX, evaluate, summarize


def report(weights: str, streams: list[str], step: int = 1, backend: str = "torch-fp32", threads: int | None = None,
           log=print) -> dict:
    from vsqe.pipeline.enhancer import Enhancer

    enh = Enhancer(model="stdf", weights=weights, backend=backend, threads=threads)
    out: dict = {"weights": weights, "backend": backend, "frame_step": step, "streams": {}}
    for s in streams:
        t0 = time.time()
        res = evaluate(enh, clips=DEV_CLIPS, stream=s, frame_step=step)
        summ = summarize(res)
        summ["psnr_out"] = {r.clip: round(float(np.mean(r.psnr_out)), 4) for r in res}
        summ["seconds"] = round(time.time() - t0, 1)
        out["streams"][s] = summ
        log(f"{s}: mean dY-PSNR {summ['delta_mean']:+.4f} dB  {summ['per_clip']}  worst class {summ['worst_class']:+.4f}"
            f"  worst frame {summ['worst_frame']:+.4f}  ({summ['seconds']} s)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vsqe.train.report")
    p.add_argument("--weights", required=True)
    p.add_argument("--streams", default="hm,x265,vvenc,x264")
    p.add_argument("--step", type=int, default=1)
    p.add_argument("--backend", default="torch-fp32")
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    a = p.parse_args(argv)
    streams = [s for s in a.streams.split(",") if s]
    for s in streams:
        if s not in STREAM_SUFFIX:
            p.error(f"unknown stream {s!r} (known: {', '.join(STREAM_SUFFIX)})")
    r = report(a.weights, streams, a.step, a.backend, a.threads)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
