"""The TensorRT DCN plugin's C++ (plugins/), checked without TensorRT and without a GPU.

1. The TensorRT-free part (attributes, shape maths, workspace) with its plain C++ test: always.
2. The plugin classes compiled against TensorRT's public headers and driven through TensorRT's
   interface types by a host-only program (no enqueue, so no CUDA/cuBLAS call; the test library
   is linked with unresolved symbols allowed): only where headers are found, in
   $TENSORRT_ROOT/include or ../cache/trt-headers/include (docs/tensorrt.md says how to get them).

The CUDA kernels themselves (cpp/dcn/dcn_cuda.cu, linked into the plugin) are compiled by nvcc in
the package build (vsqe._dcn_cuda) and by CMake's vsqe_dcn_plugin target.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGINS = REPO / "plugins"
DCN = REPO / "cpp" / "dcn"
HERE = Path(__file__).resolve().parent
CXX = os.environ.get("CXX", "g++")

pytestmark = pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no C++ compiler ({CXX})")


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_params_unit_test(tmp_path: Path):
    exe = tmp_path / "params_test"
    build = _run([CXX, "-std=c++17", "-O0", "-Wall", "-Wextra", "-Werror", f"-I{PLUGINS}", f"-I{DCN}",
                  str(PLUGINS / "dcn_plugin_params.cpp"), str(HERE / "test_dcn_plugin_params.cpp"), "-o", str(exe)])
    assert build.returncode == 0, build.stderr
    run = _run([str(exe)])
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().startswith("ok:")


def _trt_include() -> Path | None:
    roots = [os.environ.get("TENSORRT_ROOT", ""), str(REPO.parent / "cache" / "trt-headers")]
    for root in filter(None, roots):
        inc = Path(root) / "include"
        if (inc / "NvInferRuntime.h").is_file():
            return inc
    return None


def _cuda_includes() -> list[Path]:
    """Directories with cuda_runtime_api.h and cublas_v2.h (CUDA toolkit or NVIDIA's wheels)."""
    candidates = []
    for key in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(key):
            candidates.append(Path(os.environ[key]) / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    site = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    if site.is_dir():
        candidates += sorted(site.glob("*/include"))
    found: list[Path] = []
    for header in ("cuda_runtime_api.h", "cublas_v2.h"):
        hit = next((c for c in candidates if (c / header).is_file()), None)
        if hit is None:
            return []
        if hit not in found:
            found.append(hit)
    return found


def test_plugin_against_tensorrt_headers(tmp_path: Path):
    trt = _trt_include()
    if trt is None:
        pytest.skip("TensorRT headers not found (set TENSORRT_ROOT, see docs/tensorrt.md)")
    cuda = _cuda_includes()
    if not cuda:
        pytest.skip("CUDA runtime / cuBLAS headers not found")
    flags = ["-std=c++17", "-O0", "-Wall", "-Wextra", "-Werror", "-Wno-deprecated-declarations",
             "-isystem", str(trt), *(f"-I{c}" for c in cuda), f"-I{PLUGINS}", f"-I{DCN}"]
    lib = tmp_path / "libplugin_host.so"
    build = _run([CXX, *flags, "-fPIC", "-shared", str(PLUGINS / "dcn_plugin.cpp"),
                  str(PLUGINS / "dcn_plugin_params.cpp"), "-o", str(lib), "-Wl,--unresolved-symbols=ignore-all"])
    assert build.returncode == 0, build.stderr
    exe = tmp_path / "plugin_host_check"
    build = _run([CXX, *flags, str(HERE / "plugin_host_check.cpp"), "-o", str(exe), f"-L{tmp_path}",
                  "-lplugin_host", f"-Wl,-rpath,{tmp_path}", "-Wl,--allow-shlib-undefined"])
    assert build.returncode == 0, build.stderr
    run = _run([str(exe)])
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().startswith("ok:")
