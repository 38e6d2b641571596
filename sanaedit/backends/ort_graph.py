"""One exported .onnx graph as a callable on arrays (ONNX Runtime, CPU): NumPy (or CPU torch tensors) in, NumPy out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sanaedit.core.arrays import to_numpy
from sanaedit.core.cpu import physical_cores
from sanaedit.errors import ModelFolderError, first_line

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class OrtGraph:
    """`graph(*arrays) -> array`: inputs in the graph's declared order, converted to its declared types."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: exported graph not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or physical_cores()  # GEMM-bound, one edit at a time
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's InvalidProtobuf / InvalidArgument / Fail: not our error types
            # "Load model from PATH failed:Protobuf parsing failed." -> what failed
            reason = first_line(err).split(" failed:", 1)[-1].strip()
            raise ModelFolderError(f"{path}: not a valid ONNX graph ({reason}); export the model again") from None
        self.inputs = [(i.name, _NUMPY_TYPES.get(i.type, np.float32)) for i in self.session.get_inputs()]
        self.path = path

    def __call__(self, *tensors: Any) -> np.ndarray:
        if len(tensors) != len(self.inputs):
            names = [name for name, _ in self.inputs]
            raise ValueError(f"{self.path.name}: expects {len(self.inputs)} inputs {names}, got {len(tensors)}")
        feed = {
            name: np.ascontiguousarray(to_numpy(t).astype(dtype, copy=False))
            for (name, dtype), t in zip(self.inputs, tensors)
        }
        # A fresh output array each call: nothing from one step is kept or grown into the next.
        return self.session.run(None, feed)[0]
