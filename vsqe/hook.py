"""The Python side of libvsqe_hook (cpp/hook): what an HM experiment runs per picture.

The C library (cpp/hook/vsqe_hook.cpp) embeds Python, creates one `HookSession` per handle and
calls it with numpy-ready memoryviews of the host's picture buffers. The session owns an `Enhancer`
and the stream state of one of two modes:

- post (post-filter): pictures are pushed in output (POC) order and go through
  `Enhancer.enhance_stream`, the generator that `vsqe run` drives. It is the same window code
  (pipeline.window.sliding_windows, or pipeline.segments for recurrent models), fed from a queue.
  The output equals `vsqe run` bit for bit, and the clip ends at `flush`. The generator is run as a
  coroutine on a worker thread, and only while `pull` waits for it (see `_StreamDriver`). So what
  `pull` returns depends only on what was pushed, and the model never runs in the background.
  PQF models (MFQEv2) find their PQFs from the pushed pictures' slice QPs (the bounded
  `pqfs_from_qp` rule of pipeline/pqf_schedule.py, as `vsqe run --pqf qp`) and schedule them with
  a fixed look-ahead (option pqf_lookahead, default 8); `delay` is the flag rule's delay plus the
  look-ahead, an upper bound: a PQF's arrival releases the frames waiting for it earlier.
- in-loop: each reconstructed picture is filtered in place, in decoding order. The window is
  `window_indices` applied to a *causal clip*: the pictures filtered before (at most
  `history` of them, the latest in decoding order) plus the current one, sorted by POC. In a
  low-delay stream, the past half of the window is made of the previously filtered pictures, and
  the future half replicates the current picture (the "replicate" border rule, seen from the
  clip's causal end). Then `Enhancer.enhance_window` runs, as in `vsqe run` and the VapourSynth
  filter.

Buffers: the host's samples (int16 or int32 Pel at the internal bit depth) are viewed, not
copied, as numpy arrays with the host's strides. Only the visible area is ever read or written.
They are turned into float in one place, vsqe.io.formats (`plane_to_float`), and written back
through `float_to_plane`, which rounds and clips to the bit depth. Post mode copies each pushed
picture once, because the host reuses its buffer. In-loop mode keeps copies of the filtered
pictures as the references for later windows. No view of the host's memory outlives a call.

`library_path()` / `include_dir()` find the installed libvsqe_hook.so and vsqe_hook.h.
"""
from __future__ import annotations

import os
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from vsqe.errors import BackendError, CheckpointError, FormatError, ModelError, VsqeError
from vsqe.io.formats import PixelFormat, VideoFrame, check_frame_size

# Status codes of vsqe_hook.h (enum vsqe_hook_status).
OK = 0
E_ARG = -1
E_FORMAT = -2
E_MODEL = -3
E_BACKEND = -4
E_STATE = -5
E_CLOSED = -6
E_PYTHON = -7
E_INTERNAL = -8

MODE_POST = 0
MODE_INLOOP = 1
# HM's ChromaFormat and SliceType values.
CHROMA_FORMATS = {0: "400", 1: "420", 2: "422", 3: "444"}
SLICE_TYPES = {0: "B", 1: "P", 2: "I"}
SLICE_CODES = {v: k for k, v in SLICE_TYPES.items()}
_SAMPLE_DTYPES = {2: np.dtype(np.int16), 4: np.dtype(np.int32)}
MAX_SIZE = 16384  # per side; HEVC level 6.2 allows 8192 x 4320
MAX_BIT_DEPTH = 16


class HookStateError(VsqeError):
    """A call that is not valid now: wrong mode, push after flush, a closed session."""


class HookArgumentError(VsqeError):
    """A malformed argument: a bad mode or sample size, a stride shorter than a row."""


def error_status(exc: BaseException) -> tuple[int, str]:
    """(status code, one-line message) for an exception that reached the C library."""
    if isinstance(exc, HookArgumentError):
        code = E_ARG
    elif isinstance(exc, HookStateError):
        code = E_STATE
    elif isinstance(exc, FormatError):
        code = E_FORMAT
    elif isinstance(exc, (ModelError, CheckpointError)):
        code = E_MODEL
    elif isinstance(exc, BackendError):
        code = E_BACKEND
    else:
        code = E_INTERNAL
    # The C side is done with the exception once it has the message: drop the frames its
    # traceback holds, which may still hold views of the host's picture.
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    if isinstance(exc, VsqeError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return code, " ".join(text.split()) or type(exc).__name__


# vsqe_hook_open_with_options keys -> Enhancer keywords, with the parser of each value.
_OPTIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    "pqf_weights": ("pqf_weights", str),
    "pqf_lookahead": ("pqf_lookahead", int),
}


