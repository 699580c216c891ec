"""Spatial padding and overlapping tiles.

Frames are padded (replicate) to the model's size multiple first; tiles are then cut from the padded
frame with origins and sizes on that multiple, so a network with stride-2 stages sees the same
sampling grid in a tile as in the whole frame. Tiles overlap by `overlap` pixels on each inner side;
only each tile's centre is kept, so with an overlap wider than the receptive field tiled output
equals untiled output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pad_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Replicate-pads [N, T, C, H, W] at the bottom/right to height x width."""
    n, t, c, h, w = x.shape
    if (h, w) == (height, width):
        return x
    flat = x.reshape(n, t * c, h, w)
    flat = F.pad(flat, (0, width - w, 0, height - h), mode="replicate")
    return flat.reshape(n, t, c, height, width)


@dataclass(frozen=True)
class TileSpan:
    start: int  # first input pixel of the tile
    stop: int  # one past the last input pixel
    keep_start: int  # first output pixel this tile is responsible for
    keep_stop: int


def tile_spans(size: int, tile: int, overlap: int, multiple: int) -> list[TileSpan]:
    """1-D tiling of [0, size) with tiles of `tile` pixels (multiples of `multiple`)."""
    tile = max(multiple, round_up(tile, multiple))
    overlap = round_up(overlap, multiple)
    if tile >= size:
        return [TileSpan(0, size, 0, size)]
    if tile <= 2 * overlap:
        raise ValueError(f"tile {tile} must be larger than twice the overlap {overlap}")
    spans: list[TileSpan] = []
    keep = 0
    while keep < size:
        start = max(0, keep - overlap)
        stop = min(size, start + tile)
        start = max(0, stop - tile)  # the last tile is clamped to the frame, never shrunk
        keep_stop = size if stop == size else stop - overlap
        spans.append(TileSpan(start, stop, keep, keep_stop))
        keep = keep_stop
        if stop == size:
            break
    return spans


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    multiple: int,
    min_size: int = 1,
    tile: int | None = None,
    overlap: int = 64,
) -> torch.Tensor:
    """Applies fn ([N,T,C,h,w] -> [N,C,h,w]) to x of any size: pad, tile, crop."""
    n, t, c, h, w = x.shape
    ph = max(round_up(h, multiple), round_up(min_size, multiple))
    pw = max(round_up(w, multiple), round_up(min_size, multiple))
    padded = pad_to(x, ph, pw)
    if tile is None or (tile >= ph and tile >= pw):
        return fn(padded)[..., :h, :w]
    out = torch.empty(n, c, ph, pw, dtype=torch.float32)
    for ys in tile_spans(ph, tile, overlap, multiple):
        for xs in tile_spans(pw, tile, overlap, multiple):
            part = fn(padded[..., ys.start : ys.stop, xs.start : xs.stop])
            out[..., ys.keep_start : ys.keep_stop, xs.keep_start : xs.keep_stop] = part[
                ...,
                ys.keep_start - ys.start : ys.keep_stop - ys.start,
                xs.keep_start - xs.start : xs.keep_stop - xs.start,
            ]
    return out[..., :h, :w]
