"""`--quant ...=w8a8`: int8 compute in ONNX graphs, on the tiny random model. The DC-AE graphs' convolutions with
activations calibrated on photos at export (sanaedit/export/calibrate.py); the DiT's matmuls with activations ranged
per call (onnx_export.quantize_onnx_dynamic). The light autoencoder's: tests/models/test_tiny_vae.py."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.apps.cli import main
from sanaedit.export import export_model, parse_quant
from sanaedit.export.graphs import graph_specs
from sanaedit.export.onnx_export import export_onnx
from sanaedit.image.io import load_image
from sanaedit.load import SAMPLE_PHOTO, load_pipeline
from sanaedit.train.evaluate import psnr

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

W8A8_QUANT = "rest=32,vae_encoder=w8a8,vae_decoder=w8a8"  # only the DC-AE differs from an fp32 export
VAE_GRAPHS = ("vae_encoder", "vae_decoder")


def accepted(entry: dict) -> dict:
    """`entry`, once sure its w8a8 graph passed the export's check. The tiny model's pass on every machine, with room
    to spare: the verdict depends on no CPU (the 7-bit weights checked below), thread count or earlier random draws
    (test_w8a8_check_inputs_are_fixed); the rejected case is tested on its own below."""
    assert "w8a8_rejected" not in entry, f"w8a8 graph rejected by the export's check: {entry['w8a8_rejected']}"
    return entry


@pytest.fixture(scope="module")
def exports(tiny_model_dir, tiny_pipe, tmp_path_factory):
    """(w8a8 export through the CLI, the same folder with the fp32 export's DC-AE graphs)."""
    base = tmp_path_factory.mktemp("int8")
    int8 = base / "int8"
    assert main(["export", str(tiny_model_dir), "-o", str(int8), "--quant", W8A8_QUANT, "-q"]) == 0
    # The fp32 export differs from this one only in the two DC-AE graphs: write those as an fp32 export writes them
    # rather than exporting every graph again (the tiny model's LLM and DiT take most of an export's time).
    fp32 = base / "fp32"
    shutil.copytree(int8, fp32)
    manifest = json.loads((fp32 / "model_index.json").read_text())
    for name in VAE_GRAPHS:
        accepted(manifest["graphs"][name])
    for spec in graph_specs(tiny_pipe):
        if spec.name in VAE_GRAPHS:
            path = export_onnx(spec, fp32 / f"{spec.name}.onnx")
            entry = manifest["graphs"][spec.name]
            entry.update(bits=None, bytes=path.stat().st_size)  # the runtime checks each graph's recorded size
            del entry["quant"], entry["rel_l2_error"]
    (fp32 / "model_index.json").write_text(json.dumps(manifest))
    return int8, fp32


@pytest.mark.parametrize("name", VAE_GRAPHS)
def test_w8a8_graphs_compute_convolutions_in_int8(exports, name):
    int8, _ = exports
    manifest = json.loads((int8 / "model_index.json").read_text())
    entry = accepted(manifest["graphs"][name])
    assert entry["bits"] == 8 and entry["quant"]["activation_bits"] == 8
    assert 0 < entry["rel_l2_error"] < 0.15  # measured 0.047 (encoder), 0.066 (decoder) on the held-out photo
    assert manifest["graphs"]["transformer"]["bits"] is None  # rest=32: untouched

    # stored as ONNX Runtime runs it: the QDQ pairs fused into integer convolutions, none left in float
    model = onnx.load(str(int8 / entry["file"]))
    inits = {init.name: init for init in model.graph.initializer}
    ops = [n.op_type for n in model.graph.node]
    convs = [n for n in model.graph.node if n.op_type == "QLinearConv"]
    assert convs and "Conv" not in ops
    for conv in convs:  # uint8 activations in, int8 weights with one scale per output channel
        x_zero, weight, scale = (inits[conv.input[i]] for i in (2, 3, 4))
        assert x_zero.data_type == onnx.TensorProto.UINT8, conv.name
        assert weight.data_type == onnx.TensorProto.INT8 and list(scale.dims) == [weight.dims[0]], conv.name
        # in a 7-bit range, so no CPU's int8 kernel saturates (onnx_export.W8A8_REDUCE_RANGE)
        assert np.abs(onnx.numpy_helper.to_array(weight).astype(np.int32)).max() <= 64, conv.name


def test_w8a8_export_edits_a_photo_close_to_fp32(exports, tmp_path):
    int8, fp32 = exports
    photo = load_image(SAMPLE_PHOTO)
    out = load_pipeline(int8)(photo, generator=torch.Generator().manual_seed(0)).images[0]
    want = load_pipeline(fp32)(photo, generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == want.size == photo.size
    close = psnr(np.asarray(out), np.asarray(want))
    assert 25 < close < 80, close  # measured 29.8 dB (random tiny weights); < 80: the graphs really differ

    # the CLI runs it too
    assert main(["edit", str(SAMPLE_PHOTO), "-o", str(tmp_path / "out.png"), "--model", str(int8), "-q"]) == 0
    assert Image.open(tmp_path / "out.png").size == photo.size


@pytest.mark.parametrize(
    "text, message",
    [
        ("llm=w8a8", "tiny_vae_decoder and transformer only"),
        ("connector=w8a8", "tiny_vae_decoder and transformer only"),
        ("rest=w8a8", "tiny_vae_decoder and transformer only"),
        ("vae_decoder=int8", "w8a8"),
        ("vae_decoder=W8A8", "w8a8"),
    ],
)
def test_bad_w8a8_setting_says_what_is_allowed(text, message):
    with pytest.raises(ValueError, match="--quant") as err:
        parse_quant(text)
    assert message in str(err.value)


def test_w8a8_is_parsed_per_graph():
    bits = parse_quant("llm=4,rest=8,vae_encoder=w8a8,vae_decoder=w8a8")
    assert bits["vae_encoder"] == bits["vae_decoder"] == "w8a8" and bits["transformer"] == 8 and bits["llm"] == 4
    bits = parse_quant("llm=4,rest=8,transformer=w8a8,tiny_vae_encoder=w8a8,tiny_vae_decoder=w8a8")
    assert bits["transformer"] == bits["tiny_vae_encoder"] == bits["tiny_vae_decoder"] == "w8a8"
    assert bits["vae_decoder"] == bits["connector"] == 8


def test_w8a8_is_onnx_only_and_fails_before_loading(tmp_path, capsys):
    missing = tmp_path / "no-model"  # refused before the model folder is read
    with pytest.raises(ValueError, match="--format onnx only"):
        export_model(missing, tmp_path / "out", fmt="mnn", quant="vae_decoder=w8a8", progress=False)
    with pytest.raises(ValueError, match="and transformer only"):  # bits given as a dict skip the parser
        export_model(missing, tmp_path / "out", quant={**parse_quant(None), "connector": "w8a8"}, progress=False)
    model = tmp_path / "model"
    model.mkdir()
    assert main(["export", str(model), "-o", str(tmp_path / "o"), "--quant", "projector=w8a8"]) == 1
    assert "and transformer only" in capsys.readouterr().err


def test_transformer_w8a8_computes_its_matmuls_in_int8(tiny_model_dir, tiny_pipe, tmp_path):
    out = export_model(tiny_model_dir, tmp_path / "dit", quant="rest=32,transformer=w8a8", progress=False)
    manifest = json.loads((out / "model_index.json").read_text())
    entry = accepted(manifest["graphs"]["transformer"])
    assert entry["bits"] == 8 and entry["quant"]["activation_bits"] == 8
    assert entry["quant"]["pointwise_convs_as_matmul"] > 0  # the Mix-FFN's 1x1 convs joined the int8 matmuls
    assert 0 < entry["rel_l2_error"] < 0.05  # on the seeded example inputs (no calibration); measured 0.012
    assert manifest["graphs"]["vae_decoder"]["bits"] is None  # rest=32: untouched

    # stored fused, as ONNX Runtime runs it: one DynamicQuantizeMatMul per weight matmul, none left in float
    model = onnx.load(str(out / entry["file"]))
    inits = {init.name: init for init in model.graph.initializer}
    fused = [n for n in model.graph.node if n.op_type == "DynamicQuantizeMatMul"]
    assert fused
    assert not [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]
    for node in fused:  # int8 weights [K, N] with a scale per output column, in a 7-bit range (no saturation)
        weight, scale = inits[node.input[1]], inits[node.input[2]]
        assert weight.data_type == onnx.TensorProto.INT8 and list(scale.dims) == [weight.dims[1]], node.name
        assert np.abs(onnx.numpy_helper.to_array(weight).astype(np.int32)).max() <= 64, node.name

    # the edit stays close to PyTorch's, through the CLI's loader
    photo = load_image(SAMPLE_PHOTO)
    got = load_pipeline(out)(photo, generator=torch.Generator().manual_seed(0)).images[0]
    want = tiny_pipe(photo, generator=torch.Generator().manual_seed(0)).images[0]
    close = psnr(np.asarray(got), np.asarray(want))
    assert 30 < close < 80, close  # measured 49.2 dB; < 80: the int8 graph really differs


def test_a_w8a8_graph_that_loses_the_picture_gets_8_bit_weights(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """Over its check's tolerance a w8a8 graph is not shipped: the export warns, writes the graph as `=8` writes it
    and records why in the manifest (here forced by a zero tolerance)."""
    import sanaedit.export.graph_export as folder

    monkeypatch.setattr(folder, "W8A8_DYNAMIC_TOLERANCE", 0.0)
    with caplog.at_level("WARNING", logger="sanaedit.export.graph_export"):
        out = export_model(tiny_model_dir, tmp_path / "o", quant="rest=32,transformer=w8a8", progress=False)
    assert "do not survive int8" in caplog.text and "transformer=8" in caplog.text
    entry = json.loads((out / "model_index.json").read_text())["graphs"]["transformer"]
    assert entry["bits"] == 8 and entry["w8a8_rejected"]["tolerance"] == 0.0
    assert entry["w8a8_rejected"]["rel_l2_error"] > 0 and "MatMulNBits" in entry["quant"]["scheme"]
    ops = {n.op_type for n in onnx.load(str(out / entry["file"])).graph.node}
    assert "MatMulNBits" in ops and "DynamicQuantizeMatMul" not in ops
    photo = Image.new("RGB", (40, 30), (200, 60, 20))
    assert load_pipeline(out)(photo, generator=torch.Generator().manual_seed(0)).images[0].size == (40, 30)


def test_a_calibrated_w8a8_graph_that_loses_the_picture_gets_8_bit_weights(tiny_pipe, tmp_path, monkeypatch, caplog):
    """The same fallback for a calibrated (DC-AE) graph, one graph alone: its entry says why, and has none of an
    accepted w8a8 graph's keys (here forced by a zero tolerance)."""
    import sanaedit.export.graph_export as folder
    from sanaedit.export.calibrate import autoencoder_calibration

    monkeypatch.setattr(folder, "W8A8_TOLERANCE", 0.0)
    spec = next(s for s in graph_specs(tiny_pipe) if s.name == "vae_decoder")
    calibration = autoencoder_calibration(tiny_pipe, [spec.name])[spec.name]
    with caplog.at_level("WARNING", logger="sanaedit.export.graph_export"):
        entry = folder.export_graph(spec, tmp_path, "onnx", "w8a8", calibration)
    assert "do not survive int8" in caplog.text and "vae_decoder=8" in caplog.text and "held-out photo" in caplog.text
    assert entry["bits"] == 8 and entry["w8a8_rejected"]["tolerance"] == 0.0
    assert entry["w8a8_rejected"]["rel_l2_error"] > 0
    assert "rel_l2_error" not in entry and "activation_bits" not in entry["quant"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / entry["file"])).graph.node}
    assert "QLinearConv" not in ops and "DequantizeLinear" in ops  # float convs on 8-bit weights
    assert entry["max_rel_error"] < 0.1  # measured on the example inputs, as any `=8` graph is


def test_w8a8_check_inputs_are_fixed(tiny_pipe):
    """What the w8a8 check compares on is fixed: the example inputs come from their own seeded generator whatever was
    drawn before, and the calibration photos are scikit-image's whichever other packages are installed."""
    from sanaedit.export.calibrate import CALIBRATION_PHOTOS, calibration_photos
    from sanaedit.image.photos import SKIMAGE_PHOTOS

    with torch.random.fork_rng():  # the global generator as the tests after this one expect it
        torch.manual_seed(1)
        first = {s.name: s.example for s in graph_specs(tiny_pipe)}
        torch.manual_seed(2)
        torch.randn(100)
        again = {s.name: s.example for s in graph_specs(tiny_pipe)}
    for name, example in first.items():
        assert all(torch.equal(a, b) for a, b in zip(example, again[name])), name

    held_out, photos = calibration_photos()
    assert held_out == SAMPLE_PHOTO and len(photos) == CALIBRATION_PHOTOS
    names = [p.name for p in photos]
    assert names == sorted(names) and set(names) <= set(SKIMAGE_PHOTOS)