def parse_options(options: Sequence[str] | None) -> dict[str, object]:
    """"key=value" strings of vsqe_hook_open_with_options -> Enhancer keywords."""
    out: dict[str, object] = {}
    for text in options or ():
        key, sep, value = text.partition("=")
        if not sep or key not in _OPTIONS:
            known = ", ".join(f"{k}=..." for k in _OPTIONS)
            raise HookArgumentError(f"unknown option {text!r} (known: {known})")
        name, parse = _OPTIONS[key]
        try:
            out[name] = parse(value)
        except ValueError:
            raise HookArgumentError(f"option {key}: bad value {value!r}") from None
    return out


class _Closed(Exception):
    """Raised into the worker's source when the session is closed before the stream ended."""


class _StreamDriver:
    """Drives a stream function (`Enhancer.enhance_stream`) as a coroutine fed by `push`.

    The stream function pulls its frames from an iterator. Here that iterator is a queue that can
    run empty before the stream ends, so the generator runs on a worker thread that can be
    suspended. The worker never runs at the same time as the caller. `pull` hands control to it and
    waits until it either produces one output or finds the queue empty (or the stream finishes), then
    takes control back. The model thus runs only inside `pull`, on the caller's behalf. Nothing runs
    in the background while the host does its own work, or while it exits. The outputs available
    after n pushes are exactly those that the stream function can form from n frames.
    """

    def __init__(self, stream: Callable[[Iterable[VideoFrame]], Iterator[VideoFrame]]) -> None:
        self._stream = stream
        self._cv = threading.Condition()
        self._inputs: deque[VideoFrame] = deque()
        self._outputs: deque[VideoFrame] = deque()
        self._worker_turn = False  # True while the worker runs and the caller waits
        self._ended = False
        self._closed = False
        self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vsqe-hook-post", daemon=True)
        self._thread.start()

    # -- worker side (holds the condition's lock when it calls these) ---------------------------
    def _wait_for_turn(self) -> None:
        while not self._worker_turn:
            self._cv.wait()
        if self._closed:
            raise _Closed

    def _give_back(self) -> None:
        self._worker_turn = False
        self._cv.notify_all()
        self._wait_for_turn()

    def _source(self) -> Iterator[VideoFrame]:
        while True:
            with self._cv:
                while not self._inputs and not self._ended:
                    self._give_back()  # starved: the caller has to push (or flush) first
                if not self._inputs:
                    return  # flushed: the clip ends here
                frame = self._inputs.popleft()
            yield frame

    def _run(self) -> None:
        try:
            with self._cv:
                self._wait_for_turn()
            for out in self._stream(self._source()):
                with self._cv:
                    self._outputs.append(out)
                    self._give_back()
        except _Closed:
            pass
        except BaseException as exc:  # reported to the caller by the next push / pull / flush
            with self._cv:
                self._error = exc
        finally:
            with self._cv:
                self._done = True
                self._worker_turn = False
                self._cv.notify_all()

    # -- caller side -----------------------------------------------------------------------------
    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run_worker(self) -> None:
        self._worker_turn = True
        self._cv.notify_all()
        while self._worker_turn:
            self._cv.wait()

    def push(self, frame: VideoFrame) -> None:
        with self._cv:
            self._raise_error()
            if self._ended:
                raise HookStateError("push after flush: the stream has ended")
            self._inputs.append(frame)

    def end(self) -> None:
        with self._cv:
            self._raise_error()
            if self._ended:
                raise HookStateError("flush called twice")
            self._ended = True

    def pull(self) -> VideoFrame | None:
        with self._cv:
            if not self._outputs and not self._done:
                self._run_worker()
            if self._outputs:
                return self._outputs.popleft()
            self._raise_error()
            return None

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._inputs.clear()
            self._outputs.clear()
            if not self._done:
                self._run_worker()  # the worker wakes up, sees the session closed and ends
        self._thread.join()


