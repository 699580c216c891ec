"""`make longrun`: memory over a long stream, through `vsqe run` and through vspipe.

    .venv/bin/python tests/hardening/longrun.py [--frames 3000] [--size 64x64] [--out build/longrun]
                                                [--png docs/reliability_rss.png] [--only run|vspipe]

Makes a synthetic FRAMES-frame clip (a 64x64 window panning over the city clip, x264 in Matroska),
then runs it through `vsqe run` (-> x265 .mkv) and through `vspipe samples/enhance.vpy` (-> y4m on a
pipe to /dev/null), both with the untrained STDF, sampling the process's resident memory (VmRSS
from /proc/PID/status) every second and its progress (frames done) from stderr. Memory must stay
flat: after the warm-up (the first 10% of frames), the RSS at the end may exceed the RSS at 10% by
at most --max-growth-mb (default 64 MB), comparing the median RSS over frames 10-20% with the median
over 80-95% (the end-of-stream flush shows in the peak instead). A leak of one 64x64 frame per frame
would add ~6 MB per 1000 frames, a leaked window of tensors far more. vspipe runs twice: as shipped,
and with BestSource's frame cache (100 MB by default, it holds every decoded frame of a small clip)
cut to 1 MB, which leaves what vsqe.vs itself holds. Writes OUT/longrun.json (samples and summary),
a PNG of the two curves, and prints the summary; exits 1 if either run failed or grew.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("VSQE_SHARED_DATA", REPO.parent / "shared" / "data"))


def make_clip(path: Path, frames: int, width: int, height: int) -> None:
    """A window of width x height panning (and bouncing) over the first 30 city frames."""
    import av
    import numpy as np

    sys.path.insert(0, str(REPO))
    from vsqe.io.decode import open_video

    with open_video(SHARED / "city_416x240.y4m") as reader:
        source = [[p.copy() for p in f.planes] for f in reader]
    H, W = source[0][0].shape
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "qp": "32", "bf": "0"}
        span_x, span_y = (W - width) // 2, (H - height) // 2
        for i in range(frames):
            y, u, v = source[i % len(source)]
            t = i % (2 * span_x)
            x0 = (t if t < span_x else 2 * span_x - t) & ~1  # pan right, then back
            y0 = ((i // 7) % span_y) & ~1
            frame = av.VideoFrame(width, height, "yuv420p")
            for src, plane, (sx, sy) in zip(
                (y[y0:y0 + height, x0:x0 + width], u[y0 // 2:(y0 + height) // 2, x0 // 2:(x0 + width) // 2],
                 v[y0 // 2:(y0 + height) // 2, x0 // 2:(x0 + width) // 2]),
                frame.planes, ((1, 1), (2, 2), (2, 2)),
            ):
                np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: src.shape[0], : src.shape[1]] = src
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # pid (comm) state ppid ...; comm may hold spaces: split after the last ')'.
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _tree_rss_mb(pid: int) -> float | None:
    """RSS of a process and its descendants (the vspipe wrapper runs the real vspipe as a child)."""
    total, todo, seen = None, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        rss = _rss_mb(p)
        if rss is not None:
            total = (total or 0) + rss
            todo.extend(_children(p))
    return total


def measure(name: str, cmd: list[str], progress: re.Pattern, env: dict[str, str]) -> dict:
    """Runs cmd, sampling RSS every second and the frames done (from stderr) as they are printed."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    frames: list[tuple[float, int]] = []
    tail: list[str] = []

    def read_stderr() -> None:
        buf = b""
        while chunk := proc.stderr.read1(4096):  # type: ignore[union-attr]
            buf += chunk
            *lines, buf = re.split(rb"[\r\n]", buf)
            for raw in lines:
                line = raw.decode(errors="replace")
                if m := progress.search(line):
                    frames.append((time.monotonic() - start, int(m.group(1))))
                elif line.strip():
                    tail.append(line)
                    del tail[:-20]

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        rss = _tree_rss_mb(proc.pid)
        if rss is not None:
            samples.append((time.monotonic() - start, rss))
        time.sleep(1.0)
    reader.join(timeout=10)
    return {"name": name, "cmd": cmd, "returncode": proc.returncode, "seconds": time.monotonic() - start,
            "samples": samples, "frames": frames, "stderr_tail": tail}


