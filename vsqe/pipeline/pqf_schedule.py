"""Streaming PQF scheduling for MFQEv2: which two reference frames enhance each frame.

Model-agnostic and pure: frames are opaque objects, only the PQF flags matter. Two entry points
give the same pairing (docs/mfqev2.md):

* `schedule(frames_with_flags, max_lookahead)`: a generator over (frame, is_pqf) in display order
  yielding (frame, left_ref, right_ref, is_pqf) in display order, holding at most
  max_lookahead + 2 frames (the window ahead of the oldest waiting frame, plus the previous PQF);
* `triplet_for(n, pqf_flags, max_lookahead)`: the (left, right) indices for frame n, for random
  access (the VapourSynth filter).

Rules (PowerVQE's ldp_dataset.py, models.md §3.2, made causal with a bounded look-ahead):

* non-PQF n: left = the last PQF before n; right = the first PQF after n, searched among frames
  n+1 .. n+max_lookahead only.
* PQF n: left = the previous PQF; right = the next PQF (same bounded search): the PQF model
  enhances a PQF from its neighbouring PQFs.
* No PQF before n (clip start, or a stream whose first frame is not a PQF): left = n itself.
  For a PQF that is PowerVQE's rule (first PQF -> (PQF0, PQF0, PQF1)); for the leading non-PQFs
  of a stream starting without a PQF we take the frame itself rather than the next PQF, which
  keeps the rule causal and symmetric with the end rule.
* No PQF ahead before the clip ends: right = n itself - PowerVQE's rule (frames after the last
  PQF -> (last PQF, frame, frame); last PQF -> (PQF_{m-1}, PQF_m, PQF_m)).
* The clip goes on but no PQF lies within the look-ahead (a long gap, a detector miss): right =
  the available frame nearest to where the next PQF would be, frame n + max_lookahead (the
  farthest frame the window holds). The MFQEv2 paper (and mfqev2.0) always reaches the next PQF;
  the cap bounds delay and memory.

References are always the compressed input frames (never enhanced ones), as in the paper and
PowerVQE, so the schedule never waits on the model.
"""
from __future__ import annotations

import statistics
from collections import deque
from typing import Iterable, Iterator, Sequence, TypeVar

from vsqe.errors import FormatError
from vsqe.pqf.detect import QP_RADIUS, peak_flags

T = TypeVar("T")

MIN_LOOKAHEAD = 4


def default_lookahead(pqf_flags: Sequence[bool], minimum: int = MIN_LOOKAHEAD) -> int:
    """2x the median gap between consecutive PQFs, at least `minimum` (4: PowerVQE's LDP period)."""
    idx = [i for i, f in enumerate(pqf_flags) if f]
    gaps = [b - a for a, b in zip(idx, idx[1:])]
    if not gaps:
        return minimum
    return max(minimum, int(2 * statistics.median(gaps)))


def _check_lookahead(max_lookahead: int) -> None:
    if max_lookahead < 1:
        raise ValueError(f"max_lookahead must be at least 1, got {max_lookahead}")


def _right_ref(n: int, pqf_flags: Sequence[bool], max_lookahead: int) -> int:
    length = len(pqf_flags)
    for j in range(n + 1, min(length, n + max_lookahead + 1)):
        if pqf_flags[j]:
            return j
    # No PQF in reach: the cap frame n+L if the clip reaches it, else (clip end) n itself.
    return n + max_lookahead if n + max_lookahead < length else n


def triplet_for(n: int, pqf_flags: Sequence[bool], max_lookahead: int) -> tuple[int, int]:
    """(left, right) reference indices for frame n; the same pairing as `schedule`."""
    _check_lookahead(max_lookahead)
    if not 0 <= n < len(pqf_flags):
        raise IndexError(f"frame {n} outside a clip of {len(pqf_flags)} frames")
    left = n
    for j in range(n - 1, -1, -1):
        if pqf_flags[j]:
            left = j
            break
    return left, _right_ref(n, pqf_flags, max_lookahead)


