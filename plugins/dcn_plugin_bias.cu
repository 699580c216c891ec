// See dcn_plugin_bias.h.
#include <cuda_fp16.h>

#include "dcn_plugin_bias.h"

namespace vsqe {
namespace trt_plugin {
namespace {

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__half v) { return __half2float(v); }
template <class T>
__device__ inline T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) { return v; }
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half_rn(v); }

template <class T>
__global__ void add_bias_kernel(T* out, const T* bias, int channels, int64_t plane, int64_t total) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int c = int((i / plane) % channels);
    out[i] = from_float<T>(to_float(out[i]) + to_float(bias[c]));
  }
}

}  // namespace

cudaError_t add_bias(dcn::DType dtype, void* out, const void* bias, int n, int channels, int64_t plane,
                     cudaStream_t stream) {
  const int64_t total = int64_t(n) * channels * plane;
  if (total == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t want = (total + threads - 1) / threads;
  const int blocks = int(want < 65535 * 8 ? want : 65535 * 8);
  if (dtype == dcn::DType::f16)
    add_bias_kernel<<<blocks, threads, 0, stream>>>(static_cast<__half*>(out), static_cast<const __half*>(bias),
                                                     channels, plane, total);
  else if (dtype == dcn::DType::f32)
    add_bias_kernel<<<blocks, threads, 0, stream>>>(static_cast<float*>(out), static_cast<const float*>(bias),
                                                     channels, plane, total);
  else
    return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace trt_plugin
}  // namespace vsqe
