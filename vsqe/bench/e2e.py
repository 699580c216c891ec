"""End-to-end `vsqe run` throughput, in process: the real decode -> Enhancer -> encode path.

The same functions as vsqe/commands/run.py (open_video, Enhancer, VideoWriter, `_pump` with its
read-ahead and write-behind threads) on a real QP37 HEVC stream of each size: the shared x265 LDP
encodes at 416x240 and 832x480; other sizes are made at bench time from phone_832x480.y4m (scaled
with FFmpeg's swscale through PyAV, encoded with libx265 at QP 37, low-delay P), nothing
downloaded. Frames/s is the steady state: frames written after the first `warmup` ones, over the
time between them, so model build, first-call compilation and pipeline fill are left out as in
the model-only figure.

Next to it: how busy the model was during that time (the fraction of wall time inside the
backend; near 100% means decoding, conversion and encoding hid behind inference), the model's
own rate inside the run (frames per backend-second: below model-only when `vsqe run` tiles the
frame, above 1280x720, or when the codec threads take CPU from inference), and the
process's RSS sampled every 50 ms (peak, and growth after warm-up: flat means bounded memory).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import os
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

from vsqe.errors import InputError

# The shared QP37 x265 streams (same per-frame QPs as the HM encodes), by size.
SHARED_STREAMS = {
    (416, 240): "city_416x240_x265_ldp_qp37.hevc",
    (832, 480): "phone_832x480_x265_ldp_qp37.hevc",
}
SCALE_SOURCE = "phone_832x480.y4m"
# Low-delay P at constant QP 37, as the shared x265 streams (their per-frame QP offsets aside).
X265_PARAMS = "qp=37:bframes=0:keyint=-1:no-scenecut=1:ref=4:aq-mode=0:no-cutree=1:log-level=error"
_RSS_POLL = 0.05  # seconds


def default_data_dir() -> Path:
    """../shared/data beside the repository (VSQE_SHARED_DATA overrides), as the tests use."""
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("VSQE_SHARED_DATA", repo.parent / "shared" / "data"))


def stream_for_size(width: int, height: int, data_dir: Path, tmp: Path, frames: int) -> Path:
    """A real QP37 HEVC stream of this size: a shared one, or one made from the phone clip."""
    shared = SHARED_STREAMS.get((width, height))
    if shared and (data_dir / shared).is_file():
        return data_dir / shared
    source = data_dir / SCALE_SOURCE
    if not source.is_file():
        raise InputError(f"{source}: not found; the end-to-end bench makes its {width}x{height} stream from it")
    out = tmp / f"phone_{width}x{height}_x265_qp37.hevc"
    if not out.is_file():
        make_stream(source, out, width, height, frames)
    return out


def _ping_pong(frames: list) -> Iterator:
    """0 1 .. n-1 n-2 .. 1 0 1 ...: a long stream from a short clip without a cut at the loop."""
    order = list(range(len(frames))) + list(range(len(frames) - 2, 0, -1))
    return (frames[i] for i in itertools.cycle(order or [0]))


def make_stream(source: Path, out: Path, width: int, height: int, frames: int) -> None:
    """`frames` frames of `source` scaled to width x height, x265 QP 37 into a raw .hevc."""
    import av

    with av.open(str(source)) as src:
        clip = [f.reformat(width=width, height=height, format="yuv420p", interpolation="LANCZOS")
                for f in src.decode(video=0)]
    tmp = out.with_suffix(".part")
    with av.open(str(tmp), "w", format="hevc") as dst:
        stream = dst.add_stream("libx265", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "x265-params": X265_PARAMS}
        for i, frame in enumerate(itertools.islice(_ping_pong(clip), frames)):
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
    tmp.replace(out)


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def release_memory() -> None:
    """Give freed heap back to the OS, so RSS during the run is the run's, not an earlier size's."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class RssSampler:
    """Samples RSS in a thread: its peak, and a mark (the RSS at a moment the caller picks)."""

    def __init__(self) -> None:
        self.peak = rss_mb()
        self.marked: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vsqe-bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(_RSS_POLL):
            self.peak = max(self.peak, rss_mb())

    def mark(self) -> None:
        self.marked = rss_mb()

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end = rss_mb()
        self.peak = max(self.peak, self.end)


