"""Every CPU backend computes what the fp32 eager path computes (within its precision)."""
from __future__ import annotations

import pytest
import torch

from vsqe.backends import create_backend
from vsqe.backends.torch_backend import bf16_supported
from vsqe.errors import BackendError
from vsqe.models import build_model


@pytest.fixture(scope="module")
def stdf():
    model, _, _ = build_model("stdf", require_weights=False)
    x = torch.rand(1, 7, 1, 40, 56, generator=torch.Generator().manual_seed(3))
    return model, x, create_backend("torch-fp32", model)(x)


@pytest.mark.parametrize(
    "name, tolerance",
    [("torch-fp32", 0.0), ("openvino-fp32", 1e-4), ("torch-bf16", 2e-2), ("openvino-bf16", 2e-2)],
)
def test_backend_matches_fp32_eager(stdf, name, tolerance):
    model, x, reference = stdf
    if name.endswith("bf16") and not bf16_supported():
        pytest.skip("this CPU has no bf16 support (AVX512-BF16/AMX): bf16 backends cannot run")
    out = create_backend(name, model)(x)
    model.float().to(memory_format=torch.contiguous_format)
    assert out.shape == reference.shape and out.dtype == torch.float32
    assert (out - reference).abs().max().item() <= tolerance


def test_unknown_backend_is_one_line():
    model, _, _ = build_model("stdf", require_weights=False)
    with pytest.raises(BackendError, match=r"unknown backend 'gpu9' \(known: auto, torch"):
        create_backend("gpu9", model)
