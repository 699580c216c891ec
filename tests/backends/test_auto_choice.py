"""`--backend auto`: the rule (backends/choice.py) on faked capabilities, the memory table, and
the lazy backend (backends/auto.py) with a fake factory."""
from __future__ import annotations

import logging

import pytest
import torch

from vsqe.backends import choice
from vsqe.backends.auto import AutoBackend
from vsqe.backends.choice import Capabilities, choose, estimated_rss_mb, tile_for, tile_side, untiled_pixel_limit

CIF = 416 * 240
WVGA = 832 * 480
HD = 1920 * 1088  # 1080p (and the old fixed untiled limit)
UHD = 3840 * 2160
FULL = Capabilities(bf16=True, openvino=True, model="stdf")

# The rule is tested on a fixed table with crossovers in it (session 2's measurements, before the
# fused DCN made torch the fastest everywhere), so these tests do not move with the numbers.
RULE_FPS = (
    (CIF, "416x240", {"torch-bf16": 6.36, "openvino-bf16": 6.34, "openvino-fp32": 4.63, "torch-fp32": 3.21}),
    (WVGA, "832x480", {"openvino-bf16": 1.49, "openvino-fp32": 1.00, "torch-bf16": 0.86, "torch-fp32": 0.42}),
    (1920 * 1080, "1920x1080", {"openvino-bf16": 0.24, "torch-bf16": 0.21}),
)
RULE_RSS = {
    "torch-fp32": ((WVGA, 1488), (1280 * 720, 2478), (HD, 3603)),
    "torch-bf16": ((WVGA, 1125), (1280 * 720, 1690), (HD, 2847)),
    "openvino-fp32": ((WVGA, 2613), (1280 * 720, 3114), (HD, 10109)),
    "openvino-bf16": ((WVGA, 2746), (1280 * 720, 3532), (1088 * 1088, 6630), (HD, 10865)),
}


@pytest.fixture
def rule_table(monkeypatch):
    monkeypatch.setitem(choice.MEASURED_FPS, "stdf", RULE_FPS)
    monkeypatch.setattr(choice, "RSS_MB", RULE_RSS)


@pytest.mark.usefixtures("rule_table")
@pytest.mark.parametrize(
    "caps, pixels, want",
    [
        (FULL, CIF, "torch-bf16"),  # tie at 416x240 (6.36 / 6.34 fps): the cheaper one
        (FULL, WVGA - 8, "torch-bf16"),  # below 832x480 the 416x240 row holds
        (FULL, WVGA, "openvino-bf16"),  # 1.49 vs 0.86 fps
        (FULL, 1280 * 720, "openvino-bf16"),
        (FULL, HD, "torch-bf16"),  # openvino-bf16 whole would need ~11 GB
        (Capabilities(bf16=True, openvino=False), CIF, "torch-bf16"),
        (Capabilities(bf16=True, openvino=False), WVGA, "torch-bf16"),
        (Capabilities(bf16=False, openvino=True), CIF, "openvino-fp32"),
        (Capabilities(bf16=False, openvino=True), WVGA, "openvino-fp32"),
        (Capabilities(bf16=False, openvino=False), WVGA, "torch-fp32"),
        (Capabilities(bf16=True, openvino=True, tensorrt=True), HD, "trt"),
        (Capabilities(bf16=True, openvino=False, tensorrt=True, recurrent=True, model="basicvsrpp"), CIF, "torch-fp32"),
        # bf16 is not checked against fp32's ΔPSNR for these: fp32 until measured
        (Capabilities(bf16=True, openvino=False, model="mfqev2"), WVGA, "torch-fp32"),
        (Capabilities(bf16=True, openvino=False, model="basicvsrpp"), CIF, "torch-fp32"),
        (Capabilities(bf16=True, openvino=True, model="stdf", excluded=frozenset({"openvino-bf16"})), WVGA, "openvino-fp32"),
        (Capabilities(bf16=True, openvino=True, model="stdf", excluded=frozenset({"openvino-bf16", "openvino-fp32"})),
         WVGA, "torch-bf16"),
    ],
)
def test_auto_picks_by_the_rule(caps, pixels, want):
    got = choose(caps, pixels)
    assert got.name == want, got.reason
    assert got.reason


@pytest.mark.usefixtures("rule_table")
def test_nothing_fits_whole_picks_the_leanest_and_tiles_it():
    got = choose(FULL, UHD)
    assert got.name == "torch-bf16" and "tiled" in got.reason
    tile = tile_for(got.name, 2160, 3840)
    assert tile is not None and tile % 64 == 0
    assert choose(FULL, tile * tile).name in ("torch-bf16", "openvino-bf16")  # each tile fits some backend
    assert all(estimated_rss_mb(n, tile * tile) <= choice.MEMORY_BUDGET_MB for n in [choose(FULL, tile * tile).name])


@pytest.mark.parametrize("name", ["torch-fp32", "torch-bf16", "openvino-fp32", "openvino-bf16"])
def test_default_1080p_stays_within_the_budget_on_every_backend(name):
    tile = tile_for(name, 1088, 1920)
    pixels = HD if tile is None else tile * tile
    assert estimated_rss_mb(name, pixels) <= choice.MEMORY_BUDGET_MB
    assert untiled_pixel_limit(name) >= WVGA  # the dev-clip sizes run whole everywhere


