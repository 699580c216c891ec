"""`vsqe pqf IN [--plot F.png] [--ref REF.y4m] [--csv F]`: per-frame POC, type, QP and PQF flag.

Reads the slice headers of a raw H.264/HEVC/VVC stream (no decoding) and prints one row per
output frame in display order. With --ref, the stream is decoded and per-frame Y-PSNR added
(and the MFQEv2 PSNR-peak labels); when some QP cannot be read, PQFs come from the fallback
(the no-reference estimator by default, or frame sizes with --fallback bits).
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("vsqe.pqf")

COLUMNS = ("frame", "poc", "type", "qp", "nal", "tid", "bits", "pqf")


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pqf",
        help="per-frame QP/POC/type from the bitstream and peak-quality frames",
        description=__doc__,
    )
    p.add_argument("input", type=Path, help="raw Annex-B stream: .264/.h264, .hevc/.265, .266/.vvc")
    p.add_argument("--codec", choices=("h264", "hevc", "vvc"), help="override detection from the suffix")
    p.add_argument("--ref", type=Path, help="reference video (y4m) for per-frame Y-PSNR")
    p.add_argument("--csv", type=Path, help="write the per-frame table as CSV")
    p.add_argument("--plot", type=Path, help="write a PNG: QP over frames, PQFs marked (and PSNR)")
    p.add_argument("--radius", type=int, default=None,
                   help="PQF peak radius in frames (default 2 for QP and estimates)")
    p.add_argument("--fallback", choices=("estimate", "bits"), default="estimate",
                   help="PQF source when a QP is unknown: NR estimate (decodes) or frame sizes")
    p.add_argument("--estimate", action="store_true",
                   help="also compute the NR estimate (and use it for PQFs if QPs are unknown)")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    from vsqe.errors import InputError
    from vsqe.pqf.detect import QP_RADIUS, indices, pqfs_from_psnr, pqfs_from_qp, pqfs_from_scores
    from vsqe.pqf.stream import display_pictures, read_pictures

    radius = args.radius or QP_RADIUS
    if radius < 1:
        raise InputError("--radius must be at least 1")
    pictures = read_pictures(args.input, args.codec)
    pics = display_pictures(pictures)
    if not pics:
        raise InputError(f"{args.input}: no output pictures found")
    qps = [p.qp for p in pics]
    scores: list[float] | None = None
    if args.estimate or (any(q is None for q in qps) and args.fallback == "estimate"):
        from vsqe.pqf.estimator import estimate_scores

        decoded = estimate_scores(args.input)
        if not decoded:
            raise InputError(f"{args.input}: QPs unreadable and the stream does not decode; try --fallback bits")
        scores = _fit(decoded, len(pics), "decoded frames")
    if all(q is not None for q in qps):
        flags, source = pqfs_from_qp(qps, radius), "qp"
    elif args.fallback == "bits":
        flags, source = pqfs_from_scores([float(p.bits) for p in pics], radius), "bits"
    else:
        assert scores is not None
        flags, source = pqfs_from_scores(scores, radius), "estimate"

    psnrs: list[float] | None = None
    if args.ref is not None:
        psnrs = _fit(_psnrs(args.ref, args.input), len(pics), "reference/decoded frame pairs")

    rows = []
    for i, pic in enumerate(pics):
        row: dict[str, Any] = {
            "frame": i, "poc": _s(pic.poc), "type": pic.slice_type or "?", "qp": _s(pic.qp),
            "nal": pic.nal_type_name, "tid": pic.temporal_id, "bits": pic.bits, "pqf": int(flags[i]),
        }
        if scores is not None:
            row["estimate"] = f"{scores[i]:.4f}"
        if psnrs is not None:
            row["psnr"] = f"{psnrs[i]:.4f}"
        rows.append(row)
    columns = list(COLUMNS) + (["estimate"] if scores is not None else []) + (["psnr"] if psnrs is not None else [])
    _print_table(rows, columns)
    print(f"# {len(pics)} frames, {pictures[0].codec}, PQFs from {source} (radius {radius}): {indices(flags)}")
    if psnrs is not None:
        labels = indices(pqfs_from_psnr(psnrs))
        print(f"# PSNR-peak PQFs (MFQEv2 labels, radius 1): {labels}; mean Y-PSNR {sum(psnrs) / len(psnrs):.4f} dB")
    if args.csv is not None:
        _write_csv(args.csv, rows, columns)
    if args.plot is not None:
        _plot(args.plot, args.input.name, pics, flags, psnrs, scores)
    if source != "qp":
        # The table is complete, but the stream is damaged (or lacks parameter sets): say so in
        # the exit status, as `vsqe run` and `vsqe eval` do for frames they could not decode.
        from vsqe.errors import FramesLostError

        unknown = sum(q is None for q in qps)
        raise FramesLostError(
            f"{args.input}: QP unknown for {unknown} of {len(pics)} frames (slice headers unreadable); "
            f"PQFs from the {source} fallback"
        )
    return 0


def _s(v: object) -> str:
    return "?" if v is None else str(v)


def _fit(values: list[float], n: int, what: str) -> list[float]:
    if len(values) != n:
        log.warning(f"{len(values)} {what} for {n} frames in the bitstream; using the first {min(n, len(values))}")
    values = values[:n]
    return values + [float("nan")] * (n - len(values))


def _psnrs(ref: Path, stream: Path) -> list[float]:
    from vsqe.errors import InputError
    from vsqe.pqf.estimator import decode_luma
    from vsqe.pqf.evaluate import luma_psnr

    if not ref.exists():
        raise InputError(f"{ref}: no such file")
    out = []
    for (r, rd), (d, dd) in zip(decode_luma(ref), decode_luma(stream)):
        if r.shape != d.shape:
            raise InputError(f"{ref}: frame size {r.shape[1]}x{r.shape[0]} differs from the stream's {d.shape[1]}x{d.shape[0]}")
        out.append(luma_psnr(r, rd, d, dd))
    return out


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).rjust(widths[c]) for c in columns))


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    from vsqe.io.atomic import atomic_output

    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:  # complete or absent
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def _plot(path: Path, title: str, pics: list, flags: list[bool], psnrs: list[float] | None,
          scores: list[float] | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vsqe.io.atomic import atomic_output

    x = list(range(len(pics)))
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, len(pics) * 0.25)), 3.6))
    qp = [p.qp if p.qp is not None else float("nan") for p in pics]
    ax.step(x, qp, where="mid", color="tab:blue", label="slice QP")
    ax.plot([i for i in x if flags[i]], [qp[i] for i in x if flags[i]], "^", color="tab:red", markersize=8, label="PQF")
    ax.set_xlabel("frame (display order)")
    ax.set_ylabel("QP")
    ax.invert_yaxis()  # lower QP = better: peaks point up
    handles, labels = ax.get_legend_handles_labels()
    if psnrs is not None or scores is not None:
        ax2 = ax.twinx()
        if psnrs is not None:
            ax2.plot(x, psnrs, ".-", color="tab:green", label="Y-PSNR (dB)")
            ax2.set_ylabel("Y-PSNR (dB)")
        elif scores is not None:
            ax2.plot(x, scores, ".-", color="tab:orange", label="NR estimate")
            ax2.set_ylabel("NR estimate")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (python -m vsqe.pqf.cli): the same as `vsqe pqf`."""
    from vsqe.cli import main as vsqe_main

    return vsqe_main(["pqf", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
