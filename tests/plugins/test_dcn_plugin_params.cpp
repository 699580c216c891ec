// Plain C++ test of the TensorRT-free part of the DCN plugin (plugins/dcn_plugin_params.*).
// Built and run by tests/plugins/test_plugin_cpp.py (g++), or by CMake with -DVSQE_PLUGIN_TESTS=ON
// (ctest). Prints one line per failure and "ok: N checks" at the end; exit status 1 on failure.
#include <cstdio>
#include <stdexcept>
#include <string>

#include "dcn_plugin_params.h"

using namespace vsqe::trt_plugin;

static int g_checks = 0, g_failures = 0;

#define CHECK(cond)                                                        \
  do {                                                                     \
    ++g_checks;                                                            \
    if (!(cond)) {                                                         \
      ++g_failures;                                                        \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);          \
    }                                                                      \
  } while (0)

template <class F>
static bool throws(F f, const char* needle) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return std::string(e.what()).find(needle) != std::string::npos;
  }
  return false;
}

// The integer "expression builder" for conv_out_size_expr.
struct IntOps {
  int64_t constant(int64_t v) { return v; }
  int64_t sum(int64_t a, int64_t b) { return a + b; }
  int64_t sub(int64_t a, int64_t b) { return a - b; }
  int64_t prod(int64_t a, int64_t b) { return a * b; }
  int64_t floordiv(int64_t a, int64_t b) {  // TensorRT's kFLOOR_DIV rounds towards -inf
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
  }
};

static void test_names() {
  CHECK(std::string(kPluginName) == "VsqeDeformConv2d");
  CHECK(std::string(kPluginVersion) == "1");
  CHECK(std::string(kPluginNamespace) == "vsqe");
}

static void test_parse() {
  DcnParams d = parse_params({});
  CHECK(d.stride[0] == 1 && d.stride[1] == 1 && d.padding[0] == 0 && d.dilation[1] == 1);
  CHECK(d.group == 1 && d.deformable_group == 1);

  // What TensorRT's ONNX parser hands over for the STDF node (plus an attribute we ignore).
  DcnParams p = parse_params({{"stride", {1, 2}}, {"padding", {1, 1}}, {"dilation", {1, 1}}, {"group", {1}},
                              {"deformable_group", {7}}, {"plugin_version", {1}}});
  CHECK(p.stride[0] == 1 && p.stride[1] == 2 && p.padding[0] == 1 && p.deformable_group == 7);
  DcnParams one = parse_params({{"padding", {2}}, {"dilation", {3}}});
  CHECK(one.padding[0] == 2 && one.padding[1] == 2 && one.dilation[0] == 3 && one.dilation[1] == 3);

  // Serialisation round trip.
  CHECK(parse_params(to_fields(p)) == p);
  CHECK(int(to_fields(p).size()) == kNbFields);

  CHECK(throws([] { parse_params({{"stride", {0, 1}}}); }, "stride must be >= 1"));
  CHECK(throws([] { parse_params({{"padding", {-1}}}); }, "padding must be >= 0"));
  CHECK(throws([] { parse_params({{"dilation", {1, 0}}}); }, "dilation must be >= 1"));
  CHECK(throws([] { parse_params({{"group", {0}}}); }, "group must be >= 1"));
  CHECK(throws([] { parse_params({{"deformable_group", {1, 2}}}); }, "needs 1 value"));
  CHECK(throws([] { parse_params({{"stride", {1, 1, 1}}}); }, "needs 1 or 2 values"));
}

static void test_out_size() {
  CHECK(conv_out_size(48, 3, 1, 1, 1) == 48);
  CHECK(conv_out_size(48, 3, 2, 1, 1) == 24);
  CHECK(conv_out_size(49, 3, 2, 1, 1) == 25);
  CHECK(conv_out_size(10, 3, 1, 0, 2) == 6);
  CHECK(conv_out_size(2, 5, 1, 0, 1) == 0);
  // The expression the plugin gives IExprBuilder equals the formula, every case.
  IntOps ops;
  int n = 0, bad = 0;
  for (int in = 1; in <= 40; ++in)
    for (int k = 1; k <= 5; ++k)
      for (int s = 1; s <= 3; ++s)
        for (int p = 0; p <= 2; ++p)
          for (int d = 1; d <= 3; ++d) {
            const int64_t want = conv_out_size(in, k, s, p, d);
            if (want < 1) continue;
            ++n;
            if (conv_out_size_expr(ops, int64_t(in), int64_t(k), s, p, d) != want) ++bad;
          }
  CHECK(n > 1000 && bad == 0);
}

