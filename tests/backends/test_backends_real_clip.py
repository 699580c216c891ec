"""The bf16 fast paths against fp32 on a real clip (issue 4): max abs difference of the output.

tests/backends/test_backends.py checks every backend on random input; this one feeds a real QP37
window (a crop of city_416x240's HM stream), where the offsets the DCN samples come from real
motion, and also bounds the difference in 8-bit code values, the unit the output is written in.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from vsqe.backends import create_backend
from vsqe.backends.torch_backend import bf16_supported
from vsqe.io.decode import open_video
from vsqe.io.formats import frames_to_luma_tensor
from vsqe.models import build_model


@pytest.fixture(scope="module")
def clip_window(shared_file):
    with open_video(str(shared_file("city_416x240_hm_ldp_qp37.hevc"))) as reader:
        frames = list(itertools.islice(reader, 7))
    # A 64x96 crop with texture and motion keeps the test small on 1 thread.
    return frames_to_luma_tensor(frames)[..., 80:144, 160:256].contiguous()


@pytest.mark.parametrize("name", ["torch-bf16", "openvino-bf16"])
def test_bf16_backend_close_to_fp32_on_real_clip(clip_window, name):
    if not bf16_supported():
        pytest.skip("this CPU has no bf16 support (AVX512-BF16/AMX): bf16 backends cannot run")
    model, _, _ = build_model("stdf", require_weights=False)
    reference = create_backend("torch-fp32", model)(clip_window)
    out = create_backend(name, model)(clip_window)
    model.float().to(memory_format=torch.contiguous_format)
    diff = (out - reference).abs().max().item()
    # Random weights: bf16 rounding of 8 bits of mantissa through ~20 layers; less than one
    # 8-bit code value is the bound that matters for the written output.
    assert diff < 1 / 255, f"{name}: max abs diff {diff:.2e} vs torch-fp32"
