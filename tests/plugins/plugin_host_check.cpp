// Host-side check of the TensorRT DCN plugin classes, compiled against TensorRT's public headers
// but run WITHOUT TensorRT and without a GPU: it calls the plugin through TensorRT's interface
// types the way TensorRT would (creator lookup, field parsing, serialisation round trip, format
// negotiation, output types, workspace size), never enqueue (no CUDA, no cuBLAS call happens; the
// test links with unresolved symbols ignored). Built and run by tests/plugins/test_plugin_cpp.py.
#include <NvInferRuntime.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "dcn_plugin.h"

using namespace nvinfer1;

static int g_checks = 0, g_failures = 0;
#define CHECK(cond)                                                                                   \
  do {                                                                                                \
    ++g_checks;                                                                                       \
    if (!(cond)) {                                                                                    \
      ++g_failures;                                                                                   \
      std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                     \
    }                                                                                                 \
  } while (0)

static DynamicPluginTensorDesc desc(DataType t, std::vector<int64_t> dims, std::vector<int64_t> max = {}) {
  DynamicPluginTensorDesc d{};
  d.desc.type = t;
  d.desc.format = TensorFormat::kLINEAR;
  d.desc.dims.nbDims = int32_t(dims.size());
  d.min.nbDims = d.opt.nbDims = d.max.nbDims = int32_t(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    d.desc.dims.d[i] = dims[i];
    d.min.d[i] = d.opt.d[i] = dims[i];
    d.max.d[i] = max.empty() ? dims[i] : max[i];
  }
  return d;
}

