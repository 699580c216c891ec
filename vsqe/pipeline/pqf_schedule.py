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