static void test_shapes() {
  DcnParams p = parse_params({{"padding", {1, 1}}, {"deformable_group", {7}}});
  const Dims4 x{{1, 7, 48, 64}}, w{{64, 7, 3, 3}};
  const Dims4 off{{1, 2 * 7 * 9, 48, 64}}, msk{{1, 7 * 9, 48, 64}};
  const int64_t bias = 64, bad_bias = 63;
  CHECK(check_shapes(p, x, off, msk, w, &bias).empty());
  CHECK(check_shapes(p, x, off, msk, w, nullptr).empty());
  CHECK(check_shapes(p, x, off, msk, w, &bad_bias).find("bias must have 64") == 0);
  const Dims4 off_bad{{1, 2 * 7 * 9, 47, 64}};
  CHECK(check_shapes(p, x, off_bad, msk, w, &bias).find("offset must be [1, 126, 48, 64]") == 0);
  const Dims4 msk_bad{{1, 62, 48, 64}};
  CHECK(check_shapes(p, x, off, msk_bad, w, &bias).find("mask must be") == 0);
  const Dims4 w_bad{{64, 6, 3, 3}};
  CHECK(check_shapes(p, x, off, msk, w_bad, &bias).find("does not fit 7 input channels") != std::string::npos);
  DcnParams g2 = p;
  g2.deformable_group = 2;
  CHECK(check_shapes(g2, x, off, msk, w, &bias).find("deformable groups") != std::string::npos);
  // Dynamic extents (-1) are skipped.
  const Dims4 xd{{-1, 7, -1, -1}}, offd{{-1, 126, -1, -1}}, mskd{{-1, 63, -1, -1}};
  CHECK(check_shapes(p, xd, offd, mskd, w, &bias).empty());
  // Grouped convolution: BasicVSR++ has 16 deformable groups, 128 input channels, 1 conv group.
  DcnParams b = parse_params({{"padding", {1}}, {"deformable_group", {16}}});
  const Dims4 bx{{2, 128, 64, 96}}, bw{{64, 128, 3, 3}}, boff{{2, 288, 64, 96}}, bmsk{{2, 144, 64, 96}};
  CHECK(check_shapes(b, bx, boff, bmsk, bw, nullptr).empty());
}

static void test_workspace() {
  DcnParams p = parse_params({{"padding", {1}}, {"deformable_group", {7}}});
  vsqe::dcn::Shape s = make_shape(p, Dims4{{3, 7, 48, 64}}, Dims4{{64, 7, 3, 3}});
  CHECK(s.N == 3 && s.C == 7 && s.G == 7 && s.kh == 3 && s.Ho == 48 && s.Wo == 64 && s.ph == 1);
  // One image's columns: C*K x Ho*Wo.
  CHECK(workspace_bytes(s, 4) == size_t(7 * 9) * 48 * 64 * 4);
  CHECK(workspace_bytes(s, 2) == size_t(7 * 9) * 48 * 64 * 2);
  vsqe::dcn::Shape odd = make_shape(p, Dims4{{1, 7, 5, 3}}, Dims4{{64, 7, 3, 3}});
  CHECK(workspace_bytes(odd, 2) % 256 == 0 && workspace_bytes(odd, 2) >= size_t(63 * 15 * 2));
  CHECK(throws([&] { make_shape(p, Dims4{{1, 7, -1, 64}}, Dims4{{64, 7, 3, 3}}); }, "unknown"));
}

static void test_types() {
  CHECK(supported_types(Storage::f32, Storage::f32));
  CHECK(!supported_types(Storage::f32, Storage::f16));
  CHECK(supported_types(Storage::f16, Storage::f16));
  CHECK(supported_types(Storage::f16, Storage::f32));
}

int main() {
  test_names();
  test_parse();
  test_out_size();
  test_shapes();
  test_workspace();
  test_types();
  if (g_failures) {
    std::printf("FAILED: %d of %d checks\n", g_failures, g_checks);
    return 1;
  }
  std::printf("ok: %d checks\n", g_checks);
  return 0;
}
