"""PyTorch module -> one .onnx file (external weight data above 2 GB), and weight-only quantization of it."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sanaedit.export.graphs import GraphSpec

OPSET = 18
ONNX_SIZE_LIMIT = 2**31 - 2**20  # protobuf's 2 GB limit, with room for the graph itself
_NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "onnxruntime.quantization")


def export_onnx(spec: GraphSpec, path: Path) -> Path:
    """Write `spec.module` to `path` (fp32). Large models get their weights in `path.name + '.data'`.

    A dynamo graph is cleaned up as `spec.cleanup` says ("fold" or "optimize"; see GraphSpec for why each).
    """
    cleanup = spec.cleanup if spec.dynamo else None
    if cleanup not in (None, "fold", "optimize"):
        raise ValueError(f"unknown ONNX cleanup {cleanup!r}")
    path = Path(path)
    module = spec.module.eval()
    dynamic_axes = {name: {0: "batch"} for name in spec.inputs + spec.outputs} if spec.dynamic_batch else {}
    for name in spec.length_inputs:
        dynamic_axes.setdefault(name, {})[1] = "length"
    if spec.spatial:
        for name in spec.inputs + spec.outputs:
            dynamic_axes.setdefault(name, {}).update({2: "height", 3: "width"})
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > ONNX_SIZE_LIMIT // 2
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_logs():
        warnings.simplefilter("ignore")
        if spec.dynamo:
            dims = {d: torch.export.Dim(d) for d in ("batch", "length", "height", "width")}
            shapes = tuple({axis: dims[d] for axis, d in dynamic_axes.get(name, {}).items()} for name in spec.inputs)
            if not any(shapes):
                shapes = None
            program = torch.onnx.export(
                module,
                spec.example,
                dynamo=True,
                input_names=spec.inputs,
                output_names=spec.outputs,
                opset_version=OPSET,
                dynamic_shapes=shapes,
                verbose=False,
                optimize=cleanup == "optimize",
            )
            if cleanup == "fold":
                import onnxscript.optimizer as onnx_optimizer

                onnx_optimizer.inline(program.model)
                onnx_optimizer.fold_constants_ir(program.model)
                onnx_optimizer.remove_unused_nodes(program.model)
            program.save(str(path), external_data=big)
        else:
            # Over 2 GB the TorchScript exporter writes one file per tensor beside the graph: export into a scratch
            # folder and keep one weight file.
            with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
                raw = Path(scratch) / path.name
                torch.onnx.export(
                    module,
                    spec.example,
                    str(raw),
                    dynamo=False,
                    input_names=spec.inputs,
                    output_names=spec.outputs,
                    opset_version=OPSET,
                    dynamic_axes=dynamic_axes or None,
                    do_constant_folding=True,
                )
                if big or raw.stat().st_size > ONNX_SIZE_LIMIT:
                    _save_with_one_weight_file(raw, path)
                else:
                    raw.replace(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"ONNX export of {spec.name} wrote no file at {path}")
    return path


@contextlib.contextmanager
def quiet_logs():
    """The dynamo exporter's passes log every rewrite at INFO; a user's export output should show our progress."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def quiet_root():
    """ORT's quantize_static / quantize_dynamic warn on the root logger that the graph was not pre-processed (ORT's
    pre-processing, symbolic shape inference, crashes on these dynamo graphs, and the session optimizes the graph
    anyway) and, for a graph with DequantizeLinear convs, that it may be quantized already (it is, those convs)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def move_graph(src: Path, dst: Path) -> None:
    """Move the graph `src` over `dst`, each with its weight side file (NAME.data, named after its graph): `dst`'s old
    one removed, `src`'s, if any, moved beside it. The exporters and ORT write into a scratch folder beside `dst`
    under `dst`'s name, so the graph's reference to its side file holds after the move."""
    old, new = Path(str(dst) + ".data"), Path(str(src) + ".data")
    old.unlink(missing_ok=True)
    if new.is_file():
        new.replace(old)
    src.replace(dst)


def _save_with_one_weight_file(src: Path, path: Path) -> None:
    import onnx

    model = onnx.load(str(src))  # reads the external tensors from beside `src`
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )


# Why the w8a8 graphs' int8 weights span 7 bits ([-64, 64], ORT's `reduce_range`): on an x86 CPU without VNNI (AVX2,
# or AVX-512 without VNNI: e.g. the AVX2-only EPYCs this project has run on) ORT's u8 x s8 kernels add each pair of
# products in int16 (VPMADDUBSW), which saturates above 32767, and 255 x 127 x 2 does; VNNI adds them in int32. The
# same graph was then 0.27 off PyTorch (relative L2) on an AVX2 CPU against 0.007 with VNNI (the tiny test DiT; DC-AE's
# decoder 0.37 against 0.06), so the export's check accepted or rejected it depending on the machine, and a graph
# checked on one CPU ran worse on another. 255 x 64 x 2 fits int16: every x86 kernel (AVX2, VNNI, SSE4) computes the
# same integers (measured under qemu: AVX2 and SSE4 CPUs match this VNNI one to 4 digits), for a little more error
# (tiny DiT 0.012, DC-AE 0.047 / 0.066).
W8A8_REDUCE_RANGE = True

INT8_COMPUTE = 4  # MatMulNBits' accuracy_level 4: activations quantized to int8 per block, int8 dot products


def quantize_onnx_weights(path: Path, bits: int, block_size: int = 128) -> dict:
    """Asymmetric weight quantization, in place: MatMul/Gemm weights through ONNX Runtime's MatMulNBits (`bits`,
    groups of `block_size`) computing in int8, pointwise (1x1) convolutions first rewritten as MatMuls so they
    join them, the other Conv weights as uint8 per output channel behind a DequantizeLinear.

    Why int8 compute (`accuracy_level` 4): MatMulNBits in float dequantizes its weights on every call and ran a
    512x1152x5760 product at 0.65x fp32 here; with int8 activations (per block, computed each call: no
    calibration) it ran at 2.2x fp32 (3.3x the float mode) for 0.9% error instead of 0.6%. Why the 1x1 convs: they
    are two thirds of a SANA DiT's FLOPs (Mix-FFN) and MatMulNBits only takes MatMul. Why a DequantizeLinear for
    the rest (depthwise and 3x3 convs): ORT's integer Conv with per-call activation ranges (`quantize_dynamic`)
    ran the DiT 2x and DC-AE 4x slower here; a constant DequantizeLinear keeps float compute and stores 8 bits.
    (4-bit Conv weights would need opset 21's uint4; the published system keeps the non-LLM parts at 8 bits.)
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(path))
    pointwise = _pointwise_convs_as_matmuls(model)
    with quiet_logs():
        quantizer = MatMulNBitsQuantizer(
            model, bits=bits, block_size=block_size, is_symmetric=False, accuracy_level=INT8_COMPUTE
        )
        quantizer.process()
    model = quantizer.model.model
    convs = _dequantize_conv_weights(model)
    data = Path(str(path) + ".data")
    data.unlink(missing_ok=True)
    big = model.ByteSize() > ONNX_SIZE_LIMIT
    quantizer.model.save_model_to_file(str(path), use_external_data_format=big)
    return {
        "bits": bits,
        "block_size": block_size,
        "conv_bits": 8 if convs else None,
        "pointwise_convs_as_matmul": pointwise,
        "compute": "int8 (MatMulNBits accuracy_level 4); float for the DequantizeLinear convs",
        "scheme": "asymmetric: MatMulNBits for MatMul/Gemm and 1x1 Conv, uint8 per-channel DequantizeLinear for Conv",
    }


