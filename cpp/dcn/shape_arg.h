// Shared by the pybind11 modules: the Shape travels from Python as a tuple of 15 ints, in the
// order of the struct: (N, C, H, W, G, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo).
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "dcn_types.h"

namespace vsqe {
namespace dcn {

inline Shape shape_from(const std::vector<int64_t>& v) {
  if (v.size() != 15) throw std::invalid_argument("dcn: shape must have 15 entries");
  for (int64_t x : v)
    if (x < 0 || x > INT32_MAX) throw std::invalid_argument("dcn: shape entry out of range");
  Shape s;
  int* f[] = {&s.N, &s.C, &s.H, &s.W, &s.G, &s.kh, &s.kw, &s.sh,
              &s.sw, &s.ph, &s.pw, &s.dh, &s.dw, &s.Ho, &s.Wo};
  for (int i = 0; i < 15; ++i) *f[i] = int(v[i]);
  // Plane sizes are indexed with 32-bit ints inside the kernels.
  if (int64_t(s.H) * s.W > INT32_MAX) throw std::invalid_argument("dcn: input plane too large");
  return s;
}

inline DType dtype_from(int code) {
  if (code < 0 || code > 3) throw std::invalid_argument("dcn: unknown dtype code");
  return DType(code);
}

// Buffers arrive as integer addresses (torch's tensor.data_ptr()).
template <class T = void>
inline T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace dcn
}  // namespace vsqe