def schedule(
    frames_with_flags: Iterable[tuple[T, bool]], max_lookahead: int
) -> Iterator[tuple[T, T, T, bool]]:
    """(frame, is_pqf) in display order -> (frame, left_ref, right_ref, is_pqf) in display order.

    Frame n is emitted as soon as its right reference is known: when a PQF within
    n+1 .. n+max_lookahead arrives, when frame n+max_lookahead arrives, or at the end of the
    input. Delay <= max_lookahead frames; frames held <= max_lookahead + 2 (the window, the
    previous PQF, and the frame being handed out).
    """
    _check_lookahead(max_lookahead)
    # Frames not yet emitted plus the frames after them. Invariant: no PQF in it except possibly
    # at its front (a PQF's arrival flushes everything before it), and its span (newest index -
    # oldest index) < max_lookahead between input frames.
    window: deque[tuple[int, T, bool]] = deque()
    prev_pqf: T | None = None  # the last PQF before window[0] (None: no PQF yet)

    def emit_front(right: T) -> tuple[T, T, T, bool]:
        nonlocal prev_pqf
        _, frame, is_pqf = window.popleft()
        out = (frame, frame if prev_pqf is None else prev_pqf, right, is_pqf)
        if is_pqf:
            prev_pqf = frame
        return out

    for n, (frame, is_pqf) in enumerate(frames_with_flags):
        is_pqf = bool(is_pqf)
        window.append((n, frame, is_pqf))
        if is_pqf:
            # The right reference of every frame still waiting (all within max_lookahead of it).
            while len(window) > 1:
                yield emit_front(frame)
        elif n - window[0][0] >= max_lookahead:
            # The oldest frame saw max_lookahead frames after it and no PQF: use the farthest one.
            yield emit_front(frame)
    frame = None  # the loop variable would keep the newest frame alive
    # End of input: no PQF follows any waiting frame, and none reached its cap: each is its own
    # right reference (PowerVQE's end rule).
    while window:
        yield emit_front(window[0][1])


# --- PQF flags, shared by every front end ------------------------------------------------------
#
# vsqe.pqf.detect.peak_flags judges a plateau (a run of equal values) by the frames after its end,
# so a long plateau (constant QP, all-intra at one QP) would need unbounded look-ahead in a stream.
# The front ends that feed the scheduler (vsqe run, the VapourSynth filter, the HM hook) therefore
# all use `bounded_peak_flags` / `stream_peak_flags`: the same rule, except that a plateau longer
# than `PLATEAU_CAP` frames is judged on what precedes it only (as if the clip ended inside it).
# It equals peak_flags whenever no plateau exceeds the cap (every shared test stream) and also on
# a clip that is one long plateau (frame 0 is the PQF in both). The flag of frame n is then known
# once frame n + PLATEAU_CAP - 1 + radius has been read (`flag_delay`).

PLATEAU_CAP = 4
# Look-ahead of the streaming front ends that cannot see the flags before they start (the HM hook,
# y4m on stdin): 2 x the PQF period of HM's low-delay GOP 4 (what default_lookahead gives there).
DEFAULT_STREAM_LOOKAHEAD = 8


def flag_delay(radius: int = QP_RADIUS, cap: int = PLATEAU_CAP) -> int:
    """Frames after frame n that `stream_peak_flags` may need before it knows n's flag."""
    return cap - 1 + radius


def bounded_peak_flags(values: Sequence[float], radius: int = QP_RADIUS, cap: int = PLATEAU_CAP) -> list[bool]:
    """peak_flags (higher = better) with the plateau cap above; what `stream_peak_flags` yields."""
    if radius < 1 or cap < 1:
        raise ValueError("radius and cap must be at least 1")
    return peak_flags(values, radius, plateau_cap=cap)


