// Bias add for the DCN plugin: out[n, c, p] += bias[c] (computed in fp32, stored in out's type).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dcn_types.h"

namespace vsqe {
namespace trt_plugin {

// dtype: f32 or f16 (out and bias alike). Asynchronous on `stream`; returns launch errors.
cudaError_t add_bias(dcn::DType dtype, void* out, const void* bias, int n, int channels, int64_t plane,
                     cudaStream_t stream);

}  // namespace trt_plugin
}  // namespace vsqe
