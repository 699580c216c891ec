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

#include "dcn_cuda.h"
#include "shape_arg.h"

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

  m.def(
      "im2col",
      [](int input_dtype, uintptr_t input, int offset_dtype, uintptr_t offset, uintptr_t mask,
         uintptr_t cols, const std::vector<int64_t>& shape, int n0, int nb, int device,
         uintptr_t stream) {
        const Shape s = shape_from(shape);
        const DType di = dtype_from(input_dtype), dof = dtype_from(offset_dtype);
        py::gil_scoped_release nogil;
        use_device(device);
        ok(cuda::im2col(di, ptr(input), dof, ptr(offset), ptr(mask), ptr(cols), s, n0, nb,
                        reinterpret_cast<cudaStream_t>(stream)),
           "im2col");
      },
      py::arg("input_dtype"), py::arg("input"), py::arg("offset_dtype"), py::arg("offset"),
      py::arg("mask"), py::arg("cols"), py::arg("shape"), py::arg("n0"), py::arg("nb"),
      py::arg("device"), py::arg("stream"),
      "Deformable im2col of images [n0, n0+nb) into cols [nb, C*K, Ho*Wo] (async).");

  m.def(
      "col2im",
      [](int dtype, uintptr_t input, uintptr_t offset, uintptr_t mask, uintptr_t grad_cols,
         uintptr_t grad_input, uintptr_t grad_offset, uintptr_t grad_mask,
         const std::vector<int64_t>& shape, int n0, int nb, int device, uintptr_t stream) {
        const Shape s = shape_from(shape);
        const DType d = dtype_from(dtype);
        py::gil_scoped_release nogil;
        use_device(device);
        ok(cuda::col2im(d, ptr(input), ptr(offset), ptr(mask), ptr(grad_cols), ptr(grad_input),
                        ptr(grad_offset), ptr(grad_mask), s, n0, nb,
                        reinterpret_cast<cudaStream_t>(stream)),
           "col2im");
      },
      py::arg("dtype"), py::arg("input"), py::arg("offset"), py::arg("mask"),
      py::arg("grad_cols"), py::arg("grad_input"), py::arg("grad_offset"), py::arg("grad_mask"),
      py::arg("shape"), py::arg("n0"), py::arg("nb"), py::arg("device"), py::arg("stream"),
      "Backward of im2col for images [n0, n0+nb) (f32 or f64); atomically adds into grad_input.");
}
