// See dcn_plugin.h.
#include "dcn_plugin.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>

#include "dcn_cuda.h"          // cpp/dcn: the deformable im2col kernel
#include "dcn_plugin_bias.h"   // plugins: bias add

using namespace nvinfer1;

namespace vsqe {
namespace trt_plugin {
namespace {

std::atomic<ILoggerFinder*> g_logger_finder{nullptr};

void log(ILogger::Severity severity, const std::string& message) noexcept {
  try {
    ILoggerFinder* finder = g_logger_finder.load();
    ILogger* logger = finder ? finder->findLogger() : nullptr;
    if (logger) logger->log(severity, (std::string(kPluginName) + ": " + message).c_str());
  } catch (...) {
  }
}

void log_error(const std::string& message) noexcept { log(ILogger::Severity::kERROR, message); }

Dims4 dims4(const Dims& d) {
  if (d.nbDims != 4) throw std::invalid_argument("tensors must be 4-D (NCHW), got rank " + std::to_string(d.nbDims));
  return Dims4{{d.d[0], d.d[1], d.d[2], d.d[3]}};
}

dcn::DType dtype_of(DataType t) {
  if (t == DataType::kFLOAT) return dcn::DType::f32;
  if (t == DataType::kHALF) return dcn::DType::f16;
  throw std::invalid_argument("unsupported data type");
}

cudaDataType_t cuda_type_of(DataType t) { return t == DataType::kHALF ? CUDA_R_16F : CUDA_R_32F; }

size_t elem_size(DataType t) { return t == DataType::kHALF ? 2 : 4; }

// IExprBuilder as the ops of conv_out_size_expr (dcn_plugin_params.h).
struct ExprOps {
  IExprBuilder& b;
  IDimensionExpr const* constant(int64_t v) { return b.constant(v); }
  IDimensionExpr const* sum(IDimensionExpr const* x, IDimensionExpr const* y) {
    return b.operation(DimensionOperation::kSUM, *x, *y);
  }
  IDimensionExpr const* sub(IDimensionExpr const* x, IDimensionExpr const* y) {
    return b.operation(DimensionOperation::kSUB, *x, *y);
  }
  IDimensionExpr const* prod(IDimensionExpr const* x, IDimensionExpr const* y) {
    return b.operation(DimensionOperation::kPROD, *x, *y);
  }
  IDimensionExpr const* floordiv(IDimensionExpr const* x, IDimensionExpr const* y) {
    return b.operation(DimensionOperation::kFLOOR_DIV, *x, *y);
  }
};

}  // namespace

// ---- fields -----------------------------------------------------------------------------------

std::vector<IntField> int_fields(PluginFieldCollection const* fc) {
  std::vector<IntField> out;
  if (!fc) return out;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    const PluginField& f = fc->fields[i];
    if (!f.name) continue;
    IntField field{f.name, {}};
    for (int32_t j = 0; j < f.length; ++j) {
      int64_t v;
      switch (f.type) {
        case PluginFieldType::kINT32: v = static_cast<int32_t const*>(f.data)[j]; break;
        case PluginFieldType::kINT64: v = static_cast<int64_t const*>(f.data)[j]; break;
        case PluginFieldType::kINT16: v = static_cast<int16_t const*>(f.data)[j]; break;
        case PluginFieldType::kINT8: v = static_cast<int8_t const*>(f.data)[j]; break;
        default:
          log(ILogger::Severity::kWARNING, std::string("ignoring non-integer field '") + f.name + "'");
          j = f.length;
          continue;
      }
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        throw std::invalid_argument(std::string("field '") + f.name + "' is out of int32 range");
      field.values.push_back(int32_t(v));
    }
    if (!field.values.empty()) out.push_back(std::move(field));
  }
  return out;
}

// ---- plugin -----------------------------------------------------------------------------------

DcnPlugin::DcnPlugin(const DcnParams& params) : params_(params) { validate(params_); }

DcnPlugin::~DcnPlugin() {
  if (cublas_) cublasDestroy(cublas_);
}

IPluginCapability* DcnPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
  }
  return nullptr;
}

IPluginV3* DcnPlugin::clone() noexcept {
  try {
    auto* copy = new DcnPlugin(params_);
    copy->nb_inputs_ = nb_inputs_;
    return copy;
  } catch (const std::exception& e) {
    log_error(std::string("clone: ") + e.what());
    return nullptr;
  }
}

char const* DcnPlugin::getPluginName() const noexcept { return kPluginName; }
char const* DcnPlugin::getPluginVersion() const noexcept { return kPluginVersion; }
char const* DcnPlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

int32_t DcnPlugin::getNbOutputs() const noexcept { return 1; }

int32_t DcnPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                      int32_t nbInputs) const noexcept {
  if (nbOutputs != 1 || nbInputs < 4 || nbInputs > 5) return -1;
  outputTypes[0] = inputTypes[kInputX];
  return 0;
}

