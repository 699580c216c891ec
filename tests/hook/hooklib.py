"""ctypes bindings of libvsqe_hook's C ABI (cpp/hook/vsqe_hook.h), for the tests that load the library
into this interpreter (tests/hook, tests/hardening/test_hook_inputs.py)."""
from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from vsqe import hook


class Config(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t), ("model", ctypes.c_char_p), ("weights", ctypes.c_char_p),
        ("backend", ctypes.c_char_p), ("width", ctypes.c_int), ("height", ctypes.c_int),
        ("bit_depth", ctypes.c_int), ("chroma_format", ctypes.c_int), ("mode", ctypes.c_int),
        ("sample_bytes", ctypes.c_int), ("threads", ctypes.c_int), ("allow_untrained", ctypes.c_int),
    ]


class Picture(ctypes.Structure):
    _fields_ = [
        ("planes", ctypes.c_void_p * 3), ("strides", ctypes.c_ssize_t * 3), ("poc", ctypes.c_int),
        ("slice_qp", ctypes.c_int), ("slice_type", ctypes.c_int), ("temporal_layer", ctypes.c_int),
    ]


def library_path() -> Path:
    """The installed libvsqe_hook; skips the test where it was not built."""
    path = hook.library_path()
    if path is None:
        pytest.skip("libvsqe_hook is not built (no Python embedding library when vsqe was installed)")
    return path


def bind(path: Path) -> ctypes.CDLL:
    """Loads the library with the argument and result types of the functions the tests call."""
    lib = ctypes.CDLL(str(path))
    handle = ctypes.c_void_p
    lib.vsqe_hook_config_init.argtypes = [ctypes.POINTER(Config)]
    lib.vsqe_hook_open.argtypes = [ctypes.POINTER(Config), ctypes.POINTER(handle)]
    for name in ("vsqe_hook_push", "vsqe_hook_filter_inloop"):
        getattr(lib, name).argtypes = [handle, ctypes.POINTER(Picture)]
    lib.vsqe_hook_pull.argtypes = [handle, ctypes.POINTER(Picture), ctypes.POINTER(ctypes.c_int)]
    lib.vsqe_hook_flush.argtypes = [handle]
    lib.vsqe_hook_close.argtypes = [handle]
    lib.vsqe_hook_last_error.argtypes = [handle]
    lib.vsqe_hook_last_error.restype = ctypes.c_char_p
    return lib
