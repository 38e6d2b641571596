"""Exported graphs as callables on arrays (NumPy in and out; CPU torch tensors are taken too): ONNX Runtime and MNN,
CPU. Nothing here imports torch.

Used by the runtime (to run an exported folder) and by the exporter (to check each graph against PyTorch), so
neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from sanaedit.core.choices import DEFAULT_BACKEND, Backend

# an export format -> the runtime that runs it (core/choices.py's table, the graph formats only)
FORMATS = {fmt: backend for fmt, backend in DEFAULT_BACKEND.items() if backend != Backend.TORCH}
# The graphs MNN runs in its low-memory mode: the matmul-bound ones (mnn_graph.py says why not the others). The LLM's
# (mnn_llm.py): a new prompt on the published-size release layout then peaks at 1.27 GB instead of 4.68 GB.
MNN_LOW_MEMORY = ("transformer", "connector", "projector", "llm")


def load_graph(
    path: str | Path,
    backend: str,
    inputs: list[str],
    outputs: list[str],
    threads: int | None = None,
    component: str | None = None,
):
    """`graph(*arrays) -> array` for one exported graph file; `component` (its name in the model, e.g.
    "transformer") lets a runtime pick per-graph settings (MNN's low-memory mode: mnn_graph.py)."""
    if backend == Backend.ONNXRUNTIME:
        from sanaedit.backends.ort_graph import OrtGraph

        return OrtGraph(path, threads)
    if backend == Backend.MNN:
        from sanaedit.backends.mnn_graph import MnnGraph

        return MnnGraph(path, inputs, outputs, threads, low_memory=component in MNN_LOW_MEMORY)
    raise ValueError(f"unknown backend {backend!r}; choose one of {[b.value for b in FORMATS.values()]}")
