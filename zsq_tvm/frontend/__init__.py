"""Model import: ONNX → float Relax with a static input ``[B, F, T]``."""

from zsq_tvm.frontend.onnx_import import SUPPORTED_OPS, ModelInfo, check_supported_ops, import_onnx, load_onnx, model_info

__all__ = ["SUPPORTED_OPS", "ModelInfo", "check_supported_ops", "import_onnx", "load_onnx", "model_info"]