int32_t DcnPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                                   int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                                   IExprBuilder& exprBuilder) noexcept {
  try {
    if (nbOutputs != 1 || nbInputs < 4 || nbInputs > 5) {
      log_error("expects 4 or 5 inputs (x, offset, mask, weight[, bias]) and 1 output");
      return -1;
    }
    const DimsExprs& x = inputs[kInputX];
    const DimsExprs& w = inputs[kInputWeight];
    if (x.nbDims != 4 || w.nbDims != 4) {
      log_error("x and weight must be 4-D");
      return -1;
    }
    ExprOps ops{exprBuilder};
    outputs[0].nbDims = 4;
    outputs[0].d[0] = x.d[0];
    outputs[0].d[1] = w.d[0];
    outputs[0].d[2] = conv_out_size_expr(ops, x.d[2], w.d[2], params_.stride[0], params_.padding[0], params_.dilation[0]);
    outputs[0].d[3] = conv_out_size_expr(ops, x.d[3], w.d[3], params_.stride[1], params_.padding[1], params_.dilation[1]);
    return 0;
  } catch (const std::exception& e) {
    log_error(std::string("getOutputShapes: ") + e.what());
    return -1;
  }
}

bool DcnPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                          int32_t nbOutputs) noexcept {
  if (nbInputs < 4 || nbInputs > 5 || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs) return false;
  const PluginTensorDesc& d = inOut[pos].desc;
  if (d.format != TensorFormat::kLINEAR) return false;
  const DataType x = inOut[kInputX].desc.type;
  auto storage = [](DataType t) { return t == DataType::kHALF ? Storage::f16 : Storage::f32; };
  auto floating = [](DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF; };
  if (pos == kInputX) return floating(d.type);
  if (pos == kInputOffset) return floating(d.type) && supported_types(storage(x), storage(d.type));
  if (pos == kInputMask) return d.type == inOut[kInputOffset].desc.type;
  return d.type == x;  // weight, bias, output
}

int32_t DcnPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                   DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  try {
    if (nbInputs < 4 || nbInputs > 5 || nbOutputs != 1) return -1;
    nb_inputs_ = nbInputs;
    int64_t bias_len = -1;
    if (nbInputs == 5) {
      if (in[kInputBias].desc.dims.nbDims != 1) {
        log_error("bias must be 1-D");
        return -1;
      }
      bias_len = in[kInputBias].desc.dims.d[0];
    }
    const std::string err = check_shapes(params_, dims4(in[kInputX].desc.dims), dims4(in[kInputOffset].desc.dims),
                                         dims4(in[kInputMask].desc.dims), dims4(in[kInputWeight].desc.dims),
                                         nbInputs == 5 ? &bias_len : nullptr);
    if (!err.empty()) {
      log_error(err);
      return -1;
    }
    return 0;
  } catch (const std::exception& e) {
    log_error(std::string("configurePlugin: ") + e.what());
    return -1;
  }
}

size_t DcnPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                   DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept {
  try {
    if (nbInputs < 4) return 0;
    // The largest shape of the profile; one image at a time.
    const dcn::Shape s = make_shape(params_, dims4(inputs[kInputX].max), dims4(inputs[kInputWeight].max));
    return workspace_bytes(s, elem_size(inputs[kInputX].desc.type));
  } catch (const std::exception& e) {
    log_error(std::string("getWorkspaceSize: ") + e.what());
    return 0;
  }
}

int32_t DcnPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                                 int32_t nbOutputs) noexcept {
  try {
    if (nbInputs < 4 || nbInputs > 5 || nbOutputs != 1) return -1;
    nb_inputs_ = nbInputs;
    int64_t bias_len = nbInputs == 5 ? in[kInputBias].dims.d[0] : -1;
    const std::string err = check_shapes(params_, dims4(in[kInputX].dims), dims4(in[kInputOffset].dims),
                                         dims4(in[kInputMask].dims), dims4(in[kInputWeight].dims),
                                         nbInputs == 5 ? &bias_len : nullptr);
    if (!err.empty()) {
      log_error(err);
      return -1;
    }
    return 0;
  } catch (const std::exception& e) {
    log_error(std::string("onShapeChange: ") + e.what());
    return -1;
  }
}

