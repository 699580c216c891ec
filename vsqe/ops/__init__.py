"""Python face of vsqe's native ops (see docs/dcn.md)."""

from vsqe.ops import dcn as _dcn
from vsqe.ops.dcn import (
    cuda_available,
    deform_conv2d,
    deform_conv2d_om,
    get_impl,
    native_available,
    om_fast_path_applies,
    plain_cpu_inference,
    set_impl,
)

__all__ = list(_dcn.__all__)