def summarise(result: dict, total_frames: int, max_growth: float) -> dict:
    samples, frames = result["samples"], result["frames"]

    def frames_at(t: float) -> float:
        """Frames done at time t, interpolated between progress reports."""
        points = [(0.0, 0)] + frames + [(result["seconds"], total_frames)]
        for (t0, f0), (t1, f1) in zip(points, points[1:]):
            if t0 <= t <= t1:
                return f0 + (f1 - f0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1)
        return total_frames

    curve = [(frames_at(t), rss) for t, rss in samples]

    def median_between(lo: float, hi: float) -> float | None:
        values = sorted(rss for f, rss in curve if lo * total_frames <= f <= hi * total_frames)
        return values[len(values) // 2] if values else None

    # Steady state: the median RSS over frames 10-20% (after the warm-up) and over 80-95% (before
    # the end-of-stream flush, whose transient shows in the peak).
    early, late = median_between(0.10, 0.20), median_between(0.80, 0.95)
    peak = max((rss for _, rss in samples), default=None)
    growth = late - early if early is not None and late is not None else None
    ok = result["returncode"] == 0 and growth is not None and growth <= max_growth
    span = 0.75 * total_frames  # frames between the two windows' centres
    return {"name": result["name"], "returncode": result["returncode"], "seconds": round(result["seconds"], 1),
            "fps": round(total_frames / result["seconds"], 2), "rss_early_mb": round(early or 0, 1),
            "rss_late_mb": round(late or 0, 1), "peak_rss_mb": round(peak or 0, 1),
            "growth_mb": round(growth, 1) if growth is not None else None,
            "growth_mb_per_1000_frames": round(growth / span * 1000, 2) if growth is not None else None,
            "ok": ok, "curve": [(round(f, 1), round(r, 1)) for f, r in curve]}


def plot(summaries: list[dict], path: Path, total: int, size: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for s in summaries:
        xs, ys = zip(*s["curve"]) if s["curve"] else ((), ())
        ax.plot(xs, ys, label=f"{s['name']}: {s['rss_early_mb']:.0f} -> {s['rss_late_mb']:.0f} MB "
                               f"(peak {s['peak_rss_mb']:.0f}), {s['fps']:.1f} fps")
    ax.axvline(0.1 * total, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(f"frames done ({size}, {total} frames; dotted: end of warm-up)")
    ax.set_ylabel("resident memory (MB)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    ax.set_title("vsqe memory over a long stream (VmRSS, sampled every second)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--size", default="64x64")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "longrun")
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "reliability_rss.png")
    ap.add_argument("--max-growth-mb", type=float, default=64.0)
    ap.add_argument("--only", choices=("run", "vspipe"))
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    clip = args.out / f"synthetic_{args.size}_{args.frames}.mkv"
    if not clip.exists():
        print(f"longrun: making {clip} ({args.frames} frames, {args.size})", flush=True)
        make_clip(clip, args.frames, width, height)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    py = sys.executable
    runs = []
    if args.only in (None, "run"):
        runs.append(("vsqe run", [py, "-m", "vsqe", "run", str(clip), str(args.out / "out.mkv"), "--allow-untrained",
                                  "--preset", "ultrafast"], re.compile(r"^(\d+)/\d+ frames")))
    if args.only in (None, "vspipe"):
        vspipe = str(Path(py).with_name("vspipe"))
        script = REPO / "samples" / "enhance.vpy"
        runs.append(("vspipe", [vspipe, "-p", "-c", "y4m", str(script), "-", "-a", f"input={clip}",
                                "-a", "allow_untrained=1"], re.compile(r"Frame: (\d+)/\d+")))
        # The same with BestSource's frame cache (100 MB by default) at 1 MB: what vsqe.vs itself holds.
        text = script.read_text()
        small = text.replace("core.bs.VideoSource(source=source)", "core.bs.VideoSource(source=source, cachesize=1)")
        if small != text:
            (args.out / "enhance_bs_cache1.vpy").write_text(small)
            runs.append(("vspipe, bs cachesize=1", [vspipe, "-p", "-c", "y4m", str(args.out / "enhance_bs_cache1.vpy"),
                                                    "-", "-a", f"input={clip}", "-a", "allow_untrained=1"],
                         re.compile(r"Frame: (\d+)/\d+")))
    summaries = []
    for name, cmd, progress in runs:
        print(f"longrun: {name}: {' '.join(cmd)}", flush=True)
        result = measure(name, cmd, progress, env)
        summary = summarise(result, args.frames, args.max_growth_mb)
        summary["stderr_tail"] = result["stderr_tail"]
        summaries.append(summary)
        print(f"longrun: {name}: exit {summary['returncode']}, {summary['seconds']} s ({summary['fps']} fps), "
              f"RSS {summary['rss_early_mb']} MB at 10-20% -> {summary['rss_late_mb']} MB at 80-95% of the frames "
              f"(growth {summary['growth_mb']} MB, {summary['growth_mb_per_1000_frames']} MB/1000 frames), "
              f"peak {summary['peak_rss_mb']} MB: {'flat' if summary['ok'] else 'FAILED'}", flush=True)
        if summary["returncode"] != 0:
            print("\n".join(result["stderr_tail"]), file=sys.stderr)
    previous = args.out / "longrun.json"
    if args.only and previous.exists():  # keep the other run's curve for the plot
        kept = [s for s in json.loads(previous.read_text())["runs"] if s["name"] not in {s2["name"] for s2 in summaries}]
        summaries = kept + summaries
    (args.out / "longrun.json").write_text(json.dumps({"frames": args.frames, "size": args.size, "runs": summaries}))
    plot(summaries, args.png, args.frames, args.size)
    print(f"longrun: {args.out / 'longrun.json'}, {args.png}")
    return 0 if all(s["ok"] for s in summaries) else 1


if __name__ == "__main__":
    raise SystemExit(main())
