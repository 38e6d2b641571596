"""Export a model folder to ONNX (ONNX Runtime) or MNN graphs with the published names."""

from .folder import COMPONENTS, EXPORT_CLASS, export_model, parse_quant

__all__ = ["COMPONENTS", "EXPORT_CLASS", "export_model", "parse_quant"]
