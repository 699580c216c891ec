// Shared by the pybind11 modules (bindings_cpu.cpp, bindings_cuda.cpp). im2col and col2im take the
// same leading arguments on every device -- dtype codes, buffer addresses and the shape, passed the
// same way to both modules by vsqe/ops/dcn.py -- followed by the device's own (which image or
// pixels; threads, or device and stream). def_im2col / def_col2im name and check the common ones
// once (shape_arg.h), release the GIL and call the device's kernel lambda with them converted
// (Im2colArgs / Col2imArgs) and then its own arguments, which the device names.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "shape_arg.h"

namespace vsqe {
namespace dcn {

struct Im2colArgs {
  DType input_dtype;
  const void* input;
  DType offset_dtype;
  const void* offset;
  const void* mask;
  void* cols;
  Shape s;
};

struct Col2imArgs {
  DType dtype;
  const void* input;
  const void* offset;
  const void* mask;
  const void* grad_cols;
  void* grad_input;
  void* grad_offset;
  void* grad_mask;
  Shape s;
};

namespace detail {

// Tail: the device's own arguments, read off its kernel lambda's call operator.
template <class Kernel, class... Tail, class... Extra>
void def_im2col(pybind11::module_& m, Kernel kernel, void (Kernel::*)(const Im2colArgs&, Tail...) const,
                const Extra&... extra) {
  namespace py = pybind11;
  m.def(
      "im2col",
      [kernel](int input_dtype, uintptr_t input, int offset_dtype, uintptr_t offset, uintptr_t mask,
               uintptr_t cols, const std::vector<int64_t>& shape, Tail... tail) {
        const Shape s = shape_from(shape);
        const DType di = dtype_from(input_dtype), dof = dtype_from(offset_dtype);
        py::gil_scoped_release nogil;
        kernel(Im2colArgs{di, ptr(input), dof, ptr(offset), ptr(mask), ptr(cols), s}, tail...);
      },
      py::arg("input_dtype"), py::arg("input"), py::arg("offset_dtype"), py::arg("offset"),
      py::arg("mask"), py::arg("cols"), py::arg("shape"), extra...);
}

template <class Kernel, class... Tail, class... Extra>
void def_col2im(pybind11::module_& m, Kernel kernel, void (Kernel::*)(const Col2imArgs&, Tail...) const,
                const Extra&... extra) {
  namespace py = pybind11;
  m.def(
      "col2im",
      [kernel](int dtype, uintptr_t input, uintptr_t offset, uintptr_t mask, uintptr_t grad_cols,
               uintptr_t grad_input, uintptr_t grad_offset, uintptr_t grad_mask,
               const std::vector<int64_t>& shape, Tail... tail) {
        const Shape s = shape_from(shape);
        const DType d = dtype_from(dtype);
        py::gil_scoped_release nogil;
        kernel(Col2imArgs{d, ptr(input), ptr(offset), ptr(mask), ptr(grad_cols), ptr(grad_input),
                          ptr(grad_offset), ptr(grad_mask), s},
               tail...);
      },
      py::arg("dtype"), py::arg("input"), py::arg("offset"), py::arg("mask"), py::arg("grad_cols"),
      py::arg("grad_input"), py::arg("grad_offset"), py::arg("grad_mask"), py::arg("shape"), extra...);
}

}  // namespace detail

// def_im2col(m, [](const Im2colArgs& a, <own arguments>) { ... }, py::arg(<own>)..., "doc")
template <class Kernel, class... Extra>
void def_im2col(pybind11::module_& m, Kernel kernel, const Extra&... extra) {
  detail::def_im2col(m, kernel, &Kernel::operator(), extra...);
}

// def_col2im(m, [](const Col2imArgs& a, <own arguments>) { ... }, py::arg(<own>)..., "doc")
template <class Kernel, class... Extra>
void def_col2im(pybind11::module_& m, Kernel kernel, const Extra&... extra) {
  detail::def_col2im(m, kernel, &Kernel::operator(), extra...);
}

}  // namespace dcn
}  // namespace vsqe