int32_t DcnPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                           void const* const* inputs, void* const* outputs, void* workspace,
                           cudaStream_t stream) noexcept {
  try {
    const Dims4 xd = dims4(inputDesc[kInputX].dims);
    const Dims4 wd = dims4(inputDesc[kInputWeight].dims);
    const dcn::Shape s = make_shape(params_, xd, wd);
    const DataType xt = inputDesc[kInputX].type;
    const dcn::DType x_dtype = dtype_of(xt);
    const dcn::DType o_dtype = dtype_of(inputDesc[kInputOffset].type);
    const cudaDataType_t ct = cuda_type_of(xt);
    const size_t es = elem_size(xt);
    const bool has_bias = nb_inputs_ == 5;

    if (!cublas_) {
      cublasHandle_t h = nullptr;
      if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        log_error("cublasCreate failed");
        return -1;
      }
      cublas_ = h;
    }
    if (cublasSetStream(cublas_, stream) != CUBLAS_STATUS_SUCCESS) return -1;

    const int cout = int(wd.d[0]);
    const int groups = params_.group;
    const int cout_g = cout / groups;
    const int64_t ck = int64_t(s.C) * s.K();
    const int ck_g = int(ck / groups);
    const int64_t l = int64_t(s.Ho) * s.Wo;
    if (l > std::numeric_limits<int>::max()) {
      log_error("output plane too large");
      return -1;
    }
    const float alpha = 1.0f, beta = 0.0f;
    char* cols = static_cast<char*>(workspace);
    char const* weight = static_cast<char const*>(inputs[kInputWeight]);
    char* out = static_cast<char*>(outputs[0]);

    for (int n = 0; n < s.N; ++n) {
      cudaError_t err = dcn::cuda::im2col(x_dtype, inputs[kInputX], o_dtype, inputs[kInputOffset],
                                          inputs[kInputMask], cols, s, n, 1, stream);
      if (err != cudaSuccess) {
        log_error(std::string("im2col: ") + cudaGetErrorString(err));
        return -1;
      }
      for (int g = 0; g < groups; ++g) {
        // Row-major out[g] (cout_g x L) = W[g] (cout_g x ck_g) @ cols[g] (ck_g x L), as the
        // column-major product out^T (L x cout_g) = cols^T (L x ck_g) @ W^T (ck_g x cout_g).
        const void* a = cols + size_t(g) * ck_g * l * es;
        const void* b = weight + size_t(g) * cout_g * ck_g * es;
        void* c = out + (size_t(n) * cout + size_t(g) * cout_g) * l * es;
        cublasStatus_t st = cublasGemmEx(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, int(l), cout_g, ck_g, &alpha, a, ct,
                                         int(l), b, ct, ck_g, &beta, c, ct, int(l), CUBLAS_COMPUTE_32F,
                                         CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS) {
          log_error("cublasGemmEx failed with status " + std::to_string(int(st)));
          return -1;
        }
      }
    }
    if (has_bias) {
      cudaError_t err = add_bias(x_dtype, outputs[0], inputs[kInputBias], s.N, cout, l, stream);
      if (err != cudaSuccess) {
        log_error(std::string("bias: ") + cudaGetErrorString(err));
        return -1;
      }
    }
    return 0;
  } catch (const std::exception& e) {
    log_error(std::string("enqueue: ") + e.what());
    return -1;
  }
}

IPluginV3* DcnPlugin::attachToContext(IPluginResourceContext* /*context*/) noexcept {
  // Each execution context gets its own clone, hence its own cuBLAS handle.
  return clone();
}

PluginFieldCollection const* DcnPlugin::getFieldsToSerialize() noexcept {
  field_values_ = to_fields(params_);
  fields_.clear();
  for (const IntField& f : field_values_)
    fields_.emplace_back(f.name.c_str(), f.values.data(), PluginFieldType::kINT32, int32_t(f.values.size()));
  collection_.nbFields = int32_t(fields_.size());
  collection_.fields = fields_.data();
  return &collection_;
}

// ---- creator ----------------------------------------------------------------------------------

DcnPluginCreator::DcnPluginCreator() {
  names_.emplace_back(kFieldStride, nullptr, PluginFieldType::kINT32, 2);
  names_.emplace_back(kFieldPadding, nullptr, PluginFieldType::kINT32, 2);
  names_.emplace_back(kFieldDilation, nullptr, PluginFieldType::kINT32, 2);
  names_.emplace_back(kFieldGroup, nullptr, PluginFieldType::kINT32, 1);
  names_.emplace_back(kFieldDeformableGroup, nullptr, PluginFieldType::kINT32, 1);
  collection_.nbFields = int32_t(names_.size());
  collection_.fields = names_.data();
}

char const* DcnPluginCreator::getPluginName() const noexcept { return kPluginName; }
char const* DcnPluginCreator::getPluginVersion() const noexcept { return kPluginVersion; }
char const* DcnPluginCreator::getPluginNamespace() const noexcept { return kPluginNamespace; }
PluginFieldCollection const* DcnPluginCreator::getFieldNames() noexcept { return &collection_; }

IPluginV3* DcnPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc,
                                          TensorRTPhase /*phase*/) noexcept {
  try {
    // Build and runtime phases take the same fields (getFieldsToSerialize writes all of them).
    return new DcnPlugin(parse_params(int_fields(fc)));
  } catch (const std::exception& e) {
    log_error(std::string("createPlugin(") + (name ? name : "") + "): " + e.what());
    return nullptr;
  }
}

}  // namespace trt_plugin
}  // namespace vsqe

// ---- library entry points -----------------------------------------------------------------------

extern "C" VSQE_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static vsqe::trt_plugin::DcnPluginCreator creator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = 1;
  return creators;
}

extern "C" VSQE_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  vsqe::trt_plugin::g_logger_finder.store(finder);
}
