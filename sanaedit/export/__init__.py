"""Export a model folder to ONNX (ONNX Runtime) or MNN graphs with the published names."""

from sanaedit.export.folder import COMPONENTS, export_model, parse_quant

__all__ = ["COMPONENTS", "export_model", "parse_quant"]
