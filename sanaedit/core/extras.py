"""Which install extra brings which package: the base install runs models (ONNX Runtime, MNN, tokenizers); PyTorch,
export, training and the server come with extras. A command that reaches for a missing one says which extra to
install, in one line, instead of a traceback (`require` before the work starts; `missing_extra` for an import
that fails deeper down). tests/test_extras.py checks this table against pyproject.toml."""

from __future__ import annotations

import importlib.util

from sanaedit.errors import MissingExtra

# top-level module -> the extra that installs it (the first extra that lists it in pyproject.toml)
EXTRA_OF = {
    "torch": "torch",
    "diffusers": "torch",
    "transformers": "torch",
    "accelerate": "torch",
    "peft": "torch",
    "onnx": "export",
    "onnxscript": "export",
    "llmexport": "export",
    "skimage": "export",
    "yaml": "train",
    "cv2": "control",
    "came_pytorch": "train",
    "tensorboard": "train",
    "fastapi": "serve",
    "uvicorn": "serve",
}


def install_hint(extra: str) -> str:
    return f"pip install 'sanaedit[{extra}]'"


def has(module: str) -> bool:
    """Whether `module` can be imported here (found, not imported: nothing heavy is loaded)."""
    return importlib.util.find_spec(module) is not None


def require(module: str, what: str) -> None:
    """Raise MissingExtra, naming the extra to install, when `what` cannot run because `module` is not installed."""
    if not has(module):
        extra = EXTRA_OF[module]
        raise MissingExtra(f"{what} needs {module}, which is not installed: {install_hint(extra)}")


def missing_extra(err: ImportError) -> MissingExtra | None:
    """The one-line MissingExtra for an ImportError of a module an extra brings; None for anything else."""
    if isinstance(err, MissingExtra):
        return err
    name = (getattr(err, "name", None) or "").split(".")[0]
    if not isinstance(err, ModuleNotFoundError) or name not in EXTRA_OF:
        return None
    return MissingExtra(f"this needs {name}, which is not installed: {install_hint(EXTRA_OF[name])}")
