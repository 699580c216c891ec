"""Headerless planar frames: the payload layout shared by .yuv files and y4m frames.

A frame is its planes one after the other (Y, then U, then V), rows packed, samples of more than
8 bits as little-endian 16-bit words: FFmpeg's `rawvideo` layout for yuv420p, yuv420p10le, ...
"""
from __future__ import annotations

from typing import BinaryIO

import numpy as np

from vsqe.io.formats import PixelFormat, VideoFrame, frame_nbytes


def write_planes(f: BinaryIO, planes: list[np.ndarray], fmt: PixelFormat) -> None:
    """Writes one frame's planes; copies only planes that are not already packed little-endian."""
    dtype = np.dtype(fmt.dtype).newbyteorder("<")
    for plane in planes:
        packed = np.ascontiguousarray(plane, dtype=dtype)
        f.write(memoryview(packed).cast("B"))


def planes_from_buffer(buffer: bytearray | bytes, fmt: PixelFormat, width: int, height: int) -> list[np.ndarray]:
    """Views of one packed frame's planes in `buffer` (no copy)."""
    dtype = np.dtype(fmt.dtype).newbyteorder("<")
    planes = []
    offset = 0
    for h, w in fmt.plane_shapes(width, height):
        count = h * w
        planes.append(np.frombuffer(buffer, dtype=dtype, count=count, offset=offset).reshape(h, w))
        offset += count * dtype.itemsize
    return planes


class RawWriter:
    """Writes frames as headerless planar data (.yuv); the reader must know size and format."""

    def __init__(self, f: BinaryIO, fmt: PixelFormat, width: int, height: int) -> None:
        self._f = f
        self.fmt = fmt
        self.width = width
        self.height = height
        self.frame_bytes = frame_nbytes(fmt, width, height)

    def write(self, frame: VideoFrame) -> None:
        write_planes(self._f, frame.planes, self.fmt)
