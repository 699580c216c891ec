"""Tiling must not change the result: tiled STDF output equals untiled output (1e-4) on a real clip."""
from __future__ import annotations

import itertools

import pytest
import torch

from vsqe.io.decode import open_video
from vsqe.io.formats import frames_to_luma_tensor
from vsqe.pipeline.tiles import tile_spans


@pytest.mark.parametrize("size,tile,overlap", [(136, 64, 16), (200, 64, 24), (416, 192, 64), (50, 64, 16)])
def test_spans_keep_every_pixel_once(size: int, tile: int, overlap: int) -> None:
    padded = -(-size // 8) * 8
    spans = tile_spans(padded, tile, overlap, 8)
    kept = [i for s in spans for i in range(s.keep_start, s.keep_stop)]
    assert kept == list(range(padded))
    assert all(s.start % 8 == 0 and s.start <= s.keep_start and s.keep_stop <= s.stop for s in spans)


def test_tiled_equals_untiled_on_a_real_window(shared_file) -> None:
    from vsqe.pipeline.enhancer import Enhancer

    torch.manual_seed(0)
    # The shipped weights when installed (else the seed-0 untrained network). A trained STDF needs
    # an overlap of about 32 px for tiles to be exact (16 px left 0.5 levels on this clip).
    # fp32: the tiling maths is exact there; bf16 backends (auto's choice on a bf16 CPU) round each
    # tile shape's convolutions differently (2.4e-4 here, 0.06 of an 8-bit level).
    enhancer = Enhancer("stdf", require_weights=False, backend="torch-fp32")
    with open_video(shared_file("city_416x240_hm_ldp_qp37.hevc")) as reader:
        window = list(itertools.islice(reader, enhancer.spec.window))
    # A crop whose sides are not multiples of 8, so padding and the clamped last tile are exercised;
    # small, because every new tile shape costs the convolution library a set-up.
    x = frames_to_luma_tensor(window)[..., 60:150, 150:268]
    enhancer.tile = None
    whole = enhancer.enhance_tensor(x)
    enhancer.tile, enhancer.overlap = 96, 32
    tiled = enhancer.enhance_tensor(x)
    assert tiled.shape == whole.shape == (1, 1, 90, 118)
    assert (tiled - whole).abs().max().item() < 1e-4
