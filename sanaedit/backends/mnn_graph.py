"""One exported .mnn graph as a callable on arrays (the `mnn` wheel's Module API, CPU): NumPy (or CPU torch tensors)
in, NumPy out."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from sanaedit.core.arrays import to_numpy
from sanaedit.core.cpu import physical_cores
from sanaedit.core.log import native_stdout_to_stderr
from sanaedit.errors import ModelFolderError

# MNN's BackendConfig enums (MNNForwardType.h). The Python wrapper reads "memory" only as an integer (a string such
# as "low" is silently ignored); "precision" as a string also prints a line on stdout for every graph loaded.
MEMORY_NORMAL, MEMORY_LOW = 0, 2
PRECISION_HIGH = 1  # float32 compute on CPU


def import_mnn(name: str = "MNN.nn") -> Any:
    """`MNN.nn` / `MNN.expr`. The first import of the mnn wheel printf's "The device supports: ..." on stdout from
    C, so it runs with stdout sent to stderr: stdout carries only the command's result."""
    import importlib

    if name in sys.modules:
        return sys.modules[name]
    with native_stdout_to_stderr():
        return importlib.import_module(name)


def runtime_config(threads: int | None, low_memory: bool) -> dict:
    """The CPU runtime's settings for one graph (see MnnGraph for `low_memory`)."""
    return {
        "backend": "CPU",
        "numThread": threads or physical_cores(),
        "precision": PRECISION_HIGH,
        "memory": MEMORY_LOW if low_memory else MEMORY_NORMAL,
    }


class MnnGraph:
    """`graph(*arrays) -> array` for a .mnn file with the given input/output names.

    `low_memory`: MNN's low-memory mode, which keeps weight-quantized layers' 8/4-bit weights packed and computes
    them with int8 activations quantized per call, instead of turning the weights back to float32 at load. On the
    published-size DiT (8-bit) it held 0.65 GB instead of 2.47 GB, for a step of 2.6 s instead of 2.0 s and 1.0e-2
    relative L2 from the normal mode's output; on convolutions it ran 2.5-5x slower here (DC-AE, the light
    autoencoder), so the runtime asks for it per graph (backends.MNN_LOW_MEMORY). Graphs without quantized weights
    run as before."""

    def __init__(
        self,
        path: str | Path,
        inputs: list[str],
        outputs: list[str],
        threads: int | None = None,
        low_memory: bool = False,
    ):
        mnn_nn = import_mnn("MNN.nn")

        path = Path(path)
        if not path.is_file() or path.stat().st_size == 0:
            raise FileNotFoundError(f"{path}: exported MNN graph not found or empty")
        self.runtime = mnn_nn.create_runtime_manager((runtime_config(threads, low_memory),))
        # External weights (`--saveExternalData`) are found beside the .mnn file, so load from its folder.
        try:
            self.module = mnn_nn.load_module_from_file(
                str(path), inputs, outputs, runtime_manager=self.runtime, rearrange=True
            )
        except Exception:  # MNN reports a corrupt file as SystemError ("returned a result with an exception set")
            self.module = None
        if self.module is None:
            raise ModelFolderError(f"{path}: not a valid MNN graph (corrupt or truncated); export the model again")
        self.inputs, self.path = inputs, path

    def __call__(self, *tensors: Any) -> np.ndarray:
        mnn_expr = import_mnn("MNN.expr")

        if len(tensors) != len(self.inputs):
            raise ValueError(f"{self.path.name}: expects {len(self.inputs)} inputs {self.inputs}, got {len(tensors)}")
        # The arrays stay referenced until forward has run (MNN's const may read them in place).
        arrays = [np.ascontiguousarray(to_numpy(t)) for t in tensors]
        feed = [mnn_expr.const(a, list(a.shape), mnn_expr.NCHW, mnn_expr.float) for a in arrays]
        out = self.module.forward(feed)
        out = out[0] if isinstance(out, (list, tuple)) else out
        if out.data_format == mnn_expr.NC4HW4:
            out = mnn_expr.convert(out, mnn_expr.NCHW)
        # Copy out: the next step must not share (or grow) MNN's buffers.
        return np.array(out.read(), dtype=np.float32).reshape(out.shape)
