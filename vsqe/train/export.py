"""Export a training checkpoint's weights to safetensors (what vsqe.models.build_model loads)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vsqe.train.trainer import LEGACY_CONFIG, build_train_model, is_pqf_model, load_checkpoint, plain_state_dict


def checkpoint_weights(state: dict) -> dict[str, torch.Tensor]:
    """A training checkpoint's weights in the published architecture's keys (BN folded)."""
    cfg = {**LEGACY_CONFIG, **state["config"]}
    model = build_train_model(cfg["model"], batchnorm=cfg["batchnorm"], per_frame=cfg.get("per_frame", False))
    model.load_state_dict(state["model"])
    return plain_state_dict(model)


def export_checkpoint(ckpt: str | Path, out: str | Path, metadata: dict | None = None) -> dict:
    state = load_checkpoint(Path(ckpt))
    sd = {k: v.detach().float().contiguous() for k, v in checkpoint_weights(state).items()}
    meta = {
        "vsqe_model": state["config"]["model"],
        # PQF models: which of the two networks this file is (nonpqf -> --weights, pqf -> --pqf-weights).
        **({"pqf_role": state["config"]["pqf_role"]} if is_pqf_model(state["config"]["model"]) else {}),
        "iteration": str(state["iteration"]),
        "train_hours": f"{state.get('elapsed', 0.0) / 3600:.3f}",
        # BasicVSR++'s first stage: what a model card of a run started from this file reports.
        **({"per_frame": "1", "batchnorm": json.dumps(state["config"].get("batchnorm", False)),
            "teacher": state["config"].get("teacher", ""), "teacher_iters": str(state["config"].get("teacher_iters", 0))}
           if state["config"].get("per_frame") else {}),
        **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()},
    }
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(out)
    return {"iteration": state["iteration"], "elapsed": state.get("elapsed", 0.0), "best": state.get("best")}
