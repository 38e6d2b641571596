"""Run the pipeline on exported graphs: ONNX Runtime or MNN (`load_pipeline(folder, backend=None)`)."""

from .pipeline import BACKENDS, ExportedPipeline, is_export, load_pipeline

__all__ = ["BACKENDS", "ExportedPipeline", "is_export", "load_pipeline"]
