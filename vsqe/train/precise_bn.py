"""Exact BatchNorm statistics for trained weights ("PreciseBN"): the weights stay, the running
mean and variance of every BatchNorm2d are recomputed as plain averages over many training
batches, seen the way inference will see them.

Why: MFQEv2's QE net has BN (conv -> PReLU -> BN, the published architecture). Its running
statistics are an exponential average (momentum 0.1) over the last ~10 small batches of
training, and those batches were drawn under the training run's conditions: vsqe's shipped
non-PQF network trained with SpyNet's warping and runs with the flow at zero
(docs/training.md §7, session 9), and it serves the PQFs too (session 11). Recomputing the
statistics under the inference condition (zero flow, this frame class, the data mix) gave
+0.011 dB on the dev HM non-PQFs (+0.4379 -> +0.4490, every frame) at no cost per frame
(§7, session 11).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from vsqe.errors import VsqeError


@torch.no_grad()
def recompute_bn_stats(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replaces the running statistics of every BatchNorm2d of `model` by their cumulative
    average over `batches` (forward passes in training mode, no gradients, weights untouched).
    Returns the number of batches seen. The model is left in eval mode with BN's momentum
    restored."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise VsqeError(f"{type(model).__name__} has no BatchNorm layers: nothing to recompute")
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # None = cumulative moving average: every batch weighs the same
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.eval()
    if seen == 0:
        raise VsqeError("no batches: the BN statistics would be empty")
    return seen


def recalibrate_weights(weights: str | Path, out: str | Path, *, model: str, data: str | Path, role: str,
                        codec_weights: dict[str, float], batches: int = 200, batch: int = 8, patch: int = 128,
                        seed: int = 0, threads: int = 2, progress=None) -> dict:
    """`weights` (an MFQEv2-Y export) with its BN statistics recomputed on `batches` x `batch`
    training triplets of `role` from `data` (TripletSampler: the pairing inference uses), written to
    `out` (temp file + rename) with the source's metadata plus a record of this step. The
    statistics are taken with the flow the weights produce (zero flow for vsqe's shipped
    MFQEv2-Y). Returns the metadata written."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vsqe.models.checkpoint import read_state_dict
    from vsqe.train.export import weights_origin
    from vsqe.train.trainer import build_train_model, is_pqf_model, load_plain_weights
    from vsqe.train.triplets import TripletSampler

    if not is_pqf_model(model):
        raise VsqeError(f"precise-bn: model {model!r} is not a PQF model (mfqev2-y); others have no BN at inference")
    if batches < 1 or batch < 2:
        raise VsqeError(f"precise-bn needs --batches >= 1 and --batch >= 2 (BN statistics), got {batches} x {batch}")
    out = Path(out)
    if not out.parent.is_dir():
        raise VsqeError(f"precise-bn: output folder {out.parent} does not exist")
    torch.set_num_threads(threads)
    raw = read_state_dict(weights)
    net = build_train_model(model)
    load_plain_weights(net, model, str(weights))
    sampler = TripletSampler(data, role=role, patch=patch, codec_weights=codec_weights, seed=seed)

    def stream():
        for i in range(batches):
            x, _ = sampler.batch(batch)
            if progress is not None:
                progress(i + 1, batches)
            yield x

    recompute_bn_stats(net, stream())
    new = net.state_dict()
    # The source file's key names and dtypes; only the BN buffers differ.
    written = {k: (new[k] if k in new else v).to(v.dtype).contiguous() for k, v in raw.items()}
    with safe_open(str(weights), framework="pt") as f:
        meta = dict(f.metadata() or {})
    meta["bn_stats"] = json.dumps({"batches": batches, "batch": batch, "patch": patch, "role": role,
                                   "data": str(data), "codecs": codec_weights, "seed": seed})
    meta["init_from"] = json.dumps(weights_origin(str(weights)))
    meta["note"] = "BN statistics recomputed (vsqe.train.precise_bn); weights as in init_from"
    tmp = out.with_name(out.name + ".tmp")
    save_file(written, str(tmp), metadata=meta)
    tmp.replace(out)
    return meta