def stream_peak_flags(
    items: Iterable[tuple[T, float]], radius: int = QP_RADIUS, cap: int = PLATEAU_CAP
) -> Iterator[tuple[T, bool]]:
    """(item, value) in display order -> (item, is_pqf) in display order, = bounded_peak_flags.

    Holds at most flag_delay(radius, cap) + 1 items: the flag of item n is yielded as soon as
    item n + flag_delay has been read (or the input ended).
    """
    if radius < 1 or cap < 1:
        raise ValueError("radius and cap must be at least 1")
    pending: deque[tuple[T, float]] = deque()  # read, flag not yet yielded
    before: deque[float] = deque(maxlen=radius)  # values of the last `radius` yielded items

    def decide(ended: bool) -> bool | None:
        """The flag of pending[0], or None while it needs more input."""
        v = pending[0][1]
        if before and before[-1] == v:
            return False  # inside a plateau: only its first frame can be the PQF
        run = 1
        while run < len(pending) and pending[run][1] == v:
            run += 1
        left_ok = all(b < v for b in before)
        if run > cap:
            return left_ok
        after = [p[1] for p in list(pending)[run : run + radius]]
        if run == len(pending) or len(after) < radius:
            if not ended:
                return None  # the plateau may go on, or its right side is not read yet
        return left_ok and all(a < v for a in after)

    def drain(ended: bool) -> Iterator[tuple[T, bool]]:
        while pending:
            flag = decide(ended)
            if flag is None:
                return
            item, v = pending.popleft()
            before.append(v)
            yield item, flag

    for item, value in items:
        pending.append((item, float(value)))
        yield from drain(False)
    item = None  # the loop variable would keep the newest item alive
    yield from drain(True)


def flags_every(count: int, period: int) -> list[bool]:
    """PowerVQE's fixed rule: frames 0, period, 2*period, ... are PQFs."""
    if period < 1:
        raise ValueError(f"the PQF period must be at least 1, got {period}")
    return [i % period == 0 for i in range(count)]


# --- where the flags come from (vsqe run, the VapourSynth filter) ------------------------------


class PqfUnavailable(Exception):
    """Slice-header QPs cannot give this clip's PQF flags; the message says why in one line."""


class PqfMisaligned(FormatError):
    """The decoder delivered a different number of frames than the PQF flags were made for
    (found while streaming: flags ran out, or frames did); the flags cannot be trusted."""


def every_lookahead(period: int) -> int:
    """The look-ahead of PowerVQE's fixed rule: default_lookahead of its flags, known without them."""
    return max(MIN_LOOKAHEAD, 2 * period)


def parse_every(text: str) -> int:
    """The N of `every:N` (PowerVQE's fixed period), or ValueError."""
    head, sep, tail = text.partition(":")
    if head != "every" or not sep or not tail.isdigit() or int(tail) < 1:
        raise ValueError(f"expected every:N with N >= 1, got {text!r}")
    return int(tail)


def bitstream_qps(path: str, count: int | None = None) -> list[int]:
    """Slice QPs of the first `count` output frames (all when None) of a raw H.264/HEVC/VVC
    stream or a container holding one, in display order; PqfUnavailable names the first frame
    whose QP is unknown, or says why the file gives none. InputError for a missing file."""
    import logging

    from vsqe.pqf.stream import display_pictures, read_pictures

    # The parser warns once per unreadable picture; the caller reports the first one, once.
    pqf_log = logging.getLogger("vsqe.pqf")
    level = pqf_log.level
    pqf_log.setLevel(logging.ERROR)
    try:
        pictures = display_pictures(read_pictures(path))
    except FormatError as exc:
        raise PqfUnavailable(f"no slice QPs ({exc})") from None
    finally:
        pqf_log.setLevel(level)
    if count is not None:
        pictures = pictures[:count]
    for i, pic in enumerate(pictures):
        if pic.qp is None:
            why = f" ({pic.warnings[0]})" if pic.warnings else ""
            raise PqfUnavailable(f"{path}: frame {i} (display order): slice QP unknown{why}")
    return [int(p.qp) for p in pictures]  # type: ignore[arg-type]


def qp_flags(qps: Sequence[int]) -> list[bool]:
    """PQF flags from slice QPs (lower = better) by the bounded rule every front end uses."""
    return bounded_peak_flags([-float(q) for q in qps], QP_RADIUS)


def score_flags(scores: Sequence[float]) -> list[bool]:
    """PQF flags from a no-reference quality estimate (higher = better), same rule."""
    return bounded_peak_flags(list(scores), QP_RADIUS)
