"""Run an exported folder (ONNX Runtime or MNN graphs) through the one SanaEditPipeline: `load_exported(folder)`,
which also runs the published MNN release's files alone (`load_release`, runtime/release.py)."""

from ..backends import BACKENDS
from .exported import load_exported
from .release import load_release

__all__ = ["BACKENDS", "load_exported", "load_release"]
