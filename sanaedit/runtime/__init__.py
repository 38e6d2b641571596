"""Run an exported folder (ONNX Runtime or MNN graphs) through the one SanaEditPipeline: `load_exported(folder)`,
which also runs the published MNN release's files alone (`load_release`, runtime/release.py). Names load lazily:
an exported folder's edit imports only the runtime its layout needs."""

from importlib import import_module

from ..backends import BACKENDS

_WHERE = {"load_exported": "exported", "load_release": "release"}
__all__ = ["BACKENDS", "load_exported", "load_release"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(name)
    return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
