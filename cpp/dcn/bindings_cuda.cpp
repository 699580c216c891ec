// vsqe._dcn_cuda: the CUDA kernels on raw device pointers (no libtorch). The caller passes
// integer device addresses, the device index and the cudaStream_t as an integer (torch's
// torch.cuda.current_stream().cuda_stream). Launches are asynchronous on that stream.
//
// This module links cudart statically: importing it loads no CUDA library, and the driver is
// only touched by the first call.
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "bindings_common.h"
#include "dcn_cuda.h"

namespace py = pybind11;
using namespace vsqe::dcn;

namespace {

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("dcn cuda ") + what + ": " + cudaGetErrorString(e));
}

// Our static cudart keeps its own current device per thread; follow the tensors' device.
void use_device(int device) { ok(cudaSetDevice(device), "cudaSetDevice"); }

}  // namespace

PYBIND11_MODULE(_dcn_cuda, m) {
  m.doc() = "DCNv2 (modulated deformable convolution) CUDA kernels on raw device buffers";

  def_im2col(
      m,
      [](const Im2colArgs& a, int n0, int nb, int device, uintptr_t stream) {
        use_device(device);
        ok(cuda::im2col(a.input_dtype, a.input, a.offset_dtype, a.offset, a.mask, a.cols, a.s, n0, nb,
                        reinterpret_cast<cudaStream_t>(stream)),
           "im2col");
      },
      py::arg("n0"), py::arg("nb"), py::arg("device"), py::arg("stream"),
      "Deformable im2col of images [n0, n0+nb) into cols [nb, C*K, Ho*Wo] (async).");

  def_col2im(
      m,
      [](const Col2imArgs& a, int n0, int nb, int device, uintptr_t stream) {
        use_device(device);
        ok(cuda::col2im(a.dtype, a.input, a.offset, a.mask, a.grad_cols, a.grad_input, a.grad_offset,
                        a.grad_mask, a.s, n0, nb, reinterpret_cast<cudaStream_t>(stream)),
           "col2im");
      },
      py::arg("n0"), py::arg("nb"), py::arg("device"), py::arg("stream"),
      "Backward of im2col for images [n0, n0+nb) (f32 or f64); atomically adds into grad_input.");
}