class TimedBackend:
    """Wraps a backend and records each call's (start, end): how busy inference kept the run."""

    def __init__(self, backend) -> None:
        self.inner = backend
        self.calls: list[tuple[float, float]] = []

    @property
    def name(self) -> str:
        return self.inner.name  # auto's changes at its first call

    def __getattr__(self, attr: str):
        # The Enhancer asks auto for its tile (`tile_for`); a plain backend has none.
        return getattr(self.inner, attr)

    def __call__(self, x):
        start = time.perf_counter()
        try:
            return self.inner(x)
        finally:
            self.calls.append((start, time.perf_counter()))

    def busy(self, t0: float, t1: float) -> float:
        """Seconds inside the backend between t0 and t1."""
        return sum(max(0.0, min(end, t1) - max(start, t0)) for start, end in self.calls)


class TimedWriter:
    """The VideoWriter as `_pump` sees it, noting when each frame was handed to the encoder."""

    def __init__(self, writer, on_frame: Callable[[int], None]) -> None:
        self._writer = writer
        self._on_frame = on_frame
        self.times: list[float] = []

    def write(self, frame) -> None:
        self._writer.write(frame)
        self.times.append(time.perf_counter())
        self._on_frame(len(self.times))

    @property
    def frames_written(self) -> int:
        return self._writer.frames_written


@dataclass
class EndToEnd:
    frames: int  # frames written
    fps: float  # steady state
    busy: float  # fraction of the steady-state wall time spent inside the backend
    model_fps_in_run: float  # frames per second of backend time in the run (tiles included)
    tile: int | None  # the tile size the Enhancer chose (None: whole frames)
    peak_rss_mb: float
    rss_growth_mb: float  # RSS at the end minus RSS after the warm-up frames


def run_end_to_end(
    stream: Path,
    out_dir: Path,
    enhancer,
    frames: int | None,
    warmup: int,
) -> EndToEnd:
    """`vsqe run STREAM OUT.mkv` with the given Enhancer (default encoder settings), timed."""
    from vsqe.commands.run import _pump
    from vsqe.io.decode import open_video
    from vsqe.io.encode import EncodeSettings, VideoWriter, plan_output

    timed = TimedBackend(enhancer.backend)
    enhancer.backend = timed
    release_memory()
    reader = open_video(str(stream))
    try:
        info = reader.info
        plan = plan_output(str(out_dir / f"e2e_{stream.stem}.mkv"))
        writer = VideoWriter(plan, info, EncodeSettings(codec=plan.codec))
        total = info.frame_count if frames is None else min(frames, info.frame_count or frames)
        with RssSampler() as rss:
            timed_writer = TimedWriter(writer, lambda n: rss.mark() if n == warmup + 1 else None)
            with writer:
                _pump(reader, enhancer, timed_writer, total, frames, progress=False)
    finally:
        reader.close()
        enhancer.backend = timed.inner
    return _summarise(timed_writer.times, timed, enhancer, info, warmup, rss)


def _summarise(times: list[float], timed: TimedBackend, enhancer, info, warmup: int, rss: RssSampler) -> EndToEnd:
    n = len(times)
    if n == 0:
        raise InputError("the end-to-end run wrote no frames")
    # Steady state: from the frame after the warm-up ones to the last; with too few frames for
    # that (tests), from the first call of the backend.
    w = min(warmup, n - 2) if n >= 2 else 0
    t0 = times[w] if n >= 2 else timed.calls[0][0]
    t1 = times[-1]
    count = n - 1 - w if n >= 2 else n
    seconds = max(t1 - t0, 1e-9)
    marked = rss.marked if rss.marked is not None else rss.end
    busy = timed.busy(t0, t1)
    return EndToEnd(
        frames=n,
        fps=count / seconds,
        busy=busy / seconds,
        model_fps_in_run=count / max(busy, 1e-9),
        tile=enhancer._tile_for(info.height, info.width),
        peak_rss_mb=rss.peak,
        rss_growth_mb=rss.end - marked,
    )
