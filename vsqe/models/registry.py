"""The one model registry: what each network needs from the pipeline, and how to build it.

A model declares its needs (colour planes, temporal radius, border rule, size multiple); the
pipeline reads that declaration and never looks at model names. Adding a model = one file in
vsqe/models that calls `register(ModelSpec(...))`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from vsqe.errors import ModelError

ColorKind = Literal["y", "rgb"]
BorderRule = Literal["replicate", "reflection_circle"]
TemporalKind = Literal["window", "recurrent", "pqf"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline must know to feed a network.

    Forward contract of every registered module: input float tensor [N, T, C, H, W] in [0, 1]
    (T = 2 * radius + 1 frames, C = 1 for "y" models, 3 for "rgb"), H and W already padded to
    `size_multiple` (and at least `min_size`) by the pipeline; output [N, C, H, W], the enhanced
    centre frame, unclipped.

    Recurrent models (temporal="recurrent", e.g. BasicVSR++) map a whole segment instead:
    [N, T, C, H, W] -> [N, T, C, scale*H, scale*W], any T >= 1; the pipeline cuts a clip into
    segments of `segment_length` output frames read with `segment_overlap` extra frames on each
    side (pipeline/segments.py). `radius` is unused for them.

    PQF models (temporal="pqf", MFQEv2) take T = 3 frames (left PQF, frame, right PQF) chosen by
    pipeline/pqf_schedule.py from per-frame PQF flags, and come as two checkpoints of one
    architecture (non-PQF and PQF weights); `radius` is 1 (three inputs) but no window is formed.
    """

    name: str
    description: str
    build: Callable[[], torch.nn.Module]
    color: ColorKind
    radius: int
    border: BorderRule = "replicate"
    size_multiple: int = 1
    min_size: int = 1
    temporal: TemporalKind = "window"
    segment_length: int = 0  # recurrent models: output frames per segment (L)
    segment_overlap: int = 0  # recurrent models: context frames read on each side (O)
    scale: int = 1  # output size / input size (4 for super-resolution models)
    # File name under vsqe/weights/ of the shipped default (None: no trained default yet).
    default_weights: str | None = None
    # PQF models: file name under vsqe/weights/ of the shipped PQF network (default_weights is
    # then the non-PQF one); used when neither --weights nor --pqf-weights is given.
    default_pqf_weights: str | None = None
    # Maps an official checkpoint's state dict (wrapper already removed) to this module's keys.
    convert_state_dict: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = field(
        default=lambda sd: sd
    )

    @property
    def window(self) -> int:
        return 2 * self.radius + 1

    def default_weights_path(self) -> Path | None:
        return _shipped(self.default_weights)

    def default_pqf_weights_path(self) -> Path | None:
        return _shipped(self.default_pqf_weights)


def _shipped(name: str | None) -> Path | None:
    """The installed file of a shipped default, or None (none declared, or not shipped yet)."""
    if name is None:
        return None
    path = WEIGHTS_DIR / name
    return path if path.is_file() else None


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin_models() -> None:
    # Importing a model module registers it; done lazily so `import vsqe` stays cheap.
    from vsqe.models import basicvsrpp, mfqev2, stdf  # noqa: F401


def get_model_spec(name: str) -> ModelSpec:
    _load_builtin_models()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ModelError(f"unknown model {name!r} (known: {known})") from None


def model_names() -> list[str]:
    _load_builtin_models()
    return sorted(_REGISTRY)