def quantize_onnx_dynamic(path: Path) -> dict:
    """int8 weights *and* activations for a matmul-bound graph (the DiT's `transformer=w8a8`), in place: ONNX
    Runtime's `quantize_dynamic` on every MatMul with a constant weight (symmetric int8 per output column, in a 7-bit
    range: W8A8_REDUCE_RANGE), the plain 1x1 convs rewritten as MatMuls first, the other Conv weights 8-bit behind a
    DequantizeLinear as in `quantize_onnx_weights`. Each call measures its activation's range (one per tensor,
    uint8): no calibration. `optimize_for_onnxruntime` then fuses each quantize -> MatMulInteger -> scale chain into
    one DynamicQuantizeMatMul (u8 x s8 VNNI kernels).

    Why: on a SANA DiT's products (176-512 tokens x 1152 x 1152-5760) it ran ~2x MatMulNBits' int8 mode (700-770
    against 340-390 GOP/s) and the published-size DiT's step 0.7x. The price is coarser activations (one range a
    tensor, not one per 128-value block): 7-10% relative error against 1.5% on products whose activations have a
    few 20x channels (0.75% against 1.6% without), so each export is checked (folder.W8A8_DYNAMIC_TOLERANCE)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    big = Path(str(path) + ".data").is_file()  # a graph exported with a side file keeps one
    model = onnx.load(str(path))
    pointwise = _pointwise_convs_as_matmuls(model)
    convs = _dequantize_conv_weights(model)
    # Through files in a scratch folder: the quantizer reads a path without copying the model in memory (a 0.6B
    # DiT is 2.4 GB in fp32), and writes its weight file as OUTPUT_NAME.data, so the graph keeps its name there and
    # both move into place together.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch, quiet_logs(), quiet_root():
        rewritten, out = Path(scratch) / "rewritten.onnx", Path(scratch) / path.name
        onnx.save_model(model, str(rewritten), save_as_external_data=True, location="rewritten.onnx.data")
        del model
        quantize_dynamic(
            rewritten,
            out,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            weight_type=QuantType.QInt8,  # u8 activations x s8 weights: ORT's x86 VNNI kernels
            reduce_range=W8A8_REDUCE_RANGE,  # 7-bit weights: the same integers on every x86 CPU
            use_external_data_format=big,
        )
        move_graph(out, path)
    return {
        "bits": 8,
        "activation_bits": 8,
        "pointwise_convs_as_matmul": pointwise,
        "conv_bits": 8 if convs else None,
        "compute": "int8 MatMuls (DynamicQuantizeMatMul); float for the DequantizeLinear convs",
        "scheme": "dynamic int8 MatMul: uint8 activations ranged per call and tensor, int8 weights (7-bit) per column",
    }


def _rewrite_convs(model, rewrite: Callable) -> int:
    """Rebuild the graph's node list, replacing each Conv whose weight is a float initializer only it uses by the
    nodes `rewrite(node, weight)` returns (None keeps the Conv; `rewrite` swaps the initializers it changes).
    Returns how many were replaced."""
    import onnx

    initializers = {init.name: init for init in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    new_nodes, done = [], 0
    for node in model.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        own = weight is not None and weight.data_type == onnx.TensorProto.FLOAT and users[weight.name] == 1
        replacement = rewrite(node, weight) if own else None
        new_nodes.extend([node] if replacement is None else replacement)
        done += replacement is not None
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return done


def _pointwise_convs_as_matmuls(model) -> int:
    """Rewrite each plain 1x1 Conv (stride 1, no padding, one group) on an NCHW tensor as Transpose -> MatMul
    [Cin, Cout] (-> Add bias) -> Transpose, the same function, so that MatMulNBits quantizes it."""
    from onnx import helper, numpy_helper

    def as_matmul(node, weight):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            len(weight.dims) == 4
            and tuple(weight.dims[2:]) == (1, 1)
            and attrs.get("group", 1) == 1
            and all(v == 1 for v in attrs.get("strides", [1]) + attrs.get("dilations", [1]))
            and all(v == 0 for v in attrs.get("pads", [0]))
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        )
        if not plain:
            return None
        matrix = numpy_helper.to_array(weight)[:, :, 0, 0].T
        model.graph.initializer.remove(weight)
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(matrix), f"{weight.name}_matmul"))
        base = node.name or node.output[0]
        nodes = [
            helper.make_node("Transpose", [node.input[0]], [f"{base}_nhwc"], perm=[0, 2, 3, 1], name=f"{base}_nhwc"),
            helper.make_node("MatMul", [f"{base}_nhwc", f"{weight.name}_matmul"], [f"{base}_mm"], name=f"{base}_mm"),
        ]
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [f"{base}_mm", node.input[2]], [f"{base}_bias"], name=f"{base}_bias"))
        last = nodes[-1].output[0]
        nodes.append(helper.make_node("Transpose", [last], [node.output[0]], perm=[0, 3, 1, 2], name=f"{base}_nchw"))
        return nodes

    return _rewrite_convs(model, as_matmul)


def _dequantize_conv_weights(model) -> int:
    """Replace each Conv's float initializer weight by uint8 codes + scale + zero point -> DequantizeLinear."""
    from onnx import helper, numpy_helper

    from sanaedit.export.weight_quant import quantize_tensor

    def dequantized(node, weight):
        q = quantize_tensor(torch.from_numpy(numpy_helper.to_array(weight).copy()), bits=8)
        base = weight.name
        model.graph.initializer.remove(weight)
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(q.codes.reshape(q.shape).numpy(), f"{base}_q"),
                numpy_helper.from_array(q.scale.reshape(-1).numpy().astype(np.float32), f"{base}_scale"),
                numpy_helper.from_array(q.zero.reshape(-1).numpy(), f"{base}_zero"),
            ]
        )
        inputs = [f"{base}_q", f"{base}_scale", f"{base}_zero"]
        return [helper.make_node("DequantizeLinear", inputs, [base], axis=0, name=f"{base}_dq"), node]

    return _rewrite_convs(model, dequantized)


def optimize_for_onnxruntime(path: Path) -> dict:
    """Rewrite the graph at `path` as ONNX Runtime's extended-level optimizer leaves it (its node fusions; none of the
    hardware-specific layouts of the "all" level), so a session made from it has almost nothing left to do at load:
    the published-size int8 DiT's session starts in ~1 s instead of ~2.4-3 s, with the same outputs and step time
    (measured 2026-12-03). ORT's documented offline-optimization path; the result, like MatMulNBits itself, is for
    ONNX Runtime. A graph with a weight side file keeps one (same name)."""
    import onnxruntime as ort

    path = Path(path)
    side = path.with_name(path.name + ".data")
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        optimized = Path(scratch) / path.name
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        if side.exists():  # written beside the new graph, then both moved over the old ones (never read while written)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", side.name)
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        move_graph(optimized, path)
    return {"optimized": "onnxruntime extended level (offline)"}
