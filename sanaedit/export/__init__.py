"""Export a model folder to ONNX (ONNX Runtime) or MNN graphs with the published names."""

from sanaedit.export.quant_spec import COMPONENTS, parse_quant

__all__ = ["COMPONENTS", "export_model", "parse_quant"]


def __getattr__(name: str):
    # Lazy: `export_model` needs torch; `parse_quant` (checking --quant) must not.
    if name == "export_model":
        from sanaedit.export.folder import export_model

        return export_model
    raise AttributeError(name)
