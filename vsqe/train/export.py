"""Export a training checkpoint's weights to safetensors (what vsqe.models.build_model loads)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vsqe.train.trainer import load_checkpoint


def export_checkpoint(ckpt: str | Path, out: str | Path, metadata: dict | None = None) -> dict:
    state = load_checkpoint(Path(ckpt))
    sd = {k: v.detach().float().contiguous() for k, v in state["model"].items()}
    meta = {
        "vsqe_model": state["config"]["model"],
        "iteration": str(state["iteration"]),
        "train_hours": f"{state.get('elapsed', 0.0) / 3600:.3f}",
        **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()},
    }
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(out)
    return {"iteration": state["iteration"], "elapsed": state.get("elapsed", 0.0), "best": state.get("best")}
