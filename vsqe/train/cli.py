"""`vsqe data ...` and `vsqe train ...` subcommands (hooked into vsqe.cli; also `python -m vsqe.train.cli`).

  vsqe data fetch-debian --cache DIR [--package P ...] [--held-out]
  vsqe data build --src DIR [--src DIR ...] --out DIR [--qp 37] [--codecs x265-ldp,x264]
                  [--clip-frames N] [--size WxH ...] [--clips-per-photo K] [--clips-per-video K] [--jobs J]
                  [--art | --held-out]
  vsqe data manifest --out DIR       (re-assemble manifest.json from the clips written so far)
  vsqe data subset --data DIR --out DIR [--crop 256] [--frames 16] [--codecs x265-ldp] [--max-mib M] [--skip N]
  vsqe train --model stdf --data DIR --out DIR [--resume] [--iters N] [--batch B] [--patch P]
             [--lr LR] [--loss mse|charbonnier] [--no-batchnorm] [--val-every N]
  vsqe train --model mfqev2-y --pqf-role nonpqf|pqf --data DIR --out DIR [--resume]
             [--init-from FILE] [--partner-weights FILE] ...
  vsqe train --model basicvsrpp-y --data DIR --out DIR [--resume] [--frames T] [--val-frames N] ...
  vsqe train export --ckpt DIR/best.pt --out FILE.safetensors [--into W.safetensors (flow checkpoints)]
  vsqe train precise-bn --model mfqev2-y --init-from W.safetensors --pqf-role nonpqf|pqf --data DIR
             --out FILE.safetensors [--codecs ...] [--batches 200] [--batch 8] [--patch 128] [--seed N]
  vsqe train flow --model mfqev2-y --base W.safetensors --data DIR --out DIR [--resume] [--iters N]
             [--max-distance 4] [--smooth 0.02]   (SpyNet alone, photometric; writes DIR/grafted.safetensors)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vsqe.errors import VsqeError


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH, got {text!r}") from None
    if w % 8 or h % 8 or w < 64 or h < 64:
        raise argparse.ArgumentTypeError(f"size {text} must be multiples of 8 and at least 64x64")
    return w, h


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.5,1.1), got {text!r}") from None
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 0 <= LO <= HI, got {text!r}")
    return lo, hi


def _codec_weights(text: str) -> dict[str, float]:
    from vsqe.data.codec import CODECS

    weights: dict[str, float] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, w = item.partition("=")
        if name not in CODECS:
            raise argparse.ArgumentTypeError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")
        try:
            weights[name] = float(w) if w else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected CODEC=WEIGHT, got {item!r}") from None
        if weights[name] < 0:
            raise argparse.ArgumentTypeError(f"weights must be >= 0, got {item!r}")
    if not any(weights.values()):
        raise argparse.ArgumentTypeError(f"no codec with a positive weight in {text!r}")
    return weights


def _train_codecs(args) -> dict[str, float]:
    """--codecs, else the x265-ldp/x264 split of --x264-weight."""
    if args.codecs:
        return args.codecs
    return {"x265-ldp": 1.0 - args.x264_weight, "x264": args.x264_weight}


def add_data_parser(sub) -> None:
    p = sub.add_parser("data", help="fetch source material and build training pairs")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    f = dsub.add_parser("fetch-debian", help="apt-get download + dpkg -x the Debian packages with photos/videos")
    f.add_argument("--cache", required=True, type=Path)
    f.add_argument("--package", action="append", help="package name (repeatable; default: the built-in list)")
    f.add_argument("--held-out", action="store_true",
                   help="fetch the packages reserved for independent evaluation (opencv-doc), and only those, "
                        "for `vsqe data build --held-out` (keep them in a cache of their own)")
    f.set_defaults(func=_cmd_fetch, handler=_cmd_fetch)
    b = dsub.add_parser("build", help="build (raw, compressed) clip pairs from local folders")
    b.add_argument("--src", action="append", required=True, type=Path, help="folder with photos/videos (repeatable)")
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--qp", type=int, default=37)
    b.add_argument("--codecs", default="x265-ldp,x264")
    b.add_argument("--clip-frames", type=int, default=32)
    b.add_argument("--size", action="append", type=_size, help="clip size WxH (repeatable; default 416x240, 640x360, 832x480)")
    b.add_argument("--clips-per-photo", type=int, default=3)
    b.add_argument("--clips-per-video", type=int, default=8)
    b.add_argument("--min-size", type=int, default=128, help="smallest usable side (the largest patch)")
    b.add_argument("--exclude", action="append", default=[], help="skip paths containing this text (repeatable)")
    b.add_argument("--photo-blur", type=_range, default=(0.0, 0.0), metavar="LO,HI",
                   help="Gaussian sigma range (px) of simulated camera optics for photo clips (default: off)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--jobs", type=int, default=1)
    b.add_argument("--art", action="store_true",
                   help="build from the digital-art wallpapers only (graphics: flat colours, sharp edges)")
    b.add_argument("--held-out", action="store_true",
                   help="a test set: only the reserved evaluation material's real videos, raw clips and bitstreams "
                        "kept under OUT/streams for `python -m vsqe.train.report --dir OUT/streams`")
    b.set_defaults(func=_cmd_build, handler=_cmd_build)
    s = dsub.add_parser("subset", help="a smaller data folder of crops (e.g. to carry to a lent GPU machine)")
    s.add_argument("--data", required=True, type=Path, help="a `vsqe data build` folder")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--crop", type=int, default=256, help="crop side in px (8x8 grid; default %(default)s)")
    s.add_argument("--frames", type=int, default=16, help="leading frames kept per clip (default %(default)s)")
    s.add_argument("--codecs", default="x265-ldp", help="encodes kept (default %(default)s)")
    s.add_argument("--max-mib", type=float, default=100.0, help="uncompressed size budget (default %(default)s)")
    s.add_argument("--skip", type=int, default=0, help="leave out the first N clips of the seeded order "
                   "(the previous subset's next_skip: disjoint subsets)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_subset, handler=_cmd_subset)
    m = dsub.add_parser("manifest", help="re-assemble manifest.json from the clips written so far")
    m.add_argument("--out", required=True, type=Path)
    m.set_defaults(func=_cmd_manifest, handler=_cmd_manifest)


# `vsqe train` options that --resume may change (trainer.RESUME_OVERRIDES), with their defaults.
RESUMABLE_DEFAULTS = {"iters": 60000, "threads": 2, "val_every": 500, "val_full_every": 3000, "ckpt_minutes": 5.0,
                      "log_every": 25, "partner_weights": "", "val_frames": 12, "teacher_iters": 0, "device": "cpu", "minutes": 0.0}


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on `vsqe data build` pairs (CPU, resumable)")
    p.add_argument("action", nargs="?", choices=["run", "export", "flow", "precise-bn"], default="run",
                   help="run: train a model; export: a checkpoint to .safetensors; flow: train the model's "
                        "SpyNet alone on photometric consistency (vsqe/train/flow.py); precise-bn: recompute "
                        "the BN statistics of --init-from's weights on training triplets (vsqe/train/precise_bn.py)")
    p.add_argument("--model", default="stdf")
    p.add_argument("--data", type=Path)
    p.add_argument("--out", type=Path, help="run folder (checkpoints, logs, curves); with export: the .safetensors")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (exactly)")
    p.add_argument("--resume-from", help="continue from this checkpoint file")
    p.add_argument("--refresh-data", action="store_true", help="on resume, train on the data folder's current clips")
    p.add_argument("--iters", type=int, help="iterations of the schedule (default 60000)")
    p.add_argument("--batch", type=int, help="samples per step (default 16; recurrent models 2)")
    p.add_argument("--patch", type=int, help="patch side in px (default 64; recurrent models 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-4; recurrent models 2e-4)")
    p.add_argument("--loss", choices=["mse", "charbonnier"], default="mse")
    p.add_argument("--no-batchnorm", dest="batchnorm", action="store_false",
                   help="train the plain architecture (default: BN after each conv+ReLU, folded on export)")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, help="torch threads (default 2)")
    p.add_argument("--device", help="where the training steps run: cpu (default) or cuda[:N]; validation stays "
                                    "on the CPU (set --val-every 0 where the dev streams cannot be decoded)")
    p.add_argument("--minutes", type=float,
                   help="fit the schedule (--iters) to this many minutes of steps, from the rate of the first "
                        "60 (e.g. a lent GPU held for a fixed time); 0 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--x264-weight", type=float, default=0.2, help="share of x264 pairs (rest x265 LDP)")
    p.add_argument("--codecs", type=_codec_weights, metavar="CODEC=W,...",
                   help="which encodes to draw and how often, e.g. x265-ldp-hm=1 (replaces --x264-weight)")
    p.add_argument("--val-every", type=int, help="validate on every 3rd dev frame (0: never; default 500)")
    p.add_argument("--val-full-every", type=int, help="validate on all dev frames (0: never; default 3000)")
    p.add_argument("--ckpt-minutes", type=float, help="minutes between checkpoints (default 5)")
    p.add_argument("--log-every", type=int, help="iterations between log lines (default 25)")
    p.add_argument("--pqf-role", choices=["nonpqf", "pqf"], default="nonpqf",
                   help="PQF models (mfqev2-y): train the non-PQF or the PQF network (default: %(default)s)")
    p.add_argument("--init-from", default="", metavar="FILE",
                   help="start a new run from these weights (MFQEv2: the PQF run from the non-PQF export; "
                        "BasicVSR++: the full network from the --per-frame stage's export)")
    p.add_argument("--partner-weights", metavar="FILE",
                   help="PQF models, validation: the other network's weights (default: its frames stay as decoded)")
    p.add_argument("--frames", type=int, default=7,
                   help="recurrent models (basicvsrpp-y): frames per training clip segment (default: %(default)s)")
    p.add_argument("--val-frames", type=int,
                   help="recurrent models: leading frames of each dev clip the subset validation streams (default: 12)")
    p.add_argument("--per-frame", action="store_true",
                   help="recurrent models, first stage: train the per-frame path alone (propagation off); a later "
                        "run starts from its export with --init-from (docs/training.md §8)")
    p.add_argument("--teacher", default="", metavar="MODEL",
                   help="recurrent and PQF models: a window model (e.g. stdf) whose shipped weights give the "
                        "targets of the first --teacher-iters iterations")
    p.add_argument("--teacher-iters", type=int, help="iterations with the teacher's targets (default 0)")
    p.add_argument("--freeze-flow", action="store_true",
                   help="models with SpyNet: keep --init-from's SpyNet fixed (after `vsqe train flow`)")
    p.add_argument("--zero-flow", action="store_true",
                   help="models with SpyNet: set its flow to exactly zero and hold it (no motion compensation)")
    p.add_argument("--ckpt", help="export: checkpoint to export")
    p.add_argument("--into", help="export of a flow checkpoint: graft its SpyNet into these weights (same model) "
                                  "instead of the run's --base")
    p.add_argument("--base", help="flow: the weights whose SpyNet starts the run and receives the result")
    p.add_argument("--max-distance", type=int, default=4, help="flow: references up to this many frames away")
    p.add_argument("--smooth", type=float, default=0.02, help="flow: weight of the flow smoothness term")
    p.add_argument("--batches", type=int, default=200, help="precise-bn: batches averaged (default: %(default)s)")
    p.set_defaults(func=_cmd_train, handler=_cmd_train)


def _cmd_fetch(args) -> int:
    from vsqe.data.debian import DEFAULT_PACKAGES, EVALUATION_PACKAGES, fetch_debian

    defaults = EVALUATION_PACKAGES if args.held_out else DEFAULT_PACKAGES
    infos = fetch_debian(args.cache, args.package or defaults, held_out=args.held_out)
    print(f"{len(infos)} packages in {args.cache}")
    return 0


def _cmd_build(args) -> int:
    from vsqe.data.build import DEFAULT_SIZES, BuildConfig, build_dataset

    cfg = BuildConfig(
        out=args.out,
        qp=args.qp,
        codecs=tuple(c.strip() for c in args.codecs.split(",") if c.strip()),
        clip_frames=args.clip_frames,
        sizes=tuple(args.size) if args.size else DEFAULT_SIZES,
        clips_per_photo=args.clips_per_photo,
        clips_per_video=args.clips_per_video,
        min_size=args.min_size,
        exclude=tuple(args.exclude),
        seed=args.seed,
        jobs=args.jobs,
        art=args.art,
        held_out=args.held_out,
        photo_blur=args.photo_blur,
    )
    if cfg.clip_frames < 7:
        raise VsqeError(f"--clip-frames must be at least 7 (the STDF window), got {cfg.clip_frames}")
    if cfg.art and cfg.held_out:
        raise VsqeError("--art and --held-out are two different builds (training art clips, a test set): pick one")
    m = build_dataset(args.src, cfg)
    print(f"{m['num_clips']} clips, {m['num_frames']} frames, {len(m['skipped'])} skipped -> {args.out / 'manifest.json'}")
    return 0


def _cmd_subset(args) -> int:
    from vsqe.data.subset import SubsetConfig, make_subset

    m = make_subset(SubsetConfig(src=args.data, out=args.out, crop=args.crop, frames=args.frames,
                                 codecs=tuple(c.strip() for c in args.codecs.split(",") if c.strip()),
                                 max_mib=args.max_mib, skip=args.skip, seed=args.seed))
    s = m["subset"]
    print(f"{m['num_clips']} clips, {m['num_frames']} frames, {s['bytes'] / 2**20:.1f} MiB -> {args.out} "
          f"(next disjoint subset: --skip {s['next_skip']})")
    return 0


def _cmd_manifest(args) -> int:
    import json

    from vsqe.data.build import BuildConfig, write_manifest

    old = {}
    if (args.out / "manifest.json").is_file():
        old = json.loads((args.out / "manifest.json").read_text())
    cfg = BuildConfig(out=args.out, qp=old.get("qp", 37), codecs=tuple(old.get("codecs", ("x265-ldp", "x264"))),
                      clip_frames=old.get("clip_frames", 32), seed=old.get("seed", 0))
    m = write_manifest(args.out, cfg, [])
    print(f"{m['num_clips']} clips -> {args.out / 'manifest.json'}")
    return 0


def _cmd_precise_bn(args) -> int:
    from vsqe.train.precise_bn import recalibrate_weights

    if not args.init_from or args.data is None or args.out is None:
        raise VsqeError("vsqe train precise-bn needs --init-from WEIGHTS, --data DIR and --out FILE.safetensors")
    meta = recalibrate_weights(
        args.init_from, args.out, model=args.model, data=args.data, role=args.pqf_role,
        codec_weights=_train_codecs(args), batches=args.batches, batch=args.batch or 8, patch=args.patch or 128,
        seed=args.seed, threads=args.threads or 2,
        progress=lambda i, n: (i % 10 == 0 or i == n) and print(f"BN statistics: batch {i}/{n}", file=sys.stderr),
    )
    print(f"wrote {args.out} ({json.loads(meta['bn_stats'])['batches']} batches, role {args.pqf_role})")
    return 0


def _cmd_train(args) -> int:
    if args.action == "export":
        from vsqe.train.export import export_checkpoint

        if not args.ckpt or not args.out:
            raise VsqeError("vsqe train export needs --ckpt FILE and --out FILE.safetensors")
        export_checkpoint(args.ckpt, args.out, into=args.into)
        print(f"wrote {args.out}")
        return 0
    if args.action == "flow":
        return _cmd_train_flow(args)
    if args.action == "precise-bn":
        return _cmd_precise_bn(args)
    from vsqe.train.trainer import Trainer, TrainConfig, is_pqf_model, is_recurrent_model

    if args.data is None or args.out is None:
        raise VsqeError("vsqe train needs --data DIR and --out DIR")
    # Recurrent models: fewer, larger samples. A 128-px patch gives SpyNet the 32-px input it
    # computes at anyway (a 64-px one is resized up from 16 px: 4x the flow cost per output
    # pixel), and 2 x 7 frames x 128 px is ~2 s per step on one core (docs/training.md §8).
    recurrent = is_recurrent_model(args.model)
    batch = args.batch if args.batch is not None else (2 if recurrent else 16)
    patch = args.patch if args.patch is not None else (128 if recurrent else 64)
    # No BN in the recurrent net (trainer.py): closer to the published 1e-4 than STDF-BN's 5e-4.
    lr = args.lr if args.lr is not None else (2e-4 if recurrent else 5e-4)
    # Options a resumed run may change: None = not on the command line. A new run takes the
    # defaults; a resumed one keeps what its checkpoint says (a default must not silently
    # replace, say, the partner weights a run was started with).
    given = {k for k in RESUMABLE_DEFAULTS if getattr(args, k) is not None}
    resumable = {k: getattr(args, k) if k in given else v for k, v in RESUMABLE_DEFAULTS.items()}
    cfg = TrainConfig(
        data=str(args.data),
        out=str(args.out),
        model=args.model,
        iters=resumable["iters"],
        batch=batch,
        patch=patch,
        lr=lr,
        loss=args.loss,
        batchnorm=args.batchnorm,
        warmup=args.warmup,
        precision=args.precision,
        threads=resumable["threads"],
        seed=args.seed,
        codec_weights=_train_codecs(args),
        val_every=resumable["val_every"],
        val_full_every=resumable["val_full_every"],
        ckpt_minutes=resumable["ckpt_minutes"],
        log_every=resumable["log_every"],
        pqf_role=args.pqf_role,
        init_from=args.init_from,
        partner_weights=resumable["partner_weights"],
        frames=args.frames,
        val_frames=resumable["val_frames"],
        per_frame=args.per_frame,
        teacher=args.teacher,
        teacher_iters=resumable["teacher_iters"],
        freeze_flow=args.freeze_flow,
        zero_flow=args.zero_flow,
        device=resumable["device"],
        minutes=resumable["minutes"],
    )
    if cfg.patch % 8 or cfg.patch < 16:
        raise VsqeError(f"--patch must be a multiple of 8 (>= 16), got {cfg.patch}")
    if recurrent and (cfg.patch < 64 or cfg.frames < 2):
        raise VsqeError(f"recurrent models need --patch >= 64 and --frames >= 2, got {cfg.patch} and {cfg.frames}")
    if cfg.per_frame and not recurrent:
        raise VsqeError(f"--per-frame is for recurrent models (basicvsrpp-y), not {cfg.model}")
    if cfg.teacher and not (recurrent or is_pqf_model(cfg.model)):
        raise VsqeError(f"--teacher is for recurrent (basicvsrpp-y) and PQF (mfqev2-y) models, not {cfg.model}")
    if cfg.freeze_flow and not cfg.init_from and not args.resume:
        raise VsqeError("--freeze-flow needs --init-from FILE (weights whose SpyNet `vsqe train flow` trained)")
    if cfg.teacher_iters and not cfg.teacher and not args.resume:
        raise VsqeError("--teacher-iters needs --teacher MODEL")
    # found at the start, not at the first validation an hour later
    for option, path in (("--init-from", cfg.init_from), ("--partner-weights", cfg.partner_weights)):
        if path and not Path(path).is_file():
            raise VsqeError(f"{option} {path}: no such file")
    trainer = Trainer(cfg, resume=args.resume, resume_from=args.resume_from, refresh_data=args.refresh_data,
                      overrides=given,
                      log=lambda m: print(m, flush=True))
    trainer.run()
    return 0


def _cmd_train_flow(args) -> int:
    from vsqe.train.flow import FlowConfig, FlowTrainer

    if args.data is None or args.out is None or not args.base:
        raise VsqeError("vsqe train flow needs --base FILE, --data DIR and --out DIR")
    if not Path(args.base).is_file():
        raise VsqeError(f"--base {args.base}: no such file")
    given = {k: v for k, v in (("iters", args.iters), ("batch", args.batch), ("patch", args.patch), ("lr", args.lr),
                               ("threads", args.threads), ("device", args.device), ("val_every", args.val_every),
                               ("log_every", args.log_every), ("ckpt_minutes", args.ckpt_minutes)) if v is not None}
    cfg = FlowConfig(data=str(args.data), out=str(args.out), base=str(args.base), model=args.model,
                     max_distance=args.max_distance, smooth=args.smooth, precision=args.precision, seed=args.seed,
                     warmup=args.warmup, codec_weights=_train_codecs(args),
                     **given)
    if cfg.patch % 32 or cfg.patch < 64:
        raise VsqeError(f"vsqe train flow: --patch must be a multiple of 32 (>= 64), got {cfg.patch}")
    FlowTrainer(cfg, resume=args.resume, log=lambda m: print(m, flush=True), overrides=set(given)).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vsqe")
    sub = parser.add_subparsers(dest="command", required=True)
    add_data_parser(sub)
    add_train_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VsqeError as exc:
        print(f"vsqe: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