int main() {
  int32_t n = 0;
  IPluginCreatorInterface* const* creators = getCreators(n);
  CHECK(n == 1 && creators && creators[0]);
  CHECK(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
  auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
  CHECK(std::strcmp(creator->getPluginName(), "VsqeDeformConv2d") == 0);
  CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
  CHECK(std::strcmp(creator->getPluginNamespace(), "vsqe") == 0);
  const PluginFieldCollection* names = creator->getFieldNames();
  CHECK(names && names->nbFields == 5);

  // The fields TensorRT's ONNX parser builds from an STDF plugin node (INTS/INT -> kINT32).
  const int32_t stride[2] = {1, 1}, padding[2] = {1, 1}, dilation[2] = {1, 1}, group = 1, dg = 7;
  std::vector<PluginField> f = {
      {"stride", stride, PluginFieldType::kINT32, 2},      {"padding", padding, PluginFieldType::kINT32, 2},
      {"dilation", dilation, PluginFieldType::kINT32, 2},  {"group", &group, PluginFieldType::kINT32, 1},
      {"deformable_group", &dg, PluginFieldType::kINT32, 1}};
  PluginFieldCollection fc{int32_t(f.size()), f.data()};
  std::unique_ptr<IPluginV3> plugin(creator->createPlugin("dcn", &fc, TensorRTPhase::kBUILD));
  CHECK(plugin != nullptr);
  if (!plugin) return 1;
  CHECK(std::strcmp(plugin->getInterfaceInfo().kind, "PLUGIN") == 0);
  auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  CHECK(core && build && runtime);
  CHECK(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0);
  CHECK(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
  CHECK(std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
  CHECK(std::strcmp(core->getPluginName(), "VsqeDeformConv2d") == 0);
  CHECK(build->getNbOutputs() == 1);

  // Serialisation: what getFieldsToSerialize writes, createPlugin (runtime phase) reads back.
  const PluginFieldCollection* ser = runtime->getFieldsToSerialize();
  CHECK(ser && ser->nbFields == 5);
  std::unique_ptr<IPluginV3> again(creator->createPlugin("dcn", ser, TensorRTPhase::kRUNTIME));
  CHECK(again != nullptr);
  auto* rt2 = static_cast<IPluginV3OneRuntime*>(again->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  const PluginFieldCollection* ser2 = rt2->getFieldsToSerialize();
  bool same = ser2->nbFields == ser->nbFields;
  for (int i = 0; same && i < ser->nbFields; ++i)
    same = std::strcmp(ser->fields[i].name, ser2->fields[i].name) == 0 && ser->fields[i].length == ser2->fields[i].length &&
           std::memcmp(ser->fields[i].data, ser2->fields[i].data, sizeof(int32_t) * ser->fields[i].length) == 0;
  CHECK(same);
  std::unique_ptr<IPluginV3> cl(plugin->clone());
  CHECK(cl != nullptr);

  // Bad attributes are refused (nullptr, message through the logger).
  const int32_t zero[2] = {0, 1};
  PluginField bad{"stride", zero, PluginFieldType::kINT32, 2};
  PluginFieldCollection badc{1, &bad};
  CHECK(creator->createPlugin("bad", &badc, TensorRTPhase::kBUILD) == nullptr);

  // Output type follows x.
  DataType in_types[5] = {DataType::kHALF, DataType::kFLOAT, DataType::kFLOAT, DataType::kHALF, DataType::kHALF};
  DataType out_type = DataType::kFLOAT;
  CHECK(build->getOutputDataTypes(&out_type, 1, in_types, 5) == 0 && out_type == DataType::kHALF);

  // Format negotiation: fp32 all, fp16 all, fp16 x with fp32 offset/mask; nothing else.
  auto combo = [&](DataType x, DataType off, DataType msk, DataType w, DataType b, DataType out) {
    std::vector<DynamicPluginTensorDesc> io = {desc(x, {1, 7, 48, 64}),   desc(off, {1, 126, 48, 64}),
                                               desc(msk, {1, 63, 48, 64}), desc(w, {64, 7, 3, 3}),
                                               desc(b, {64}),              desc(out, {1, 64, 48, 64})};
    for (int pos = 0; pos < 6; ++pos)
      if (!build->supportsFormatCombination(pos, io.data(), 5, 1)) return false;
    return true;
  };
  const DataType F = DataType::kFLOAT, H = DataType::kHALF;
  CHECK(combo(F, F, F, F, F, F));
  CHECK(combo(H, H, H, H, H, H));
  CHECK(combo(H, F, F, H, H, H));
  CHECK(!combo(F, H, H, F, F, F));
  CHECK(!combo(H, F, H, H, H, H));
  CHECK(!combo(F, F, F, H, F, F));
  CHECK(!combo(DataType::kINT32, F, F, F, F, F));

  // configurePlugin checks shapes; the workspace is one image's columns at the profile's max.
  std::vector<DynamicPluginTensorDesc> in = {
      desc(F, {1, 7, -1, -1}, {1, 7, 96, 128}), desc(F, {1, 126, -1, -1}, {1, 126, 96, 128}),
      desc(F, {1, 63, -1, -1}, {1, 63, 96, 128}), desc(F, {64, 7, 3, 3}), desc(F, {64})};
  std::vector<DynamicPluginTensorDesc> out = {desc(F, {1, 64, -1, -1})};
  CHECK(build->configurePlugin(in.data(), 5, out.data(), 1) == 0);
  CHECK(build->getWorkspaceSize(in.data(), 5, out.data(), 1) == size_t(63) * 96 * 128 * 4);
  in[0].desc.type = H;
  CHECK(build->getWorkspaceSize(in.data(), 5, out.data(), 1) == size_t(63) * 96 * 128 * 2);
  in[2] = desc(F, {1, 62, -1, -1});
  CHECK(build->configurePlugin(in.data(), 5, out.data(), 1) != 0);

  // Runtime shape check (no bias: 4 inputs).
  PluginTensorDesc rin[4], rout[1];
  const int64_t shapes[4][4] = {{2, 7, 40, 56}, {2, 126, 40, 56}, {2, 63, 40, 56}, {64, 7, 3, 3}};
  for (int i = 0; i < 4; ++i) {
    rin[i].type = F;
    rin[i].format = TensorFormat::kLINEAR;
    rin[i].dims.nbDims = 4;
    for (int j = 0; j < 4; ++j) rin[i].dims.d[j] = shapes[i][j];
  }
  rout[0] = rin[0];
  CHECK(runtime->onShapeChange(rin, 4, rout, 1) == 0);
  rin[1].dims.d[2] = 39;
  CHECK(runtime->onShapeChange(rin, 4, rout, 1) != 0);

  if (g_failures) {
    std::printf("FAILED: %d of %d checks\n", g_failures, g_checks);
    return 1;
  }
  std::printf("ok: %d checks\n", g_checks);
  return 0;
}
