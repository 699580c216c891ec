// vsqe's modulated deformable convolution (DCNv2) as a TensorRT IPluginV3 plugin.
//
// Name "VsqeDeformConv2d", version "1", namespace "vsqe"; inputs, attributes and types are in
// dcn_plugin_params.h (the TensorRT-free part). The maths is cpp/dcn's: the deformable im2col
// kernel of cpp/dcn/dcn_cuda.cu (linked, not copied) writes one image's columns into the
// workspace, cuBLAS multiplies them by the weight with fp32 accumulation (cublasGemmEx,
// CUBLAS_COMPUTE_32F, also for fp16 I/O), a small kernel adds the bias.
//
// The library exports getCreators() and setLoggerFinder(), so TensorRT loads it with
// IPluginRegistry::loadLibrary / trt.get_plugin_registry().load_library(path) (it does not
// self-register on dlopen: loadLibrary refuses creators that are already registered).
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "dcn_plugin_params.h"

struct cublasContext;

namespace vsqe {
namespace trt_plugin {

class DcnPlugin final : public nvinfer1::IPluginV3,
                        public nvinfer1::IPluginV3OneCore,
                        public nvinfer1::IPluginV3OneBuild,
                        public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit DcnPlugin(const DcnParams& params);
  DcnPlugin(const DcnPlugin&) = delete;
  DcnPlugin& operator=(const DcnPlugin&) = delete;
  ~DcnPlugin() override;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;

  // IPluginV3OneBuild
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  DcnParams params_;
  // getFieldsToSerialize's storage: the values, then the PluginFields pointing into them.
  std::vector<IntField> field_values_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection collection_{};
  int32_t nb_inputs_ = 5;            // 4 without bias; set by configurePlugin / onShapeChange
  cublasContext* cublas_ = nullptr;  // created on the first enqueue of this (per-context) clone
};

class DcnPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  DcnPluginCreator();
  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  std::vector<nvinfer1::PluginField> names_;
  nvinfer1::PluginFieldCollection collection_{};
};

// PluginFieldCollection -> IntFields (kINT32, or kINT64/kINT16/kINT8 narrowed); other types are
// reported and skipped. Throws std::invalid_argument for values out of int32 range.
std::vector<IntField> int_fields(nvinfer1::PluginFieldCollection const* fc);

}  // namespace trt_plugin
}  // namespace vsqe

// Entry points of the plugin library (IPluginRegistry::loadLibrary). TensorRT's TENSORRTAPI is
// empty outside TensorRT's own build, and the library is built with hidden visibility.
#if defined(_WIN32)
#define VSQE_PLUGIN_EXPORT __declspec(dllexport)
#else
#define VSQE_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif
extern "C" VSQE_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" VSQE_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
