"""What `--backend auto` runs, and how large a frame each backend takes whole: the rule and the
measurements behind it, in one place.

Numbers: docs/benchmarks.md, "Session 4" (quiet 2-vCPU AMD EPYC, AVX512-BF16, no AMX; STDF-Y,
model-only frames/s, with the fused offset+mask DCN, channels_last fp32 and the allocator of
backends/allocator.py; peak RSS of `vsqe run`). Change them here when a new quiet-machine run
says otherwise; tests/backends/test_auto_choice.py checks the rule, not the numbers.

The rule, for one call of `pixels` pixels (a whole padded frame, or a tile):
1. TensorRT and an NVIDIA GPU usable, window model -> "trt" (fp32: fp16's ΔPSNR is not measured).
2. Candidates: the CPU backends that can run this model here: torch-fp32 always; torch-bf16 and
   openvino-bf16 when the CPU has bf16 (AVX512-BF16 or AMX); openvino-* when openvino imports and
   the model has a DCN cut (STDF); bf16 only for models whose bf16 ΔPSNR was checked against the
   0.02 dB bound of issue 4 (stdf; others stay fp32 until measured).
3. Drop candidates whose untiled run of `pixels` would pass the memory budget (MEMORY_BUDGET_MB).
4. Fastest by the measured frames/s at the largest measured size not above `pixels` at which
   every remaining candidate was measured (the smallest measured size when below all of them).
   Ties go to the earlier name in PREFERENCE (cheaper set-up, less memory).
If no candidate fits the budget whole, the one with the least memory per pixel is chosen and the
Enhancer tiles the frame to its `tile_side`; each tile is then a call of its own to this rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Cheaper to build and smaller first: breaks ties in measured speed.
PREFERENCE = ("torch-bf16", "openvino-bf16", "openvino-fp32", "torch-fp32")

# Model-only frames/s, STDF-Y, docs/benchmarks.md "Session 4" (quiet machine, trained weights).
# Rows start at the pixel count they were measured at and hold until the next measured size.
# Since the fused offset+mask DCN (vsqe.ops.deform_conv2d_om) torch leads at every size, in bf16
# (9.95 vs 5.83 fps at 416x240, 2.90 vs 1.71 at 832x480, 0.60 vs 0.23 at 1080p) and in fp32.
_STDF_FPS: tuple[tuple[int, str, dict[str, float]], ...] = (
    (416 * 240, "416x240", {"torch-bf16": 9.95, "openvino-bf16": 5.83, "torch-fp32": 5.86, "openvino-fp32": 4.81}),
    (640 * 360, "640x360", {"torch-bf16": 4.55, "openvino-bf16": 2.54}),
    (832 * 480, "832x480", {"torch-bf16": 2.90, "openvino-bf16": 1.71, "torch-fp32": 1.72, "openvino-fp32": 1.02}),
    (1280 * 720, "1280x720", {"torch-bf16": 1.23, "openvino-bf16": 0.56}),
    (1920 * 1080, "1920x1080", {"torch-bf16": 0.60, "openvino-bf16": 0.23}),
)
MEASURED_FPS: dict[str, tuple[tuple[int, str, dict[str, float]], ...]] = {
    "stdf": _STDF_FPS,
    # Same network with 3 input/output channels instead of 1: the dense middle dominates its cost.
    "stdf-rgb": _STDF_FPS,
    # MFQEv2-Y (session 5, quiet, shipped weights): bf16 1.9-2.0x fp32 at every size measured.
    "mfqev2-y": (
        (416 * 240, "416x240", {"torch-bf16": 3.76, "torch-fp32": 1.96}),
        (832 * 480, "832x480", {"torch-bf16": 0.97, "torch-fp32": 0.54}),
        (1280 * 720, "1280x720", {"torch-bf16": 0.45, "torch-fp32": 0.22}),
    ),
}
# Models whose bf16 paths were checked against fp32's ΔPSNR on the dev clips (within 0.003 dB with
# the iteration-3,500 and -6,250 stdf weights, bound 0.02; docs/benchmarks.md, sessions 2 and 3;
# mfqev2-y's shipped weights within 0.0017 dB, session 5).
BF16_CHECKED = frozenset({"stdf", "stdf-rgb", "mfqev2-y"})

# Peak RSS (MB) of `vsqe run` (HEVC decode, STDF-Y, x265 encode to .mkv) against the pixels of one
# model call, measured whole-frame and tiled: docs/benchmarks.md "Session 3" (OpenVINO) and
# "Session 4" (torch, with the allocator that keeps freed memory: +15-35 % over glibc's default).
# Between points RSS is interpolated linearly, beyond the last one extrapolated with the last slope.
# OpenVINO grows far faster than linearly above ~1 Mpx (its memory plan for the whole graph):
# openvino-bf16 3.5 GB at 1280x720, 6.6 GB in 1088x1088 tiles, 10.9 GB at 1080p whole; torch-bf16
# 2.3 GB there, torch-fp32 5.1 GB.
RSS_MB: dict[str, tuple[tuple[int, float], ...]] = {
    "torch-fp32": ((832 * 480, 1570), (1280 * 720, 2364), (1920 * 1088, 5125)),
    "torch-bf16": ((832 * 480, 1008), (1280 * 720, 1403), (1920 * 1088, 2335)),
    "openvino-fp32": ((832 * 480, 2613), (1280 * 720, 3114), (1920 * 1088, 10109)),
    "openvino-bf16": ((832 * 480, 2746), (1280 * 720, 3532), (1088 * 1088, 6630), (1920 * 1088, 10865)),
}
# Models that hold far more per pixel than STDF-Y get their own rows (the backend table above is
# the fallback). MFQEv2-Y: model-only peak RSS of `vsqe bench` (one process per backend, sizes in
# increasing order; session 5, shipped weights): SpyNet's pyramids, the aligned frames and the
# dense 288-channel concat; bf16 autocast keeps fp32 and bf16 copies, so it is no smaller.
RSS_MB_BY_MODEL: dict[str, dict[str, tuple[tuple[int, float], ...]]] = {
    "mfqev2-y": {
        "torch-fp32": ((416 * 240, 1127), (832 * 480, 2423), (1280 * 720, 5857)),
        "torch-bf16": ((416 * 240, 1168), (832 * 480, 2646), (1280 * 720, 4793), (1920 * 1080, 9622)),
    },
}
# The tile a backend uses above its untiled limit. A tiled run also holds the whole frames (decode
# queue, window, x265's look-ahead at the frame size: ~0.75 GB more at 1080p than the whole-frame
# table says for the tile alone), so these are measured, not derived: openvino-bf16 with 768-px
# tiles peaks at 3.8 GB at 1080p (1088-px tiles: 6.6 GB). torch keeps its old 512 (it tiles only
# above 1080p, where a frame is 1.9x the work in 512-px tiles with 64-px overlaps).
TILE_SIDE: dict[str, int] = {"torch-fp32": 512, "torch-bf16": 512, "openvino-fp32": 768, "openvino-bf16": 768}
# Default runs stay under this peak RSS (issue 4: 1080p on every backend below ~4 GB); --tile wins.
MEMORY_BUDGET_MB = 4000
# Backends not in the table (trt: GPU memory; bench-only ones) keep the old fixed limit.
FALLBACK_UNTILED_PIXELS = 1920 * 1088
FALLBACK_TILE = 512


@dataclass(frozen=True)
class Capabilities:
    """What this machine and model allow: filled by `detect`, faked in tests."""

    bf16: bool = False  # the CPU runs bf16 (AVX512-BF16 or AMX)
    openvino: bool = False  # openvino imports and the model has a DCN cut
    tensorrt: bool = False  # TensorRT and an NVIDIA GPU are usable
    model: str = "stdf"  # registered model name (selects the measured table)
    recurrent: bool = False  # segment model (BasicVSR++): no TensorRT here (docs/basicvsrpp.md)
    excluded: frozenset[str] = field(default_factory=frozenset)  # failed to build here: skip


@dataclass(frozen=True)
class Choice:
    name: str
    reason: str  # one line for the log: why this backend


def detect(module, model: str, recurrent: bool = False) -> Capabilities:
    from vsqe.backends.openvino_backend import openvino_available
    from vsqe.backends.torch_backend import bf16_supported

    has_cut = all(hasattr(module, a) for a in ("dense_head", "dense_tail", "dcn_layer"))
    return Capabilities(
        bf16=bf16_supported(),
        openvino=has_cut and openvino_available(),
        tensorrt=_tensorrt_usable(),
        model=model,
        recurrent=recurrent,
    )


def _tensorrt_usable() -> bool:
    try:
        from vsqe.backends.tensorrt import unavailable_reason

        return unavailable_reason() is None
    except Exception:  # noqa: BLE001 - any import problem means: not usable here
        return False


def candidates(caps: Capabilities) -> list[str]:
    names = ["torch-fp32"]
    bf16 = caps.bf16 and caps.model in BF16_CHECKED
    if bf16:
        names.append("torch-bf16")
    if caps.openvino:
        names.append("openvino-fp32")
        if bf16:
            names.append("openvino-bf16")
    return [n for n in PREFERENCE if n in names and n not in caps.excluded]


def _rss_points(name: str, model: str) -> tuple[tuple[int, float], ...] | None:
    """The (pixels, MB) points of `name` running `model`: the model's own row, else the backend's."""
    return RSS_MB_BY_MODEL.get(model, {}).get(name) or RSS_MB.get(name)


def estimated_rss_mb(name: str, pixels: int, model: str = "") -> float | None:
    """Peak RSS of a run whose model calls have `pixels` pixels (None: not in the table)."""
    points = _rss_points(name, model)
    if points is None:
        return None
    if pixels <= points[0][0]:
        return points[0][1]  # below the smallest measured call: the process and model dominate
    pairs = list(zip(points, points[1:]))
    for (p0, m0), (p1, m1) in pairs:
        if pixels <= p1:
            break
    return m0 + (m1 - m0) * (pixels - p0) / (p1 - p0)


def untiled_pixel_limit(name: str, model: str = "") -> int:
    """The largest call (pixels) `name` runs whole within MEMORY_BUDGET_MB."""
    points = _rss_points(name, model)
    if points is None:
        return FALLBACK_UNTILED_PIXELS
    if points[0][1] > MEMORY_BUDGET_MB:
        return points[0][0]
    for (p0, m0), (p1, m1) in zip(points, points[1:]):
        if m1 > MEMORY_BUDGET_MB:
            return int(p0 + (MEMORY_BUDGET_MB - m0) * (p1 - p0) / (m1 - m0))
    (p0, m0), (p1, m1) = points[-2], points[-1]
    return int(p1 + (MEMORY_BUDGET_MB - m1) * (p1 - p0) / (m1 - m0))


def tile_side(name: str) -> int:
    """The tile `name` runs frames above its untiled limit in (TILE_SIDE; FALLBACK_TILE if unlisted)."""
    return TILE_SIDE.get(name, FALLBACK_TILE)


def tile_for(name: str, height: int, width: int, model: str = "") -> int | None:
    """None to run a height x width frame of `model` whole on `name`, else the tile side that keeps
    it in budget."""
    return None if height * width <= untiled_pixel_limit(name, model) else tile_side(name)


def _speeds(model: str, pixels: int, names: list[str]) -> tuple[str, dict[str, float]] | None:
    """(size label, fps by name) of the largest measured size <= pixels that measured all `names`."""
    rows = [r for r in MEASURED_FPS.get(model, ()) if all(n in r[2] for n in names)]
    if not rows:
        return None
    below = [r for r in rows if r[0] <= pixels]
    _, label, fps = below[-1] if below else rows[0]
    return label, fps


def choose(caps: Capabilities, pixels: int) -> Choice:
    """The backend `auto` runs a call of `pixels` pixels on (the rule in the module docstring)."""
    if caps.tensorrt and not caps.recurrent and "trt" not in caps.excluded:
        return Choice("trt", "TensorRT and an NVIDIA GPU are usable here")
    names = candidates(caps)
    fits = [n for n in names if pixels <= untiled_pixel_limit(n, caps.model)]
    if not fits:
        name = min(names, key=lambda n: estimated_rss_mb(n, pixels, caps.model))
        return Choice(name, f"no backend runs {pixels} px whole within {MEMORY_BUDGET_MB} MB: the leanest, tiled")
    dropped = [n for n in names if n not in fits]
    note = f"; {', '.join(dropped)} would pass {MEMORY_BUDGET_MB} MB whole" if dropped else ""
    if caps.model not in MEASURED_FPS:
        return Choice("torch-fp32", f"no measurements for model {caps.model!r} (bf16 not checked against fp32's ΔPSNR){note}")
    speeds = _speeds(caps.model, pixels, fits)
    if speeds is None:
        return Choice(fits[0], f"no size measured every candidate ({', '.join(fits)}){note}")
    label, fps = speeds
    best = max(fits, key=lambda n: (fps[n], -PREFERENCE.index(n)))
    others = ", ".join(f"{n} {fps[n]:.2f}" for n in fits if n != best)
    measured = f"measured fastest at {label} ({best} {fps[best]:.2f} fps" + (f" vs {others})" if others else ")")
    if not caps.bf16:
        measured += "; no bf16 on this CPU"
    return Choice(best, measured + note)
