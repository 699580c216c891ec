// The TensorRT-free half of the vsqe DCN plugin: names, attributes (parsing, validation,
// serialisation as plain int fields), shape inference and workspace size. The TensorRT classes in
// dcn_plugin.h are thin adapters over this; tests/plugins builds and runs a plain C++ test of it.
//
// Inputs (all NCHW, dense):
//   0 x      [N, C, H, W]              f32 or f16
//   1 offset [N, 2*G*kh*kw, Ho, Wo]    f32, or x's type     (channel g*2*K + 2*k + {0: dy, 1: dx})
//   2 mask   [N, G*kh*kw, Ho, Wo]      offset's type        (already through a sigmoid)
//   3 weight [Cout, C/group, kh, kw]   x's type
//   4 bias   [Cout] (optional)         x's type
// Output [N, Cout, Ho, Wo] of x's type; Ho = (H + 2*ph - dh*(kh-1) - 1) / sh + 1 (floor), same for W.
// Accumulation is fp32 for every type (the sampling in cpp/dcn, the GEMM in cuBLAS with 32F compute).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dcn_types.h"  // cpp/dcn: the problem description the CUDA kernels take

namespace vsqe {
namespace trt_plugin {

// Must agree with vsqe/export/onnx.py (tests/export checks these lines).
constexpr char const* kPluginName = "VsqeDeformConv2d";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "vsqe";

constexpr char const* kFieldStride = "stride";
constexpr char const* kFieldPadding = "padding";
constexpr char const* kFieldDilation = "dilation";
constexpr char const* kFieldGroup = "group";
constexpr char const* kFieldDeformableGroup = "deformable_group";

constexpr int kNbFields = 5;
constexpr int kInputX = 0, kInputOffset = 1, kInputMask = 2, kInputWeight = 3, kInputBias = 4;

struct DcnParams {
  int32_t stride[2] = {1, 1};
  int32_t padding[2] = {0, 0};
  int32_t dilation[2] = {1, 1};
  int32_t group = 1;
  int32_t deformable_group = 1;

  bool operator==(const DcnParams& o) const;
};

// One attribute as TensorRT hands it over, without TensorRT types: a name and int32 values.
struct IntField {
  std::string name;
  std::vector<int32_t> values;
};

// Fields -> params. Unknown names are ignored (ONNX nodes may carry more attributes); missing
// ones keep their defaults. Pairs take one value (both axes) or two (h, w). Throws
// std::invalid_argument with a one-line message for bad counts or values.
DcnParams parse_params(const std::vector<IntField>& fields);

// Params -> fields (what getFieldsToSerialize returns; parse_params(to_fields(p)) == p).
std::vector<IntField> to_fields(const DcnParams& p);

// Throws std::invalid_argument unless stride, dilation >= 1, padding >= 0, groups >= 1.
void validate(const DcnParams& p);

// The conv output size, or a value < 1 when the window does not fit.
int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation);

// The same formula written against an expression builder, so the TensorRT plugin builds its
// IExprBuilder expressions with exactly this code (and the unit test runs it on plain integers).
// Ops must provide: E constant(int64_t); E sum(E, E); E sub(E, E); E prod(E, E); E floordiv(E, E).
template <class Ops, class E>
E conv_out_size_expr(Ops& ops, E in, E kernel, int32_t stride, int32_t pad, int32_t dilation) {
  E one = ops.constant(1);
  E reach = ops.sum(ops.prod(ops.constant(dilation), ops.sub(kernel, one)), one);  // d*(k-1)+1
  E num = ops.sub(ops.sum(in, ops.constant(2 * int64_t(pad))), reach);
  return ops.sum(ops.floordiv(num, ops.constant(stride)), one);
}

// Tensor extents; -1 marks an unknown (dynamic) extent, which the checks skip.
struct Dims4 {
  int64_t d[4];
};

// Checks the inputs against each other and the params; returns "" or a one-line reason.
// `bias_len` is nullptr when there is no bias input.
std::string check_shapes(const DcnParams& p, const Dims4& x, const Dims4& offset, const Dims4& mask,
                         const Dims4& weight, const int64_t* bias_len);

// The kernels' problem description for known shapes (throws std::invalid_argument if invalid).
dcn::Shape make_shape(const DcnParams& p, const Dims4& x, const Dims4& weight);

// Workspace: the im2col buffer of one image, C*kh*kw x Ho*Wo elements of `elem_bytes`, rounded
// up to 256 bytes (the plugin loops over the batch, one image per im2col + GEMM).
size_t workspace_bytes(const dcn::Shape& s, size_t elem_bytes);

// Which (x, offset) storage types the plugin runs: (f32, f32), (f16, f16), (f16, f32).
enum class Storage : int { f32 = 0, f16 = 1 };
bool supported_types(Storage x, Storage offset);

}  // namespace trt_plugin
}  // namespace vsqe
