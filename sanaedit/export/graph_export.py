"""One sub-model -> one checked graph file: exported to ONNX (or through ONNX to MNN), quantized as asked, loaded
back in the runtime that will run it and compared with PyTorch; a graph off by more than its tolerance is never
written (or, for int8 compute, is exported again with 8-bit weights, with a warning)."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sanaedit.backends import load_graph
from sanaedit.core.choices import Backend
from sanaedit.export.calibrate import Calibration, quantize_onnx_static
from sanaedit.export.onnx_export import (
    export_onnx,
    optimize_for_onnxruntime,
    quantize_onnx_dynamic,
    quantize_onnx_weights,
)
from sanaedit.export.quant_spec import W8A8, W8A8_DYNAMIC

logger = logging.getLogger(__name__)


LLM_GROUP_SIZE = 64  # the published LLM's 4-bit block


FP32_TOLERANCE = 1e-3  # an fp32 graph off by more than this (max-abs relative) is a broken export, not rounding


# A w8a8 graph off by more than this (relative L2) has lost the picture and is exported again as `NAME=8` exports
# it (8-bit weights only), with a warning. Calibrated autoencoders, on a held-out photo: the tiny random test
# model's DC-AE measures 0.047 (encoder) / 0.066 (decoder); ranges from all-zero or 10x too small inputs 0.7-0.97.
# The DiT, on its seeded example inputs: 0.012 for the tiny test model, 0.021 for the bundled model's student (0.007
# and 0.018 with full 8-bit weights: onnx_export.W8A8_REDUCE_RANGE says why they span 7 bits), 0.016 at the
# published size (random weights, measured with 8-bit weights); activations with a few 20x channels (what per-tensor
# ranges handle worst) would be ~0.1.
# The verdict must be the same on every machine that exports: the graphs compute the same integers on every x86 CPU
# (W8A8_REDUCE_RANGE), and the check runs on one thread, on a fixed photo or on seeded inputs (graphs.EXAMPLE_SEED).
W8A8_TOLERANCE = 0.25


W8A8_DYNAMIC_TOLERANCE = 0.05


def say(progress: bool, message: str) -> None:
    if progress:
        logger.info(message)


def export_graph(spec, folder: Path, fmt: str, bits: int | str | None, calibration: Calibration | None = None) -> dict:
    entry: dict = {"inputs": spec.inputs, "outputs": spec.outputs, "bits": 8 if bits == W8A8 else bits}
    if fmt == "onnx":
        path = export_onnx(spec, folder / f"{spec.name}.onnx")
        dynamic = (spec.quant_as or spec.name) in W8A8_DYNAMIC  # w8a8 with ranges per call, not calibrated
        if bits == W8A8 and dynamic:
            entry["quant"] = quantize_onnx_dynamic(path)
        elif bits == W8A8:
            entry["quant"] = quantize_onnx_static(path, spec.inputs[0], calibration.samples)
        elif bits is not None:
            entry["quant"] = quantize_onnx_weights(path, bits, block_size=onnx_block(bits))
        entry.update(optimize_for_onnxruntime(path))  # checked below as it will run
        # one thread: the check's sums come in one order, whatever the machine's cores and load
        graph = load_graph(path, Backend.ONNXRUNTIME, spec.inputs, spec.outputs, threads=1)
        if bits == W8A8:
            # Calibrated ranges fit photos, and random inputs lie outside them: checked on a held-out photo. Ranges
            # measured per call fit any input: checked on the usual example inputs.
            check = spec.example if dynamic else (calibration.check,)
            entry["max_rel_error"], entry["rel_l2_error"] = graph_errors(spec, graph, check)
            tolerance = W8A8_DYNAMIC_TOLERANCE if dynamic else W8A8_TOLERANCE
            if entry["rel_l2_error"] > tolerance:
                kind = spec.quant_as or spec.name
                logger.warning(
                    f"the {W8A8} {spec.name} graph is {entry['rel_l2_error']:.3f} off PyTorch (relative L2 on "
                    f"{w8a8_check(kind)}; at most {tolerance} passes): this model's activations do not survive "
                    f"int8 there. Exporting {spec.name} with 8-bit weights only (--quant {kind}=8) instead."
                )
                del graph
                fallback = export_graph(spec, folder, fmt, 8)
                fallback["w8a8_rejected"] = {"rel_l2_error": entry["rel_l2_error"], "tolerance": tolerance}
                return fallback
        else:
            entry["max_rel_error"] = graph_errors(spec, graph, spec.example)[0]
    else:
        from sanaedit.export.mnn_convert import onnx_to_mnn

        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            onnx_path = export_onnx(spec, Path(scratch) / f"{spec.name}.onnx")
            path = onnx_to_mnn(onnx_path, folder / f"{spec.name}.mnn", bits, block_size=mnn_block(bits))
        if bits is not None:
            entry["quant"] = {"bits": bits, "block_size": mnn_block(bits), "scheme": "MNN asymmetric weights"}
        graph = load_graph(path, Backend.MNN, spec.inputs, spec.outputs, component=spec.name)  # checked as it will run
        entry["max_rel_error"] = graph_errors(spec, graph, spec.example)[0]
    error = entry["max_rel_error"]
    if not math.isfinite(error) or (bits is None and error > FP32_TOLERANCE):
        # The folder is written atomically: a broken graph leaves no export (and an older one untouched).
        raise RuntimeError(
            f"the exported {spec.name} graph does not match PyTorch (max relative error {error:.2e}); "
            f"nothing was written. Please report this with your model's config."
        )
    entry["file"] = path.name
    entry["bytes"] = sum(p.stat().st_size for p in folder.glob(path.name + "*"))
    return entry


def w8a8_check(name: str) -> str:
    """What a w8a8 graph is checked on against PyTorch (for messages)."""
    return "example inputs" if name in W8A8_DYNAMIC else "a held-out photo"


def mnn_block(bits: int | None) -> int | None:
    return LLM_GROUP_SIZE if bits == 4 else None  # 8-bit: per channel


def onnx_block(bits: int) -> int:
    return LLM_GROUP_SIZE if bits == 4 else 128  # MatMulNBits needs blocks; 128 is its default


def graph_errors(spec, graph: Callable, inputs: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """(max |graph - torch| / max |torch|, |graph - torch|_2 / |torch|_2) on `inputs`."""
    with torch.no_grad():
        ref = spec.module(*inputs).float()
    diff = torch.from_numpy(np.asarray(graph(*inputs), np.float32)) - ref  # a graph returns arrays (or tensors)
    return float(diff.abs().max() / ref.abs().max().clamp(min=1e-12)), float(diff.norm() / ref.norm().clamp(min=1e-12))
