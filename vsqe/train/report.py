"""ΔY-PSNR of a weights file on every dev clip and encode (HM, x265, VVC, x264), for the model card,
or on a test set built from held-out material (`vsqe data build --held-out`, `--dir OUT/streams`).

  python -m vsqe.train.report --weights vsqe/weights/stdf_y_qp37.safetensors [--streams hm,x265,vvenc,x264]
      [--step 1] [--json out.json] [--backend torch-fp32]
  python -m vsqe.train.report --model mfqev2-y --weights NONPQF.safetensors [--pqf-weights PQF.safetensors] ...
  python -m vsqe.train.report --model basicvsrpp-y --weights vsqe/weights/basicvsrpp_y_qp37.safetensors ...
  python -m vsqe.train.report --weights W --dir /work/cache/vsqe-test/streams --streams x265-hm,x265,x264

Runs through vsqe.pipeline.enhancer.Enhancer (the inference path of every front end). PQF models
run as `vsqe run` would with the same files (without --pqf-weights the non-PQF network enhances
PQFs too) and add the gain on PQFs and on non-PQFs (`pqf_class`, `by_pqf`). Recurrent models
stream each clip through the Enhancer's segments (the model's segment length and overlap).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from pathlib import Path

from vsqe.errors import InputError
from vsqe.train.validate import (
    DEV_CLIPS,
    DEV_DIR,
    STREAM_SUFFIX,
    evaluate,
    evaluate_pqf,
    evaluate_recurrent,
    summarize,
)


def clips_in(folder: Path) -> tuple[str, ...]:
    """The dev clips for the shared dev folder; elsewhere (a test set) every <clip>.y4m there."""
    folder = Path(folder)
    if folder.resolve() == DEV_DIR.resolve():
        return DEV_CLIPS
    clips = tuple(sorted(p.stem for p in folder.glob("*.y4m")))
    if not clips:
        raise InputError(f"no <clip>.y4m references in {folder}")
    return clips


def report(weights: str, streams: list[str], step: int = 1, backend: str = "torch-fp32", threads: int | None = None,
           log=print, model: str = "stdf", pqf_weights: str | None = None, folder: Path = DEV_DIR) -> dict:
    from vsqe.pipeline.enhancer import Enhancer

    folder = Path(folder)
    clips = clips_in(folder)
    for s in streams:
        missing = [c for c in clips if not (folder / f"{c}{STREAM_SUFFIX[s]}").is_file()]
        if missing:
            raise InputError(f"no {s} stream ({STREAM_SUFFIX[s]}) for {', '.join(missing[:3])} in {folder}")
    enh = Enhancer(model=model, weights=weights, backend=backend, threads=threads, pqf_weights=pqf_weights)
    pqf_model = enh.spec.temporal == "pqf"
    out: dict = {"model": model, "weights": weights, "backend": backend, "frame_step": step, "streams": {}}
    if clips is not DEV_CLIPS:
        out["folder"], out["clips"] = str(folder), list(clips)
    if pqf_model:
        out["pqf_weights"] = pqf_weights
    for s in streams:
        t0 = time.time()
        if pqf_model:
            res = evaluate_pqf(enh, clips=clips, stream=s, frame_step=step, dev_dir=folder)
        elif enh.spec.temporal == "recurrent":
            res = evaluate_recurrent(enh, clips=clips, stream=s, frame_step=step, dev_dir=folder)
        else:
            res = evaluate(enh, clips=clips, stream=s, frame_step=step, dev_dir=folder)
        summ = summarize(res)
        summ["psnr_out"] = {r.clip: round(float(np.mean(r.psnr_out)), 4) for r in res}
        summ["seconds"] = round(time.time() - t0, 1)
        out["streams"][s] = summ
        by_pqf = summ.get("pqf_class")
        log(f"{s}: mean dY-PSNR {summ['delta_mean']:+.4f} dB  {summ['per_clip']}  worst class {summ['worst_class']:+.4f}"
            f"  worst frame {summ['worst_frame']:+.4f}"
            + (f"  PQF {by_pqf['pqf']} non-PQF {by_pqf['nonpqf']}" if by_pqf else "") + f"  ({summ['seconds']} s)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vsqe.train.report")
    p.add_argument("--model", default="stdf")
    p.add_argument("--weights", required=True, help="the weights (PQF models: the non-PQF network)")
    p.add_argument("--pqf-weights", help="PQF models: the PQF network (default: --weights enhance PQFs too)")
    p.add_argument("--streams", default="hm,x265,vvenc,x264")
    p.add_argument("--step", type=int, default=1)
    p.add_argument("--backend", default="torch-fp32")
    p.add_argument("--threads", type=int)
    p.add_argument("--json")
    p.add_argument("--dir", type=Path, default=DEV_DIR,
                   help="the clips: <clip>.y4m + <clip><stream suffix> (default: the dev clips in %(default)s)")
    a = p.parse_args(argv)
    streams = [s for s in a.streams.split(",") if s]
    for s in streams:
        if s not in STREAM_SUFFIX:
            p.error(f"unknown stream {s!r} (known: {', '.join(STREAM_SUFFIX)})")
    try:
        r = report(a.weights, streams, a.step, a.backend, a.threads, model=a.model, pqf_weights=a.pqf_weights,
                   folder=a.dir)
    except InputError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
