"""Run an exported folder (ONNX Runtime or MNN graphs) through the one SanaEditPipeline: `load_exported(folder)`."""

from ..backends import BACKENDS
from .exported import load_exported

__all__ = ["BACKENDS", "load_exported"]
