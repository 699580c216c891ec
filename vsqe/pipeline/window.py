"""Temporal windows: which frames feed the model for output frame n.

`window_indices` is the single definition of the border rules; the streaming `sliding_windows`
(CLI, hook) and random-access callers (VapourSynth) both use it, so every front end feeds the model
the same frames.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator, TypeVar

from vsqe.models.registry import BorderRule

T = TypeVar("T")


def window_indices(n: int, radius: int, length: int, border: BorderRule = "replicate") -> list[int]:
    """Indices of frames t-radius..t+radius for output frame n of a clip of `length` frames.

    replicate: indices clipped to [0, length-1] (STDF-PyTorch).
    reflection_circle: PowerVQE/EDVR test padding; a missing neighbour is filled with the frame
    just beyond the far side of the window, in mirror order (frame 0, radius 3 -> [6,5,4,0,1,2,3]).
    """
    if not 0 <= n < length:
        raise IndexError(f"frame {n} outside a clip of {length} frames")
    out: list[int] = []
    for i in range(n - radius, n + radius + 1):
        if 0 <= i < length:
            out.append(i)
        elif border == "replicate":
            out.append(min(max(i, 0), length - 1))
        elif border == "reflection_circle":
            if i < 0:
                j = n + radius - i  # mirror around the window's far end
            else:
                j = n - radius - (i - length + 1)
            out.append(min(max(j, 0), length - 1))
        else:
            raise ValueError(f"unknown border rule {border!r}")
    return out


def sliding_windows(
    frames: Iterable[T], radius: int, border: BorderRule = "replicate"
) -> Iterator[tuple[T, list[T]]]:
    """Streams (centre frame, window) pairs in display order with bounded memory.

    Holds at most 2*radius+1 frames plus the look-back the border rule needs, so memory does not
    grow with the length of the video. The clip length is learned only at the end of the stream,
    so the last windows are formed once it ends.
    """
    keep = 2 * radius + 1 if border == "replicate" else 4 * radius + 1
    buffer: deque[T] = deque()
    first_index = 0  # display index of buffer[0]
    next_out = 0
    it = iter(frames)
    seen = 0
    exhausted = False
    while True:
        while not exhausted and seen <= next_out + radius + (radius if border != "replicate" else 0):
            try:
                buffer.append(next(it))
                seen += 1
            except StopIteration:
                exhausted = True
        if next_out >= seen:
            return
        # Only known length matters when the window touches the end of the stream.
        length = seen if exhausted else max(seen, next_out + 2 * radius + 1)
        idx = window_indices(next_out, radius, length, border)
        if not exhausted and max(idx) >= seen:
            raise AssertionError("window ran ahead of the stream")  # guarded by the read-ahead above
        window = [buffer[i - first_index] for i in idx]
        yield buffer[next_out - first_index], window
        next_out += 1
        while len(buffer) > keep and first_index < next_out - (keep - radius - 1):
            buffer.popleft()
            first_index += 1
