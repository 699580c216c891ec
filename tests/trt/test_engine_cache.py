"""Engine-cache keys and lookup (vsqe/export/engine.py): pure functions, no TensorRT, no GPU.

A key must change with everything an engine depends on, and a cached file must be used only when
its recorded key is exactly the one asked for. The "engine" files here are placeholder bytes for
the lookup logic; nothing is deserialised.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from vsqe.export.engine import (
    MIN_ENGINE_BYTES,
    BuildTarget,
    EngineKey,
    Profile,
    cache_paths,
    cached_engine,
    engine_key,
    model_fingerprint,
    onnx_cache_path,
    parse_size,
    write_atomic,
)

ONNX = hashlib.sha256(b"model").hexdigest()
PLUGIN = hashlib.sha256(b"plugin").hexdigest()
STATIC = Profile.static((1, 7, 1, 720, 1280))


def _key(**over) -> EngineKey:
    key_args = dict(model="stdf", onnx_sha256=ONNX, profile=STATIC)
    target = dict(precision="fp16", dcn="native", trt_version="11.4.0.106", gpu_name="NVIDIA H100 80GB HBM3",
                  compute_capability=(9, 0), workspace_mb=2048)
    for name, value in over.items():
        (target if name in BuildTarget.__dataclass_fields__ else key_args)[name] = value
    return engine_key(**key_args, target=BuildTarget(**target))


def test_key_format_is_stable():
    """Users' engine caches are keyed by this digest: a refactor must not change it (a deliberate
    format change bumps KEY_VERSION, and this value with it). Pinned when BuildTarget was split
    out of EngineKey, with the same digest as before."""
    assert _key().digest() == "1f8f991202431fca40e1cff985e1ac9c403b0c45fc4b55b0bce2eb5c4dc5af13"


def test_key_is_deterministic():
    assert _key() == _key()
    assert _key().digest() == _key().digest()
    assert _key().stem() == _key().stem()
    assert json.loads(_key().canonical())["onnx_sha256"] == ONNX


@pytest.mark.parametrize(
    "change",
    [
        dict(onnx_sha256=hashlib.sha256(b"other weights").hexdigest()),
        dict(profile=Profile.static((1, 7, 1, 720, 1272))),
        dict(profile=Profile((1, 7, 1, 64, 64), (1, 7, 1, 720, 1280), (1, 7, 1, 1088, 1920))),
        dict(precision="fp32"),
        dict(dcn="plugin", plugin_sha256=PLUGIN),
        dict(trt_version="10.13.3.9"),
        dict(gpu_name="NVIDIA GeForce RTX 4090"),
        dict(compute_capability=(8, 9)),
        dict(workspace_mb=1024),
        dict(opt_level=5),
        dict(model="stdf-rgb"),
        dict(input_name="x"),
    ],
)
def test_every_dependency_changes_the_key(change):
    base, other = _key(), _key(**change)
    assert other.digest() != base.digest()
    assert other.stem() != base.stem()


def test_plugin_hash_is_part_of_plugin_keys_only():
    a = _key(dcn="plugin", plugin_sha256=PLUGIN)
    b = _key(dcn="plugin", plugin_sha256=hashlib.sha256(b"rebuilt plugin").hexdigest())
    assert a.digest() != b.digest()
    # The native path does not depend on our library: its hash is not recorded.
    assert _key(plugin_sha256=PLUGIN) == _key()
    with pytest.raises(ValueError, match="plugin"):
        _key(dcn="plugin")


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        _key(precision="int8")
    with pytest.raises(ValueError):
        _key(dcn="cudnn")
    with pytest.raises(ValueError):
        _key(onnx_sha256="abc")
    with pytest.raises(ValueError):
        _key(profile=Profile((1, 7, 1, 64, 64), (1, 7, 1, 32, 64), (1, 7, 1, 128, 128)))
    with pytest.raises(ValueError):
        _key(profile=Profile((1, 7, 1, 64, 64), (1, 5, 1, 64, 64), (1, 7, 1, 64, 64)))


def test_stem_is_readable_and_filesystem_safe():
    stem = _key(gpu_name="NVIDIA GeForce RTX 4090 / Laptop").stem()
    assert stem.startswith("stdf_n1t7c1_1280x720_fp16_native_trt11.4.0.106_NVIDIA-GeForce-RTX-4090-Laptop_sm90_")
    assert "/" not in stem and " " not in stem
    dyn = _key(profile=Profile((1, 7, 1, 64, 64), (1, 7, 1, 720, 1280), (1, 7, 1, 1088, 1920))).stem()
    assert "_64x64-1280x720-1920x1088_" in dyn


def test_timing_cache_is_per_gpu_and_version(tmp_path):
    a = cache_paths(tmp_path, _key()).timing
    assert a == cache_paths(tmp_path, _key(precision="fp32", onnx_sha256=PLUGIN)).timing  # shared by models
    assert a != cache_paths(tmp_path, _key(trt_version="10.13.3.9")).timing
    assert a != cache_paths(tmp_path, _key(compute_capability=(8, 9))).timing
    assert a.parent == cache_paths(tmp_path, _key()).engine.parent  # next to the engines


def _store(tmp_path, key: EngineKey, data: bytes = b"\0" * (MIN_ENGINE_BYTES * 2), meta_key=None) -> None:
    paths = cache_paths(tmp_path, key)
    write_atomic(paths.engine, data)
    meta = {"key": json.loads((meta_key or key).canonical()), "engine_sha256": hashlib.sha256(data).hexdigest()}
    write_atomic(paths.meta, json.dumps(meta).encode())


def test_cached_engine_lookup(tmp_path):
    key = _key()
    assert cached_engine(tmp_path, key) is None
    _store(tmp_path, key)
    assert cached_engine(tmp_path, key) == cache_paths(tmp_path, key).engine
    # Another TensorRT version, GPU or weights: a different file, not this one.
    assert cached_engine(tmp_path, _key(trt_version="11.5.0.1")) is None
    assert cached_engine(tmp_path, _key(onnx_sha256=PLUGIN)) is None
    assert not list(tmp_path.glob(".*.tmp"))  # written via temp file + rename


def test_stale_or_damaged_files_are_not_used(tmp_path):
    key = _key()
    # A file at the right name whose record is for another key (e.g. copied by hand).
    _store(tmp_path, key, meta_key=_key(gpu_name="NVIDIA A100"))
    assert cached_engine(tmp_path, key) is None
    # Truncated engine (a crash during an old, non-atomic write).
    _store(tmp_path, key, data=b"\0" * 100)
    assert cached_engine(tmp_path, key) is None
    # Engine bytes changed after the record was written.
    _store(tmp_path, key)
    cache_paths(tmp_path, key).engine.write_bytes(b"\1" * (MIN_ENGINE_BYTES * 2))
    assert cached_engine(tmp_path, key) is None
    # Missing or unreadable record.
    _store(tmp_path, key)
    cache_paths(tmp_path, key).meta.write_text("{not json")
    assert cached_engine(tmp_path, key) is None
    cache_paths(tmp_path, key).meta.unlink()
    assert cached_engine(tmp_path, key) is None


def test_model_fingerprint_follows_weights_and_shapes():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    fp = model_fingerprint(m, STATIC, "fp16", "native", 11)
    assert fp == model_fingerprint(m, STATIC, "fp16", "native", 11)
    assert fp != model_fingerprint(m, Profile.static((1, 7, 1, 720, 1272)), "fp16", "native", 11)
    assert fp != model_fingerprint(m, STATIC, "fp32", "native", 11)
    assert fp != model_fingerprint(m, STATIC, "fp16", "plugin", 11)
    assert fp != model_fingerprint(m, STATIC, "fp16", "native", 10)  # fp16 ONNX (11) vs flag (10)
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] += 1e-6
    assert fp != model_fingerprint(m, STATIC, "fp16", "native", 11)


def test_onnx_cache_path(tmp_path):
    p = onnx_cache_path(tmp_path, "stdf rgb", ONNX)
    assert p.parent == tmp_path / "onnx" and p.name == f"stdf-rgb-{ONNX[:16]}.onnx"


def test_parse_size_and_profile_label():
    assert parse_size("1920x1080") == (1080, 1920)
    assert parse_size(" 64X48 ") == (48, 64)
    for bad in ("1920", "0x10", "axb", "-4x4"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert STATIC.is_static and STATIC.label() == "n1t7c1_1280x720"
    assert dataclasses.replace(STATIC, max=(1, 7, 1, 1088, 1920)).label() == "n1t7c1_1280x720-1280x720-1920x1088"
