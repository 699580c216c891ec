// See dcn_plugin_params.h. No TensorRT, no CUDA.
#include "dcn_plugin_params.h"

#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace vsqe {
namespace trt_plugin {

bool DcnParams::operator==(const DcnParams& o) const {
  return std::memcmp(stride, o.stride, sizeof stride) == 0 && std::memcmp(padding, o.padding, sizeof padding) == 0 &&
         std::memcmp(dilation, o.dilation, sizeof dilation) == 0 && group == o.group &&
         deformable_group == o.deformable_group;
}

namespace {

void set_pair(int32_t (&dst)[2], const IntField& f) {
  if (f.values.size() == 1) {
    dst[0] = dst[1] = f.values[0];
  } else if (f.values.size() == 2) {
    dst[0] = f.values[0];
    dst[1] = f.values[1];
  } else {
    throw std::invalid_argument(std::string(kPluginName) + ": attribute '" + f.name + "' needs 1 or 2 values, got " +
                                std::to_string(f.values.size()));
  }
}

void set_scalar(int32_t& dst, const IntField& f) {
  if (f.values.size() != 1)
    throw std::invalid_argument(std::string(kPluginName) + ": attribute '" + f.name + "' needs 1 value, got " +
                                std::to_string(f.values.size()));
  dst = f.values[0];
}

std::string dims_str(const Dims4& d) {
  std::ostringstream s;
  s << "[" << d.d[0] << ", " << d.d[1] << ", " << d.d[2] << ", " << d.d[3] << "]";
  return s.str();
}

// Both known and different.
bool differ(int64_t a, int64_t b) { return a >= 0 && b >= 0 && a != b; }

}  // namespace

DcnParams parse_params(const std::vector<IntField>& fields) {
  DcnParams p;
  for (const IntField& f : fields) {
    if (f.name == kFieldStride)
      set_pair(p.stride, f);
    else if (f.name == kFieldPadding)
      set_pair(p.padding, f);
    else if (f.name == kFieldDilation)
      set_pair(p.dilation, f);
    else if (f.name == kFieldGroup)
      set_scalar(p.group, f);
    else if (f.name == kFieldDeformableGroup)
      set_scalar(p.deformable_group, f);
  }
  validate(p);
  return p;
}

std::vector<IntField> to_fields(const DcnParams& p) {
  return {
      {kFieldStride, {p.stride[0], p.stride[1]}},
      {kFieldPadding, {p.padding[0], p.padding[1]}},
      {kFieldDilation, {p.dilation[0], p.dilation[1]}},
      {kFieldGroup, {p.group}},
      {kFieldDeformableGroup, {p.deformable_group}},
  };
}

void validate(const DcnParams& p) {
  const std::string n = kPluginName;
  for (int i = 0; i < 2; ++i) {
    if (p.stride[i] < 1) throw std::invalid_argument(n + ": stride must be >= 1");
    if (p.dilation[i] < 1) throw std::invalid_argument(n + ": dilation must be >= 1");
    if (p.padding[i] < 0) throw std::invalid_argument(n + ": padding must be >= 0");
  }
  if (p.group < 1) throw std::invalid_argument(n + ": group must be >= 1");
  if (p.deformable_group < 1) throw std::invalid_argument(n + ": deformable_group must be >= 1");
}

int64_t conv_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  const int64_t num = in + 2 * pad - (dilation * (kernel - 1) + 1);
  if (num < 0) return 0;
  return num / stride + 1;
}

std::string check_shapes(const DcnParams& p, const Dims4& x, const Dims4& offset, const Dims4& mask,
                         const Dims4& weight, const int64_t* bias_len) {
  const int64_t n = x.d[0], c = x.d[1], h = x.d[2], w = x.d[3];
  const int64_t cout = weight.d[0], cin_g = weight.d[1], kh = weight.d[2], kw = weight.d[3];
  std::ostringstream err;
  if (kh < 1 || kw < 1) return "weight " + dims_str(weight) + " must have a known kernel size";
  if (c >= 0 && (c % p.group != 0 || (cin_g >= 0 && cin_g * p.group != c)))
    err << "weight " << dims_str(weight) << " does not fit " << c << " input channels in " << p.group << " groups";
  else if (cout >= 0 && cout % p.group != 0)
    err << cout << " output channels do not split into " << p.group << " groups";
  else if (c >= 0 && c % p.deformable_group != 0)
    err << c << " input channels do not split into " << p.deformable_group << " deformable groups";
  if (!err.str().empty()) return err.str();
  const int64_t k = kh * kw, g = p.deformable_group;
  const int64_t ho = h >= 0 ? conv_out_size(h, kh, p.stride[0], p.padding[0], p.dilation[0]) : -1;
  const int64_t wo = w >= 0 ? conv_out_size(w, kw, p.stride[1], p.padding[1], p.dilation[1]) : -1;
  if ((h >= 0 && ho < 1) || (w >= 0 && wo < 1)) return "the output of input " + dims_str(x) + " would be empty";
  const Dims4 want_offset{{n, 2 * g * k, ho, wo}};
  const Dims4 want_mask{{n, g * k, ho, wo}};
  for (int i = 0; i < 4; ++i) {
    if (differ(offset.d[i], want_offset.d[i])) return "offset must be " + dims_str(want_offset) + ", got " + dims_str(offset);
    if (differ(mask.d[i], want_mask.d[i])) return "mask must be " + dims_str(want_mask) + ", got " + dims_str(mask);
  }
  if (bias_len && differ(*bias_len, cout)) {
    err << "bias must have " << cout << " values, got " << *bias_len;
    return err.str();
  }
  return "";
}

dcn::Shape make_shape(const DcnParams& p, const Dims4& x, const Dims4& weight) {
  for (int i = 0; i < 4; ++i)
    if (x.d[i] < 0 || weight.d[i] < 0) throw std::invalid_argument("make_shape: unknown extents");
  const int64_t lim = std::numeric_limits<int32_t>::max();
  if (x.d[2] * x.d[3] > lim) throw std::invalid_argument("input plane too large");
  dcn::Shape s;
  s.N = int(x.d[0]);
  s.C = int(x.d[1]);
  s.H = int(x.d[2]);
  s.W = int(x.d[3]);
  s.G = p.deformable_group;
  s.kh = int(weight.d[2]);
  s.kw = int(weight.d[3]);
  s.sh = p.stride[0];
  s.sw = p.stride[1];
  s.ph = p.padding[0];
  s.pw = p.padding[1];
  s.dh = p.dilation[0];
  s.dw = p.dilation[1];
  s.Ho = int(conv_out_size(s.H, s.kh, s.sh, s.ph, s.dh));
  s.Wo = int(conv_out_size(s.W, s.kw, s.sw, s.pw, s.dw));
  if (s.Ho < 1 || s.Wo < 1) throw std::invalid_argument("empty output");
  return s;
}

size_t workspace_bytes(const dcn::Shape& s, size_t elem_bytes) {
  const size_t rows = size_t(s.C) * size_t(s.kh) * size_t(s.kw);
  const size_t bytes = rows * size_t(s.Ho) * size_t(s.Wo) * elem_bytes;
  return (bytes + 255) / 256 * 256;
}

bool supported_types(Storage x, Storage offset) {
  return x == Storage::f32 ? offset == Storage::f32 : true;
}

}  // namespace trt_plugin
}  // namespace vsqe
