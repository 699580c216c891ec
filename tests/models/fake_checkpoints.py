"""Synthetic official checkpoints for the model tests: random weights under a model's own key names,
wrapped as the official trainers save them, and the key-for-key check of what loaded."""
from __future__ import annotations

import torch

from vsqe.models import get_model_spec

# Key -> shape of SpyNet as BasicVSR++ and MFQEv2 (mmedit / PowerVQE) hold it, from
# models.md §3.2 and §4, without the `generator.` prefix.
SPYNET_SHAPES = {
    "spynet.basic_module.0.basic_module.0.conv.weight": (32, 8, 7, 7),
    "spynet.basic_module.5.basic_module.1.conv.weight": (64, 32, 7, 7),
    "spynet.basic_module.5.basic_module.2.conv.weight": (32, 64, 7, 7),
    "spynet.basic_module.5.basic_module.3.conv.weight": (16, 32, 7, 7),
    "spynet.basic_module.5.basic_module.4.conv.weight": (2, 16, 7, 7),
    "spynet.basic_module.5.basic_module.4.conv.bias": (2,),
    "spynet.mean": (1, 3, 1, 1),
    "spynet.std": (1, 3, 1, 1),
}


def meta_model(name: str) -> torch.nn.Module:
    """Builds a registered model without allocating or initialising its weights (shapes only)."""
    with torch.device("meta"):
        return get_model_spec(name).build()


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def random_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Small random weights for every key of `model` (which may live on the meta device); BatchNorm
    running variances stay positive and batch counters are integers."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000 + seed, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=gen) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=gen) * 0.05
    return out


def mmedit_checkpoint(state: dict[str, torch.Tensor], iteration: int | None = None) -> dict:
    """The mmedit / mmagic (PowerVQE) layout: the weights under `generator.`; with `iteration`,
    also the meta, step counter and optimizer entries of a training run's `iter_*.pth`."""
    generator = {"generator." + k: v for k, v in state.items()}
    if iteration is None:
        return {"state_dict": generator}
    return {
        "meta": {"iter": iteration, "mmedit_version": "0.14.0"},
        "state_dict": generator | {"step_counter": torch.tensor([float(iteration)])},
        "optimizer": {"generator": {"state": {}, "param_groups": []}},
    }


def assert_loaded_key_for_key(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key
