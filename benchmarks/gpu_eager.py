"""vsqe's models eager on an NVIDIA GPU (torch CUDA, no TensorRT): the CUDA DCN against
torchvision's, fp32 and fp16 autocast, accuracy and speed.

1. Accuracy: STDF-Y with the shipped weights on the HM QP37 city clip, frame by frame (7-frame
   windows, replicated borders as the Enhancer builds them), outputs rounded to 8 bits: ΔY-PSNR
   against the raw clip per DCN implementation and precision. The CPU fp32 figure is +0.3728.
2. Speed: model-only frames/s (median-free: the mean of `--repeats` timed calls after 3 warm-up
   calls, CUDA-synchronised) and peak CUDA memory, on random frames, for STDF-Y (shipped weights),
   MFQEv2-Y (no DCN) and the PowerVQE BasicVSR++ QE layout (C64 B7, random weights, 10-frame
   segments, frames/s = segment frames / segment time).

A lent GPU machine may lack PyAV, so the clip comes as two .npy files made here first:

    python benchmarks/gpu_eager.py --prepare DIR          # decode + raw Y planes -> DIR/*.npy
    python benchmarks/gpu_eager.py --frames-dir DIR [--device cuda] [--json OUT.json]

Needs the native modules (vsqe._dcn_cuda: built when nvcc is found; static cudart, so the wheel
built on a CPU machine imports on the GPU one if the Python version matches).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

CLIP = "city_416x240"


def prepare(out: Path, data: Path) -> None:
    from vsqe.train.validate import decode_frames, read_y4m_luma

    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"{CLIP}_ref.npy", read_y4m_luma(data / f"{CLIP}.y4m"))
    dec = decode_frames(data / f"{CLIP}_hm_ldp_qp37.hevc")
    np.save(out / f"{CLIP}_dec.npy", np.stack([f.planes[0] for f in dec]))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def _autocast(device: str, precision: str):
    return torch.autocast("cuda", dtype=torch.float16, enabled=(precision == "fp16" and device == "cuda"))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def accuracy(frames_dir: Path, device: str, precisions: list[str]) -> dict:
    from vsqe.models import build_model
    from vsqe.ops import dcn
    from vsqe.pipeline.window import window_indices

    dec = np.load(frames_dir / f"{CLIP}_dec.npy")
    ref = np.load(frames_dir / f"{CLIP}_ref.npy")
    model, spec, _ = build_model("stdf")
    model = model.to(device).eval()
    results, outs = {}, {}
    for impl in ("native", "torchvision"):
        dcn.set_impl(impl)
        for precision in precisions:
            out = []
            with torch.inference_mode(), _autocast(device, precision):
                for n in range(len(dec)):
                    idx = window_indices(n, spec.radius, len(dec), spec.border)
                    x = torch.from_numpy(dec[idx]).to(device).float().div(255)[None, :, None]
                    y = model(x).float().clamp(0, 1).mul(255).round().to(torch.uint8)
                    out.append(y[0, 0].cpu().numpy())
            outs[impl, precision] = np.stack(out)
            delta = np.mean([_psnr(ref[n], outs[impl, precision][n]) - _psnr(ref[n], dec[n]) for n in range(len(dec))])
            results[f"stdf_dY_{impl}_{precision}"] = round(float(delta), 4)
            print(f"STDF-Y {impl} {precision}: dY-PSNR {delta:+.4f} dB", flush=True)
    a, b = outs["native", "fp32"].astype(int), outs["torchvision", "fp32"].astype(int)
    results["stdf_fp32_native_vs_torchvision_max_levels"] = int(np.abs(a - b).max())
    results["stdf_fp32_native_vs_torchvision_changed_pct"] = round(float((a != b).mean() * 100), 4)
    return results


def _time(fn: Callable[[], object], device: str, repeats: int) -> float:
    for _ in range(3):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def speed(device: str, sizes: list[tuple[int, int]], precisions: list[str], repeats: int) -> dict:
    from vsqe.models import build_model
    from vsqe.ops import dcn

    results = {}
    for name in ("stdf", "mfqev2-y", "basicvsrpp"):
        model, _, _ = build_model(name, require_weights=False)
        model = model.to(device).eval()
        for w, h in sizes:
            if name == "basicvsrpp":  # QE layout: multiples of 4, at least 256 a side
                frames = 10
                x = torch.rand(1, frames, 3, max(256, -(-h // 4) * 4), max(256, -(-w // 4) * 4), device=device)
            elif name == "mfqev2-y":
                frames, x = 1, torch.rand(1, 3, 1, h, w, device=device)
            else:
                frames, x = 1, torch.rand(1, 7, 1, -(-h // 8) * 8, -(-w // 8) * 8, device=device)
            for impl in ("native",) if name == "mfqev2-y" else ("native", "torchvision"):
                dcn.set_impl(impl)
                for precision in precisions:
                    if device == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    with torch.inference_mode(), _autocast(device, precision):
                        seconds = _time(lambda: model(x), device, max(1, repeats // (5 if frames > 1 else 1)))
                    key = f"{name}_{w}x{h}_{impl}_{precision}"
                    results[key + "_fps"] = round(frames / seconds, 2)
                    if device == "cuda":
                        results[key + "_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
                    print(f"{key}: {frames / seconds:.2f} frames/s", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepare", type=Path, metavar="DIR", help="write the clip's .npy files into DIR and stop")
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    p.add_argument("--frames-dir", type=Path, metavar="DIR")
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", default="416x240,1920x1080")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.prepare:
        prepare(args.prepare, args.data)
        return
    if args.frames_dir is None:
        p.error("--frames-dir is required (make it with --prepare)")
    precisions = ["fp32", "fp16"] if args.device == "cuda" else ["fp32"]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    results = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__}
    results |= accuracy(args.frames_dir, args.device, precisions)
    results |= speed(args.device, sizes, precisions, args.repeats)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
