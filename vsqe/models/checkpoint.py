"""Loading weights: official checkpoints (untrusted pickles, loaded weights_only) and our safetensors.

One line of error for every way a checkpoint can be wrong: unreadable, truncated, a pickle that
wants to run code, another architecture, a mis-shaped tensor, NaN/Inf values.
"""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch

from vsqe.errors import CheckpointError
from vsqe.models.registry import ModelSpec

# Wrappers seen in the field: STDF-PyTorch {'state_dict', 'optimizer', 'num_iter_accum'},
# mmedit/mmagic {'meta', 'state_dict', 'optimizer'}, BasicSR {'params'}, plain state dicts.
_WRAPPER_KEYS = ("state_dict", "params_ema", "params", "model")
# Prefixes added by DDP (STDF-PyTorch) and by the mmedit restorer (PowerVQE, mmagic).
_PREFIXES = ("module.", "generator.")
# Buffers of training wrappers that are not part of the network.
_IGNORED_KEYS = {"step_counter"}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a checkpoint file without running any code from it and returns a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {_first_line(exc)}") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # weights_only refuses globals that could execute code: say so, without running it.
            raise CheckpointError(
                f"refusing checkpoint {path}: it is not a plain weights file (unpickling would run code: "
                f"{_first_line(exc)})"
            ) from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
            raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a checkpoint): {_first_line(exc)}") from None
        state = _unwrap(obj, path)
    return _strip(state)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    return obj


def _strip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if key in _IGNORED_KEYS:
            continue
        out[key] = value
    return out


def load_weights(model: torch.nn.Module, spec: ModelSpec, path: str | Path) -> None:
    """Loads a checkpoint into `model` key for key; raises CheckpointError naming the first problem."""
    state = spec.convert_state_dict(read_state_dict(path))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(
            f"checkpoint {Path(path).name} does not fit model {spec.name!r}: missing key {missing[0]!r}"
            f" ({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    if unexpected:
        raise CheckpointError(
            f"checkpoint {Path(path).name} does not fit model {spec.name!r}: unexpected key {unexpected[0]!r}"
            f" ({len(unexpected)} unexpected)"
        )
    for key, tensor in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {Path(path).name} does not fit model {spec.name!r}: key {key!r} has shape "
                f"{list(got.shape)}, the model needs {list(tensor.shape)}"
            )
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise CheckpointError(f"checkpoint {Path(path).name}: key {key!r} holds NaN or Inf values")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
