"""Python face of vsqe's native ops (see docs/dcn.md)."""

from vsqe.ops.dcn import cuda_available, deform_conv2d, get_impl, native_available, set_impl

__all__ = ["deform_conv2d", "set_impl", "get_impl", "native_available", "cuda_available"]