def test_measured_table_picks_the_fastest_measured_backend():
    # On the shipped table: at each measured size auto runs the fastest candidate of that row.
    for pixels, _, fps in choice.MEASURED_FPS["stdf"]:
        caps = FULL
        got = choose(caps, pixels)
        fitting = {n: v for n, v in fps.items() if tile_for(n, 1, pixels) is None}
        assert got.name == max(fitting, key=fitting.get), (pixels, got.reason)


def test_threshold_table_follows_memory_per_pixel():
    # Measured (session 4): torch-bf16 runs 1080p whole (2.3 GB); torch-fp32 (5.1 GB) and
    # openvino-bf16 (~11 GB) must tile it.
    assert tile_for("torch-bf16", 1088, 1920) is None
    assert tile_for("torch-fp32", 1088, 1920) == tile_side("torch-fp32") < 1088
    assert tile_for("openvino-bf16", 1088, 1920) == tile_side("openvino-bf16") < 1088
    assert untiled_pixel_limit("openvino-bf16") < untiled_pixel_limit("torch-bf16")
    # backends outside the table (trt, bench-only) keep the old fixed limit
    assert tile_for("trt", 1088, 1920) is None and tile_for("trt", 2160, 3840) == choice.FALLBACK_TILE


def test_a_model_with_its_own_memory_row_tiles_where_stdf_does_not():
    # MFQEv2-Y holds ~4x STDF-Y's memory per pixel (session 5: 9.6 GB at 1080p in bf16), so its row,
    # not the backend's STDF row, decides: 1080p and 720p tile, the dev-clip sizes run whole.
    assert tile_for("torch-bf16", 1080, 1920) is None
    for name in ("torch-bf16", "torch-fp32"):
        assert tile_for(name, 1080, 1920, "mfqev2-y") == tile_side(name)
        assert tile_for(name, 720, 1280, "mfqev2-y") == tile_side(name)
        assert tile_for(name, 480, 832, "mfqev2-y") is None
        tile = tile_side(name)
        assert estimated_rss_mb(name, tile * tile, "mfqev2-y") <= choice.MEMORY_BUDGET_MB
    mfqe = Capabilities(bf16=True, model="mfqev2-y")
    assert "tiled" in choose(mfqe, HD).reason and choose(mfqe, WVGA).name == "torch-bf16"
    # a model without a row falls back to the backend's
    assert untiled_pixel_limit("torch-bf16", "stdf") == untiled_pixel_limit("torch-bf16")


class _Fake:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail, self.calls = name, fail, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail:
            raise RuntimeError("cannot convert this model")
        return x[:, 0] + {"torch-bf16": 1, "openvino-bf16": 2, "openvino-fp32": 3, "torch-fp32": 4}[self.name]


def _auto(caps: Capabilities, failing: set[str] = frozenset()):
    built: list[str] = []

    def factory(name: str):
        built.append(name)
        return _Fake(name, fail=name in failing)

    return AutoBackend(caps, factory), built


@pytest.mark.usefixtures("rule_table")
def test_auto_builds_lazily_per_size_and_logs_once(caplog):
    auto, built = _auto(FULL)
    assert auto.name == "auto" and built == []
    caplog.set_level(logging.INFO, logger="vsqe.backends")
    small = torch.zeros(1, 7, 1, 240, 416)
    assert float(auto(small).max()) == 1 and auto.name == "torch-bf16"
    auto(small)
    big = torch.zeros(1, 7, 1, 480, 832)
    assert float(auto(big).max()) == 2 and auto.name == "openvino-bf16"
    assert built == ["torch-bf16", "openvino-bf16"] and auto.chosen == built
    lines = [r.getMessage() for r in caplog.records if "backend auto" in r.getMessage()]
    assert len(lines) == 2 and "torch-bf16 for 416x240" in lines[0] and "openvino-bf16 for 832x480" in lines[1]


@pytest.mark.usefixtures("rule_table")
def test_auto_falls_back_with_one_warning_when_a_backend_fails(caplog):
    auto, built = _auto(FULL, failing={"openvino-bf16", "openvino-fp32"})
    big = torch.zeros(1, 7, 1, 480, 832)
    assert float(auto(big).max()) == 1 and auto.name == "torch-bf16"
    assert built == ["openvino-bf16", "openvino-fp32", "torch-bf16"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "cannot convert this model" in warnings[0]
    auto(big)
    assert built[-1] == "torch-bf16" and len(built) == 3  # not retried


def test_auto_raises_when_the_last_resort_fails():
    auto, _ = _auto(Capabilities(bf16=False, openvino=False), failing={"torch-fp32"})
    with pytest.raises(RuntimeError, match="cannot convert"):
        auto(torch.zeros(1, 7, 1, 16, 16))


@pytest.mark.parametrize("backend", ["auto", "torch-fp32"])
def test_the_enhancer_asks_with_its_model_name(backend):
    from vsqe.pipeline.enhancer import Enhancer

    enhancer = Enhancer(model="mfqev2-y", backend=backend, threads=1)
    assert enhancer._tile_for(1080, 1920) is not None  # auto: on STDF's row bf16 would run it whole
    assert enhancer._tile_for(1080, 1920, enhancer.pqf_backend) is not None
    assert enhancer._tile_for(480, 832) is None
