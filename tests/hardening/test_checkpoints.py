"""Bad checkpoints through the CLI (`vsqe run --weights`) and the VapourSynth filter (`weights=`).

tests/models/test_stdf.py covers the loader itself; here every bad file must give one line naming
what is wrong, exit 2 (CLI) or vs.Error (VapourSynth), no output file, and -- for pickles that
would run code when unpickled -- no code run: a marker file the payload would create must not
appear, whatever the file's suffix or pickle flavour.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from vsqe.cli import main
from vsqe.models import get_model_spec

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "city_416x240_x264_qp37.264"


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = get_model_spec("stdf").build()
    return {k: torch.randn(v.shape, generator=g) * 0.01 for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory) -> tuple[dict[str, tuple[Path, str]], Path]:
    """name -> (file, regex of the one-line error); and the marker the evil ones would create."""
    folder = tmp_path_factory.mktemp("ckpt")
    marker = folder / "PWNED"
    evil = _RunsCode(str(marker))
    cases: dict[str, tuple[Path, str]] = {}

    path = folder / "evil.pt"  # torch's zip format, the payload beside real weights
    torch.save({"state_dict": _state(), "payload": evil}, path)
    cases["evil_zip"] = (path, r"refusing checkpoint .*evil.pt: it is not a plain weights file")
    path = folder / "evil_legacy.pth"  # a bare pickle (the pre-1.6 torch format)
    path.write_bytes(pickle.dumps({"state_dict": {"w": evil}}, protocol=2))
    cases["evil_legacy"] = (path, r"refusing checkpoint .*evil_legacy.pth: it is not a plain weights file")
    path = folder / "evil.safetensors"  # a pickle under a safetensors name
    path.write_bytes(pickle.dumps(evil))
    cases["evil_safetensors"] = (path, r"cannot read safetensors checkpoint")

    rgb = get_model_spec("stdf-rgb").build().state_dict()
    path = folder / "stdf_rgb.pt"  # another architecture (3-channel STDF)
    torch.save(rgb, path)
    cases["other_arch"] = (path, r"does not fit model 'stdf': key '[\w.]+' has shape \[\d+(, \d+)*\], the model needs")
    path = folder / "foreign.pt"  # not STDF at all
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.bias": torch.zeros(10)}, path)
    cases["foreign"] = (path, r"does not fit model 'stdf': missing key")
    state = _state()
    key = next(iter(state))
    state[key] = state[key].flatten()[:-1]
    path = folder / "reshaped.pt"
    torch.save(state, path)
    cases["wrong_shape"] = (path, rf"key '{key}' has shape")
    good = folder / "good.pt"
    torch.save(_state(), good)
    data = good.read_bytes()
    path = folder / "cut.pt"
    path.write_bytes(data[: len(data) // 3])
    cases["truncated"] = (path, r"truncated or not a checkpoint")
    for bad, label in ((float("nan"), "nan"), (float("inf"), "inf")):
        state = _state()
        state["qenet.out_conv.weight"].view(-1)[3] = bad
        path = folder / f"{label}.pt"
        torch.save(state, path)
        cases[label] = (path, r"key 'qenet.out_conv.weight' holds NaN or Inf values")
    path = folder / "empty.safetensors"
    path.write_bytes(b"")
    cases["empty"] = (path, r"checkpoint is empty \(0 bytes\)")
    good.unlink()
    return cases, marker


CASES = ["evil_zip", "evil_legacy", "evil_safetensors", "other_arch", "foreign", "wrong_shape", "truncated",
         "nan", "inf", "empty"]


@pytest.mark.parametrize("name", CASES)
def test_vsqe_run_refuses_the_checkpoint(bad_checkpoints, capsys, tmp_path, name) -> None:
    import re

    cases, marker = bad_checkpoints
    path, pattern = cases[name]
    code = main(["run", str(SAMPLE), str(tmp_path / "o.mkv"), "--weights", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("vsqe: error: "), err
    assert re.search(pattern, err), err
    assert os.listdir(tmp_path) == []
    assert not marker.exists(), "unpickling ran the payload"


@pytest.mark.parametrize("name", CASES)
def test_vapoursynth_refuses_the_checkpoint(bad_checkpoints, name) -> None:
    import re

    vs = pytest.importorskip("vapoursynth", reason="VapourSynth is not installed (make setup installs it)")
    import vsqe.vs

    cases, marker = bad_checkpoints
    path, pattern = cases[name]
    clip = vs.core.std.BlankClip(format=vs.YUV420P8, width=64, height=48, length=8)
    with pytest.raises(vs.Error) as exc:
        vsqe.vs.enhance(clip, weights=str(path))
    message = str(exc.value)
    assert message.startswith("vsqe: ") and "\n" not in message and re.search(pattern, message), message
    assert not marker.exists(), "unpickling ran the payload"


def test_the_payload_would_have_run(bad_checkpoints, tmp_path) -> None:
    """The control: a plain pickle.load of the legacy file does create the marker, so its absence
    above means vsqe refused to run it (not that the payload was inert)."""
    cases, _ = bad_checkpoints
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"w": _RunsCode(str(marker))}, protocol=2))
    pickle.loads(path.read_bytes())
    assert marker.exists()
