"""Benchmark of the DCNv2 forward on the CPU: vsqe's native op against torchvision's.

Shape defaults to STDF's deformable conv (N=1, Cin=7, Cout=64, 7 deformable groups, 3x3, pad 1).
Offsets are N(0, 3^2) pixels and the mask is uniform, as a trained STDF produces roughly.

    python benchmarks/bench_dcn.py                       # 416x240, 832x480, 1920x1080
    python benchmarks/bench_dcn.py --sizes 416x240 --repeats 20 --threads 2

Times are wall-clock milliseconds per call after warm-up: the minimum (least disturbed by other
processes) and the median; "CPU ms" is the process CPU time of the fastest call (all threads).
"fused kernel only" is the native forward writing into a preallocated output (minimum wall time).
Run with THP_MEM_ALLOC_ENABLE=1 to let torch back large tensors with huge pages (see docs/dcn.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch
import torchvision

from vsqe.ops import dcn


def _time(fn: Callable[[], object], repeats: int, warmup: int) -> tuple[float, float, float]:
    """(min wall ms, median wall ms, min process CPU ms) per call."""
    for _ in range(warmup):
        fn()
    ts, cs = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
        cs.append((time.process_time() - c) * 1e3)
    return min(ts), statistics.median(ts), min(cs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="416x240,832x480,1920x1080", help="WxH list")
    ap.add_argument("--cin", type=int, default=7)
    ap.add_argument("--cout", type=int, default=64)
    ap.add_argument("--groups", type=int, default=7, help="deformable (offset) groups")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--tv-repeats", type=int, default=3, help="repeats for torchvision (slow)")
    ap.add_argument("--skip-tv-above", type=int, default=10**9, help="skip torchvision above this many pixels")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads {args.threads}, "
        f"avx512 {dcn._dcn_cpu.has_avx512()}, THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '')}"
    )
    if not dcn._dcn_cpu.has_avx512():
        raise SystemExit("this benchmark times the fused AVX-512 kernel; this CPU has no AVX-512")
    print("| size | dtype | vsqe op min / median ms | vsqe op CPU ms | fused kernel only ms | torchvision min / median ms | speed-up (min) |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        g, k = args.groups, 9
        x = torch.rand(1, args.cin, h, w)
        off = torch.randn(1, 2 * g * k, h, w) * 3.0
        msk = torch.rand(1, g * k, h, w)
        wt = torch.randn(args.cout, args.cin, 3, 3) * 0.1
        b = torch.randn(args.cout)
        shape = [1, args.cin, h, w, g, 3, 3, 1, 1, 1, 1, 1, 1, h, w]
        for dt in (torch.float32, torch.bfloat16):
            xd, od, md, wd, bd = (t.to(dt) for t in (x, off, msk, wt, b))
            ours = _time(lambda: dcn.deform_conv2d(xd, od, md, wd, bd, 1, 1), args.repeats, args.warmup)
            # The native kernel alone, writing into a preallocated output: no allocator or
            # page-fault cost (large fresh tensors are expensive to fault in, see docs/dcn.md).
            out = torch.empty(1, args.cout, h, w, dtype=dt)
            wf, bf = wt.float().reshape(args.cout, -1).contiguous(), b.float()
            code = dcn._DTYPE_CODE[dt]
            kernel = _time(
                lambda: dcn._dcn_cpu.forward(
                    code, xd.data_ptr(), code, od.data_ptr(), md.data_ptr(), wf.data_ptr(), bf.data_ptr(),
                    out.data_ptr(), shape, args.cout, 1, 0, args.threads,
                ),
                args.repeats,
                args.warmup,
            )
            if h * w <= args.skip_tv_above:
                # torchvision has no bf16 CPU kernel: it runs (and is timed) in fp32 for both rows.
                tv = _time(
                    lambda: torchvision.ops.deform_conv2d(x, off, wt, b, 1, 1, 1, msk),
                    args.tv_repeats,
                    1,
                )
                tv_s = f"{tv[0]:.1f} / {tv[1]:.1f}"
                sp = f"{tv[0] / ours[0]:.1f}x"
            else:
                tv_s, sp = "skipped", "-"
            name = "fp32" if dt == torch.float32 else "bf16"
            print(
                f"| {w}x{h} | {name} | {ours[0]:.1f} / {ours[1]:.1f} | {ours[2]:.1f} | {kernel[0]:.1f} | {tv_s} | {sp} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