class HookSession:
    """One handle of libvsqe_hook: a model on one stream, as post-filter or in-loop filter."""

    def __init__(
        self,
        model: str = "stdf",
        weights: str | None = None,
        backend: str | None = None,
        width: int = 0,
        height: int = 0,
        bit_depth: int = 8,
        chroma_format: int = 1,
        mode: int = MODE_POST,
        sample_bytes: int = 2,
        threads: int | None = None,
        allow_untrained: bool = False,
        options: Sequence[str] | None = None,
    ) -> None:
        from vsqe.models import get_model_spec
        from vsqe.pipeline.enhancer import Enhancer

        if mode not in (MODE_POST, MODE_INLOOP):
            raise HookArgumentError(f"unknown mode {mode} (0 = post, 1 = in-loop)")
        if chroma_format not in CHROMA_FORMATS:
            raise HookArgumentError(f"unknown chroma format {chroma_format} (0 = 4:0:0, 1 = 4:2:0, 2 = 4:2:2, 3 = 4:4:4)")
        if sample_bytes not in _SAMPLE_DTYPES:
            raise HookArgumentError(f"sample_bytes must be 2 (int16 Pel) or 4 (int32 Pel), got {sample_bytes}")
        if not 8 <= bit_depth <= MAX_BIT_DEPTH:
            raise FormatError(f"bit depth {bit_depth} is not supported (8 to {MAX_BIT_DEPTH})")
        if sample_bytes == 2 and bit_depth > 15:
            raise FormatError(
                f"bit depth {bit_depth} does not fit int16 samples; build HM with HIGH_BITDEPTH and pass sample_bytes 4"
            )
        chroma = CHROMA_FORMATS[chroma_format]
        fmt = PixelFormat(chroma, bit_depth)
        if not (0 < width <= MAX_SIZE and 0 < height <= MAX_SIZE):
            raise FormatError(f"picture size {width}x{height} is not supported (1 to {MAX_SIZE} per side)")
        check_frame_size(width, height)
        sx, sy = fmt.chroma_shift()
        if width % (1 << sx) or height % (1 << sy):
            raise FormatError(
                f"picture size {width}x{height} is not a whole number of 4:{chroma[1]}:{chroma[2]} chroma samples"
            )
        spec = get_model_spec(model)  # unknown names fail here, before any network is built
        scale = getattr(spec, "scale", 1)
        if scale != 1:
            raise ModelError(f"model {model!r} changes the picture size (x{scale}); the hook needs same-size output")
        extra = parse_options(options)
        temporal = getattr(spec, "temporal", "window")
        if mode == MODE_INLOOP and temporal == "pqf":
            raise ModelError(
                f"model {model!r} schedules peak-quality frames with a look-ahead (a frame waits for the next PQF), "
                "which an in-loop filter cannot wait for; use post mode"
            )
        if mode == MODE_INLOOP and temporal != "window":
            raise ModelError(f"model {model!r} is recurrent; in-loop mode needs a window model (e.g. stdf)")
        if spec.color == "rgb" and chroma == "400":
            raise FormatError(f"model {model!r} needs colour input; the stream is 4:0:0")

        self.mode = mode
        self.fmt = fmt
        self.width, self.height = width, height
        self.shapes = fmt.plane_shapes(width, height)
        self.dtype = _SAMPLE_DTYPES[sample_bytes]
        self.enhancer = Enhancer(
            model,
            weights=weights or None,
            backend=backend or "auto",
            threads=threads if threads and threads > 0 else None,
            require_weights=not allow_untrained,
            **extra,
        )
        if self.enhancer.weights_path is None:
            sys.stderr.write(
                f"vsqe_hook: WARNING: model {model!r} runs with RANDOM weights (allow_untrained): not an enhancement\n"
            )
        self.spec = self.enhancer.spec
        self._closed = False
        self._pushed = 0
        self._stream: _StreamDriver | None = None
        # In-loop: filtered pictures in decoding order (owned copies), the references of later windows.
        self._history: list[VideoFrame] = []
        self.history = 4 * self.spec.radius
        if mode == MODE_POST:
            self._stream = _StreamDriver(self.enhancer.enhance_stream)

    # -- buffers ---------------------------------------------------------------------------------
    def _views(self, planes: Sequence[object], strides: Sequence[int]) -> list[np.ndarray]:
        """numpy views of the visible area of each plane (no copy): shape (h, w), host strides."""
        itemsize = self.dtype.itemsize
        if len(planes) < len(self.shapes) or len(strides) < len(self.shapes):
            raise HookArgumentError(f"{len(self.shapes)} planes and strides needed, got {len(planes)} and {len(strides)}")
        out = []
        for i, ((h, w), buf, stride) in enumerate(zip(self.shapes, planes, strides)):
            if stride < w:
                raise HookArgumentError(f"plane {i}: stride {stride} is shorter than its width {w}")
            out.append(np.ndarray((h, w), dtype=self.dtype, buffer=buf, strides=(stride * itemsize, itemsize)))
        return out

    def _check_open(self, mode: int) -> None:
        if self._closed:
            raise HookStateError("the session is closed")
        if self.mode != mode:
            names = {MODE_POST: "post", MODE_INLOOP: "in-loop"}
            raise HookStateError(f"a {names[mode]}-mode call on a handle opened in {names[self.mode]} mode")

    def _frame(self, planes: list[np.ndarray], poc: int, qp: int, slice_type: int, tlayer: int, index: int) -> VideoFrame:
        return VideoFrame(
            planes=planes,
            fmt=self.fmt,
            index=index,
            pict_type=SLICE_TYPES.get(slice_type),
            qp=qp,
            poc=poc,
            extra={"temporal_layer": tlayer, "slice_type": slice_type},
        )

    @property
    def delay(self) -> int:
        """Pictures that a pushed picture waits in post mode before it can be pulled (before flush)."""
        if self.mode == MODE_INLOOP:
            return 0
        if self.spec.temporal == "pqf":
            return self.enhancer.pqf_stream_delay
        plan = getattr(self.enhancer, "segment_plan", None)
        if plan is not None:
            return plan.length + plan.overlap - 1
        return self.spec.radius * (1 if self.spec.border == "replicate" else 2)

    # -- post-filter -----------------------------------------------------------------------------
    def push(self, planes: Sequence[object], strides: Sequence[int], poc: int, qp: int, slice_type: int, tlayer: int) -> None:
        self._check_open(MODE_POST)
        # One copy: the host reuses (or releases) its picture once the call returns.
        copies = [np.array(v) for v in self._views(planes, strides)]
        frame = self._frame(copies, poc, qp, slice_type, tlayer, self._pushed)
        assert self._stream is not None
        self._stream.push(frame)
        self._pushed += 1

    def pull(self, planes: Sequence[object], strides: Sequence[int]) -> tuple[int, int, int, int] | None:
        self._check_open(MODE_POST)
        views = self._views(planes, strides)  # checked before anything is taken from the queue
        assert self._stream is not None
        frame = self._stream.pull()
        if frame is None:
            return None
        for dst, src in zip(views, frame.planes):
            np.copyto(dst, src, casting="unsafe")  # samples are in [0, peak]: no wrap-around
        extra = frame.extra or {}
        return (
            int(frame.poc if frame.poc is not None else frame.index),
            int(frame.qp if frame.qp is not None else 0),
            int(extra.get("slice_type", SLICE_CODES.get(frame.pict_type or "", 0))),
            int(extra.get("temporal_layer", 0)),
        )

    def flush(self) -> None:
        self._check_open(MODE_POST)
        assert self._stream is not None
        self._stream.end()

    # -- in-loop ---------------------------------------------------------------------------------
    def causal_window(self, current: VideoFrame) -> list[VideoFrame]:
        """The model's window for `current`: `window_indices` on the causal clip (see the module doc)."""
        from vsqe.pipeline.window import window_indices

        clip = sorted([*self._history, current], key=lambda f: f.poc)
        n = next(i for i, f in enumerate(clip) if f is current)
        return [clip[i] for i in window_indices(n, self.spec.radius, len(clip), self.spec.border)]

    def filter_inloop(self, planes: Sequence[object], strides: Sequence[int], poc: int, qp: int, slice_type: int, tlayer: int) -> None:
        self._check_open(MODE_INLOOP)
        views = self._views(planes, strides)
        current = self._frame(views, poc, qp, slice_type, tlayer, poc)
        # A new coded video sequence (IDR: an I picture at POC 0, or a POC seen before): its
        # pictures cannot refer to the old ones, so neither does the window.
        if any(f.poc == poc for f in self._history) or (slice_type == SLICE_CODES["I"] and poc == 0):
            self._history.clear()
        out = self.enhancer.enhance_window(self.causal_window(current))
        for dst, src in zip(views, out.planes):
            if src is not dst:
                np.copyto(dst, src, casting="unsafe")
        if self.history > 0:
            # Keep the filtered picture as a reference; planes still viewing the host's buffer are copied.
            own = [np.array(p) if any(p is v for v in views) else p for p in out.planes]
            self._history.append(out.with_planes(own))
            del self._history[: -self.history]

    # -- life cycle ------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._history.clear()
        if self._stream is not None:
            self._stream.close()


# --- where the native library is -----------------------------------------------------------------

LIBRARY_NAME = "libvsqe_hook.so" if sys.platform != "darwin" else "libvsqe_hook.dylib"


def _package_dirs() -> list[Path]:
    import vsqe

    # An editable install puts CMake's installed files in site-packages/vsqe, beside the sources.
    return [Path(p) for p in vsqe.__path__]


def library_path() -> Path | None:
    """The installed libvsqe_hook, or None when it was not built (no Python embedding library)."""
    override = os.environ.get("VSQE_HOOK_LIBRARY")
    if override:
        return Path(override) if Path(override).is_file() else None
    for d in _package_dirs():
        path = d / "lib" / LIBRARY_NAME
        if path.is_file():
            return path
    return None


def include_dir() -> Path | None:
    """The folder holding the installed vsqe_hook.h."""
    for d in _package_dirs():
        if (d / "include" / "vsqe_hook.h").is_file():
            return d / "include"
    return None
