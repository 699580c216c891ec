// vsqe._dcn_cpu: the CPU kernels on plain buffers (no libtorch). Buffers are passed as integer
// addresses of dense, contiguous memory; the caller (vsqe/ops/dcn.py) guarantees sizes,
// contiguity and lifetime. The GIL is released while the kernels run.
#include <pybind11/pybind11.h>

#include "bindings_common.h"
#include "dcn_cpu.h"
#include "shape_arg.h"
#include "thread_pool.h"

namespace py = pybind11;
using namespace vsqe::dcn;

PYBIND11_MODULE(_dcn_cpu, m) {
  m.doc() = "DCNv2 (modulated deformable convolution) CPU kernels on raw buffers";

  m.def(
      "forward",
      [](int input_dtype, uintptr_t input, int offset_dtype, uintptr_t offset, uintptr_t mask,
         uintptr_t weight, uintptr_t bias, uintptr_t out, const std::vector<int64_t>& shape,
         int cout, int groups, int block_px, int nthreads) {
        const Shape s = shape_from(shape);
        const DType di = dtype_from(input_dtype), dof = dtype_from(offset_dtype);
        py::gil_scoped_release nogil;
        cpu::forward(di, ptr(input), dof, ptr(offset), ptr(mask), ptr<const float>(weight),
                     ptr<const float>(bias), ptr(out), s, cout, groups, block_px, nthreads);
      },
      py::arg("input_dtype"), py::arg("input"), py::arg("offset_dtype"), py::arg("offset"),
      py::arg("mask"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("shape"),
      py::arg("cout"), py::arg("groups"), py::arg("block_px") = 0, py::arg("nthreads") = 1,
      "Fused forward (AVX-512): out [N, Cout, Ho, Wo] from fp32 weight [Cout, C/groups*K] and "
      "fp32 bias (address 0 = none).");

  m.def(
      "forward_om",
      [](int input_dtype, uintptr_t input, int om_dtype, uintptr_t om, int om_channels, uintptr_t weight,
         uintptr_t bias, uintptr_t out, bool out_nhwc, const std::vector<int64_t>& shape, int cout,
         int groups, int block_px, int nthreads) {
        const Shape s = shape_from(shape);
        const DType di = dtype_from(input_dtype), dom = dtype_from(om_dtype);
        py::gil_scoped_release nogil;
        cpu::forward_om(di, ptr(input), dom, ptr(om), om_channels, ptr<const float>(weight),
                        ptr<const float>(bias), ptr(out), out_nhwc, s, cout, groups, block_px, nthreads);
      },
      py::arg("input_dtype"), py::arg("input"), py::arg("om_dtype"), py::arg("om"), py::arg("om_channels"),
      py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("out_nhwc"), py::arg("shape"),
      py::arg("cout"), py::arg("groups"), py::arg("block_px") = 0, py::arg("nthreads") = 1,
      "Fused forward (AVX-512) with offsets and mask logits in one NHWC buffer om [N, Ho, Wo, "
      "om_channels]; out NCHW or, with out_nhwc, NHWC.");

  def_im2col(
      m,
      [](const Im2colArgs& a, int n, int64_t p0, int64_t p1, int nthreads, bool simd) {
        cpu::im2col(a.input_dtype, a.input, a.offset_dtype, a.offset, a.mask, a.cols, a.s, n, p0, p1,
                    nthreads, simd);
      },
      py::arg("n"), py::arg("p0"), py::arg("p1"), py::arg("nthreads") = 1, py::arg("simd") = true,
      "Deformable im2col of output pixels [p0, p1) of image n into cols [C*K, p1 - p0].");

  def_col2im(
      m,
      [](const Col2imArgs& a, int n, int64_t p0, int64_t p1, int nthreads) {
        cpu::col2im(a.dtype, a.input, a.offset, a.mask, a.grad_cols, a.grad_input, a.grad_offset,
                    a.grad_mask, a.s, n, p0, p1, nthreads);
      },
      py::arg("n"), py::arg("p0"), py::arg("p1"), py::arg("nthreads") = 1,
      "Backward of im2col for pixels [p0, p1) of image n (f32 or f64); adds into grad_input.");

  m.def("has_avx512", &cpu::has_avx512, "Whether the AVX-512 im2col path runs on this CPU.");
  m.def("hardware_threads", &hardware_threads);
}
