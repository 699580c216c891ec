"""Small random MFQEv2 weights for the PQF tests (there are no trained ones): saved as safetensors."""
from __future__ import annotations

from pathlib import Path

import torch


def save_random_mfqev2(path: Path, seed: int) -> Path:
    """A randomly initialised MFQEv2 (seeded), with the last conv scaled up so that the two
    weight sets give visibly different outputs."""
    from safetensors.torch import save_file

    from vsqe.models.mfqev2 import MFQEv2

    torch.manual_seed(seed)
    model = MFQEv2()
    with torch.no_grad():
        model.rec_conv[5].weight.mul_(4.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
