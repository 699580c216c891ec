"""`--backend auto` on a real clip: the lazily chosen backend gives what the concrete one gives,
and `vsqe run` names it in its summary line."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from vsqe.backends.choice import choose, detect
from vsqe.io.decode import open_video
from vsqe.pipeline.enhancer import Enhancer


@pytest.fixture(scope="module")
def city_window(shared_file):
    with open_video(str(shared_file("city_416x240_hm_ldp_qp37.hevc"))) as reader:
        return list(itertools.islice(reader, 7))


def test_auto_equals_the_backend_it_chose(city_window, single_thread):
    auto = Enhancer("stdf")  # the shipped weights; backend "auto" is the default
    assert auto.backend.name == "auto"
    got = auto.enhance_window(city_window)
    chosen = auto.backend.name
    want_name = choose(detect(auto.module, "stdf"), 240 * 416).name
    assert chosen == want_name and auto.backend.chosen == [chosen]
    want = Enhancer("stdf", backend=chosen).enhance_window(city_window)
    assert np.array_equal(got.planes[0], want.planes[0])
    assert not np.array_equal(got.planes[0], city_window[3].planes[0])


def test_vsqe_run_names_the_chosen_backend(vsqe_cli, shared_file, tmp_path):
    from vsqe.models import build_model

    module, _, _ = build_model("stdf")
    want = choose(detect(module, "stdf"), 240 * 416).name
    out = tmp_path / "out.y4m"
    result = vsqe_cli("run", shared_file("city_416x240_hm_ldp_qp37.hevc"), out, "--frames", "1", "--threads", "1",
                      "--no-progress", "-v", timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"(backend {want} (auto))" in result.stderr
    assert f"backend auto -> {want} for 416x240 calls" in result.stderr
