"""Export a training checkpoint's weights to safetensors (what vsqe.models.build_model loads)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vsqe.errors import CheckpointError
from vsqe.train.trainer import (
    LEGACY_CONFIG,
    build_train_model,
    is_pqf_model,
    is_recurrent_model,
    load_checkpoint,
    plain_state_dict,
)


def checkpoint_weights(state: dict) -> dict[str, torch.Tensor]:
    """A training checkpoint's weights in the published architecture's keys (BN folded)."""
    cfg = {**LEGACY_CONFIG, **state["config"]}
    model = build_train_model(cfg["model"], batchnorm=cfg["batchnorm"], per_frame=cfg.get("per_frame", False))
    model.load_state_dict(state["model"])
    return plain_state_dict(model)


def export_checkpoint(ckpt: str | Path, out: str | Path, metadata: dict | None = None,
                      into: str | Path | None = None) -> dict:
    """`into`: flow checkpoints only, the weights that receive the SpyNet (default: the run's base)."""
    state = load_checkpoint(Path(ckpt))
    from vsqe.train.flow import FLOW_CKPT_FORMAT, graft_checkpoint

    if state.get("format") == FLOW_CKPT_FORMAT:  # SpyNet alone: grafted into the run's base weights
        graft_checkpoint(state, out, into=into)
        return {"iteration": state["iteration"], "elapsed": state.get("elapsed", 0.0), "best": state.get("best")}
    if into is not None:
        raise CheckpointError(f"{ckpt}: --into is for `vsqe train flow` checkpoints")
    sd = {k: v.detach().float().contiguous() for k, v in checkpoint_weights(state).items()}
    meta = {
        "vsqe_model": state["config"]["model"],
        # PQF models: which of the two networks this file is (nonpqf -> --weights, pqf -> --pqf-weights).
        **({"pqf_role": state["config"]["pqf_role"]} if is_pqf_model(state["config"]["model"]) else {}),
        "iteration": str(state["iteration"]),
        "train_hours": f"{state.get('elapsed', 0.0) / 3600:.3f}",
        # Recurrent models train in stages (docs/training.md §8): how this one trained, and the
        # file it started from with that file's own record, so a model card can tell them all.
        **(stage_record(state["config"]) if is_recurrent_model(state["config"]["model"]) else {}),
        **({"init_from": json.dumps(origin)} if (origin := run_origin(state)) is not None else {}),
        # SpyNet held fixed or at zero flow in this run (cards list it with the round)
        **({"spynet": "zero flow" if state["config"].get("zero_flow") else "frozen"}
           if state["config"].get("zero_flow") or state["config"].get("freeze_flow") else {}),
        **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()},
    }
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(out)
    return {"iteration": state["iteration"], "elapsed": state.get("elapsed", 0.0), "best": state.get("best")}


def stage_record(config: dict) -> dict[str, str]:
    """How a run of a recurrent model trained, as safetensors metadata (strings): per-frame stage
    or full network, training-only BN, teacher and its iterations."""
    return {"per_frame": "1" if config.get("per_frame") else "0",
            "batchnorm": json.dumps(config.get("batchnorm", False)),
            "teacher": config.get("teacher", ""), "teacher_iters": str(config.get("teacher_iters", 0)),
            "device": config.get("device", "cpu")}


def run_origin(state: dict) -> dict | None:
    """The record of the file a run started from (--init-from), as the run read it when it started;
    None for a run from scratch. Checkpoints from before that record existed read the file now."""
    if state.get("init_origin"):
        return json.loads(state["init_origin"])
    path = state["config"].get("init_from")
    return weights_origin(path) if path else None


def weights_origin(path: str) -> dict:
    """A weights file and what its export recorded (model, iteration, hours; recurrent stages:
    per_frame, batchnorm, teacher, teacher_iters), with the file it started from nested under
    "init_from" the same way. Unreadable files say so instead of failing: this is for cards."""
    from safetensors import safe_open

    info: dict = {"file": str(path)}
    try:
        with safe_open(str(path), framework="pt") as f:
            info.update(f.metadata() or {})
        # the path may later hold other weights (shipping replaces vsqe/weights/ files): the digest doesn't
        info["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except Exception as exc:  # noqa: BLE001 - a card field, not a reason to refuse
        info["unreadable"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(info.get("init_from"), str):
        try:
            info["init_from"] = json.loads(info["init_from"])
        except ValueError:
            pass
    return info


def origin_chain(origin: dict) -> list[dict]:
    """The stages behind a weights file, first stage first (weights_origin's nesting, flattened)."""
    chain = []
    while isinstance(origin, dict):
        chain.append({k: v for k, v in origin.items() if k != "init_from"})
        origin = origin.get("init_from")
    return chain[::-1]
