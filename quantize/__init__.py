"""Quantization stage: FP32 ONNX -> INT8 with ONNX Runtime, checked against FP32."""
