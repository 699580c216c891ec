"""Per-frame Y-PSNR curves as a PNG (matplotlib's Agg canvas: no display, no global pyplot state)."""
from __future__ import annotations

import os

from vsqe.eval.report import EvalReport


def plot_psnr(report: EvalReport, path: str | os.PathLike, title: str | None = None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = [f.index for f in report.frames]
    dist_y = report.mean_dist()[0]
    ax.plot(x, [f.dist[0] for f in report.frames], marker=".", label=f"dist ({dist_y:.3f} dB)")
    if report.enh is not None:
        enh_y = report.mean_enh()[0]  # type: ignore[index]
        ax.plot(x, [f.enh[0] for f in report.frames], marker=".",  # type: ignore[index]
                label=f"enh ({enh_y:.3f} dB, {enh_y - dist_y:+.3f})")
    # Intra frames are where quality jumps; mark them so the curve reads at a glance.
    for f in report.frames:
        if f.pict_type == "I":
            ax.axvline(f.index, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlabel("frame")
    ax.set_ylabel("Y-PSNR (dB)")
    ax.set_title(title or f"Y-PSNR per frame vs {os.path.basename(report.ref)}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    from vsqe.io.atomic import atomic_output

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
