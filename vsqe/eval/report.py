"""Per-frame PSNR of a distorted (and optionally an enhanced) video against a reference, and ΔPSNR.

The protocol of the QE papers and of HM: PSNR per frame and plane with peak 2^bitdepth - 1 of the
reference, no border crop, averaged over frames. A stream at a higher bit depth than the reference
(10-bit VVC output against an 8-bit y4m) is rounded to the reference's depth first.
"""
from __future__ import annotations

import csv
import itertools
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from vsqe.errors import FormatError, InputError
from vsqe.eval.psnr import PSNR_CAP_DB, psnr
from vsqe.io.formats import VideoFrame, convert_bit_depth

PLANES = ("Y", "U", "V")


@dataclass(frozen=True)
class FrameScore:
    index: int
    pict_type: str | None  # of the distorted stream's frame
    dist: tuple[float, ...]  # PSNR per plane (Y, U, V; Y only for gray)
    enh: tuple[float, ...] | None = None

    @property
    def delta_y(self) -> float | None:
        return None if self.enh is None else self.enh[0] - self.dist[0]


def frame_psnr(ref: VideoFrame, other: VideoFrame, name: str) -> tuple[float, ...]:
    """PSNR of each plane of `other` against `ref`, at the reference's bit depth."""
    if (ref.width, ref.height) != (other.width, other.height):
        raise FormatError(
            f"{name}: frame {other.index} is {other.width}x{other.height}, the reference {ref.width}x{ref.height}"
        )
    if ref.fmt.chroma != other.fmt.chroma:
        raise FormatError(f"{name}: chroma format {other.fmt.chroma} differs from the reference's {ref.fmt.chroma}")
    depth = ref.fmt.bit_depth
    return tuple(
        psnr(r, convert_bit_depth(o, other.fmt.bit_depth, depth), ref.fmt.peak)
        for r, o in zip(ref.planes, other.planes)
    )


def score_frames(
    ref: Iterable[VideoFrame],
    dist: Iterable[VideoFrame],
    enh: Iterable[VideoFrame] | None = None,
    names: tuple[str, str, str | None] = ("ref", "dist", "enh"),
    limit: int | None = None,
) -> Iterator[FrameScore]:
    """Streams the per-frame scores; InputError when the streams' frame counts differ."""
    streams = [iter(ref), iter(dist)] + ([iter(enh)] if enh is not None else [])
    labels = [n for n in names if n is not None][: len(streams)]
    counts = range(limit) if limit is not None else itertools.count()
    for index in counts:
        frames = [next(s, None) for s in streams]
        if all(f is None for f in frames):
            return
        if any(f is None for f in frames):
            ended = [lbl for lbl, f in zip(labels, frames) if f is None]
            going = [lbl for lbl, f in zip(labels, frames) if f is not None]
            raise InputError(
                f"frame counts differ: {', '.join(ended)} ended after {index} frames, "
                f"{', '.join(going)} did not"
            )
        r, d = frames[0], frames[1]
        e = frames[2] if len(frames) > 2 else None
        yield FrameScore(
            index=index,
            pict_type=d.pict_type,
            dist=frame_psnr(r, d, labels[1]),
            enh=frame_psnr(r, e, labels[2]) if e is not None else None,
        )


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


@dataclass
class EvalReport:
    ref: str
    dist: str
    enh: str | None
    bit_depth: int
    frames: list[FrameScore] = field(default_factory=list)

    @property
    def planes(self) -> tuple[str, ...]:
        return PLANES[: len(self.frames[0].dist)] if self.frames else PLANES

    def mean_dist(self) -> tuple[float, ...]:
        return tuple(_mean(f.dist[i] for f in self.frames) for i in range(len(self.planes)))

    def mean_enh(self) -> tuple[float, ...] | None:
        if self.enh is None:
            return None
        return tuple(_mean(f.enh[i] for f in self.frames) for i in range(len(self.planes)))  # type: ignore[index]

    def delta_y(self) -> float | None:
        enh = self.mean_enh()
        return None if enh is None else enh[0] - self.mean_dist()[0]

    def by_type(self) -> dict[str, list[FrameScore]]:
        groups: dict[str, list[FrameScore]] = {}
        for f in self.frames:
            groups.setdefault(f.pict_type or "?", []).append(f)
        return dict(sorted(groups.items()))

    def summary(self) -> str:
        """The human-readable report (stdout of `vsqe eval`)."""
        lines = [f"reference  {self.ref} ({len(self.frames)} frames, {self.bit_depth}-bit)"]
        header = "".join(f"{p + '-PSNR':>10}" for p in self.planes)
        lines.append(f"{'':10}{header}")
        rows = [("dist", self.mean_dist(), self.dist)]
        if self.enh is not None:
            rows.append(("enh", self.mean_enh(), self.enh))  # type: ignore[arg-type]
        for label, means, path in rows:
            lines.append(f"{label:10}" + "".join(f"{m:10.4f}" for m in means) + f"  {path}")
        if self.enh is not None:
            lines.append(f"{'delta':10}" + "".join(
                f"{e - d:+10.4f}" for e, d in zip(self.mean_enh(), self.mean_dist())  # type: ignore[arg-type]
            ))
        types = self.by_type()
        if len(types) > 1 or "?" not in types:
            lines.append("Y-PSNR by frame type:")
            for kind, group in types.items():
                text = f"  {kind:2} {len(group):5d} frames  dist {_mean(f.dist[0] for f in group):8.4f}"
                if self.enh is not None:
                    enh_y = _mean(f.enh[0] for f in group)  # type: ignore[index]
                    dist_y = _mean(f.dist[0] for f in group)
                    text += f"  enh {enh_y:8.4f}  delta {enh_y - dist_y:+8.4f}"
                lines.append(text)
        capped = sum(1 for f in self.frames for v in (*f.dist, *(f.enh or ())) if v >= PSNR_CAP_DB)
        if capped:
            lines.append(f"note: {capped} plane PSNRs of identical planes were capped at {PSNR_CAP_DB:g} dB")
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike) -> None:
        """One row per frame: frame, type, dist PSNR per plane, enh PSNR per plane, delta Y."""
        columns = ["frame", "type"] + [f"dist_{p.lower()}" for p in self.planes]
        if self.enh is not None:
            columns += [f"enh_{p.lower()}" for p in self.planes] + ["delta_y"]
        from vsqe.io.atomic import atomic_output

        # Complete or absent: a full disk or Ctrl-C never leaves half a CSV behind.
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for s in self.frames:
                row = [s.index, s.pict_type or ""] + [f"{v:.6f}" for v in s.dist]
                if s.enh is not None:
                    row += [f"{v:.6f}" for v in s.enh] + [f"{s.delta_y:.6f}"]
                writer.writerow(row)
