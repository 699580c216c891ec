"""Model export for other runtimes: ONNX (with DCN as ONNX DeformConv or as our TensorRT plugin's
op), the fp16 conversion, and the TensorRT engine builder and cache (docs/tensorrt.md).

Submodules import onnx / onnxscript / tensorrt lazily; importing this package costs nothing.
"""
