"""Export -> run -> compare, for every sub-model, on ONNX Runtime and MNN (tiny model, fp32 and 8-bit weights)."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.backends.mnn_graph import MnnGraph
from sanaedit.backends.ort_graph import OrtGraph
from sanaedit.errors import ModelFolderError
from sanaedit.export import export_model, parse_quant
from sanaedit.export.graphs import graph_specs, release_specs
from sanaedit.load import load_pipeline
from sanaedit.pipeline import SanaEditPipeline

pytest.importorskip("onnxruntime")
pytest.importorskip("MNN")

# 4-bit blocks of 64 for the LLM (the published scheme); 8 bits per channel for the rest
QUANT_BOUND = {
    "llm": 0.1,
    "connector": 0.01,
    "projector": 0.01,
    "transformer": 0.01,
    "vae_encoder": 0.05,
    "vae_decoder": 0.05,
}
CASES = [("onnx", None), ("onnx", "llm=4,rest=8"), ("mnn", None), ("mnn", "llm=4,rest=8")]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{'q8' if c[1] else 'fp32'}")
def exported(request, tiny_model_dir, tmp_path_factory):
    fmt, quant = request.param
    if (fmt, quant) == ("mnn", "llm=4,rest=8"):  # shared with tests/formats/test_release.py
        return fmt, quant, request.getfixturevalue("tiny_mnn_release")
    out = tmp_path_factory.getbasetemp() / "exports" / f"{fmt}-{'q' if quant else 'f'}"
    export_model(tiny_model_dir, out, fmt=fmt, quant=quant, progress=False)
    return fmt, quant, out


def _graph(folder, manifest, name):
    entry = manifest["graphs"][name]
    if manifest["format"] == "onnx":
        return OrtGraph(folder / entry["file"], threads=1)
    return MnnGraph(folder / entry["file"], entry["inputs"], entry["outputs"], threads=1)


def _rel_l2(out, ref: torch.Tensor) -> float:
    out = torch.as_tensor(out)  # graphs return NumPy
    return float((out - ref).norm() / ref.norm())


def _psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _fresh_inputs(spec, batch: int) -> tuple[torch.Tensor, ...]:
    """Inputs the exporter never saw: another batch size (when free), new values, and a padded text mask."""
    gen = torch.Generator().manual_seed(123)
    if not spec.dynamic_batch:
        batch = 1
    inputs = []
    for name, example in zip(spec.inputs, spec.example):
        shape = (batch, *example.shape[1:])
        if name in spec.length_inputs:
            shape = (batch, example.shape[1] + 4, *example.shape[2:])  # a longer prompt than at export
        if name == "attention_mask":  # the LLM's: right-padded text, then the meta-queries (never masked)
            mask = torch.ones(shape)
            mask[0, 3 : shape[1] - spec.module.num_queries] = 0
            inputs.append(mask)
        elif name == "inputs_embeds":
            inputs.append(torch.randn(shape, generator=gen) * 0.05)
        elif name == "timestep":
            inputs.append(torch.rand(batch, generator=gen) * 1000)
        elif name == "encoder_attention_mask":
            mask = torch.ones(shape)
            mask[0, -5:] = 0  # padded text keys must stay masked in the graph
            inputs.append(mask)
        elif name in ("pixels", "image"):
            inputs.append(torch.rand(shape, generator=gen) * 2 - 1)
        else:
            inputs.append(torch.randn(shape, generator=gen))
    return tuple(inputs)


@pytest.mark.parametrize("name", ["llm", "connector", "projector", "transformer", "vae_encoder", "vae_decoder"])
@pytest.mark.parametrize("batch", [1, 2])
def test_every_graph_matches_pytorch(exported, tiny_pipe, name, batch):
    fmt, quant, folder = exported
    if fmt == "mnn" and name == "llm":
        pytest.skip("the MNN LLM is llmexport's graph: tests/formats/test_release.py checks it against transformers")
    manifest = json.loads((folder / "model_index.json").read_text())
    specs = {s.name: s for s in (graph_specs(tiny_pipe) if fmt == "onnx" else release_specs(tiny_pipe))}
    spec = specs[name]
    assert manifest["graphs"][name]["inputs"] == spec.inputs
    inputs = _fresh_inputs(spec, batch)
    with torch.no_grad():
        ref = spec.module(*inputs)
    out = torch.from_numpy(_graph(folder, manifest, name)(*inputs))  # graphs return NumPy
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    error = _rel_l2(out, ref)
    if quant is None:
        assert error < 1e-4, f"{fmt} fp32 {name}: relative error {error:.2e}"
    else:  # > 0: really quantized; the DiT within 1% is the deployment target, DC-AE's random deep convs add up
        assert 0 < error < QUANT_BOUND[name], f"{fmt} quantized {name}: relative error {error:.2e}"


def test_onnx_8_bit_graphs_compute_in_int8_with_their_pointwise_convs_as_matmuls(exported):
    """The quantized ONNX DiT keeps no 1x1 Conv (they became MatMuls, quantized with the rest) and every MatMulNBits
    computes in int8 (accuracy_level 4); the other convs (the Mix-FFN's depthwise 3x3) keep 8-bit weights behind a
    DequantizeLinear. Its output is checked against PyTorch in test_every_graph_matches_pytorch."""
    import onnx

    fmt, quant, folder = exported
    if fmt != "onnx" or quant is None:
        pytest.skip("the ONNX 8-bit export")
    manifest = json.loads((folder / "model_index.json").read_text())
    graph = onnx.load(str(folder / manifest["graphs"]["transformer"]["file"])).graph
    weights = {init.name: list(init.dims) for init in graph.initializer}
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] in dequantized for n in convs)  # depthwise convs: 8-bit weights, float compute
    for conv in convs:
        kernel = weights.get(conv.input[1] + "_q", [0, 0, 0, 0])[2:]
        assert kernel != [1, 1], conv.name
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) >= 4 and not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert {onnx.helper.get_attribute_value(a) for n in nbits for a in n.attribute if a.name == "accuracy_level"} == {4}
    assert manifest["graphs"]["transformer"]["quant"]["pointwise_convs_as_matmul"] > 0


def test_onnx_graphs_are_saved_as_onnxruntime_optimizes_them(exported, tmp_path):
    """ONNX graphs are stored after ORT's extended-level optimizer (so a session has nothing left to fuse at load):
    optimizing the stored DiT again changes no node. Its output is checked in test_every_graph_matches_pytorch."""
    import onnx

    from sanaedit.export.onnx_export import optimize_for_onnxruntime

    fmt, _, folder = exported
    if fmt != "onnx":
        pytest.skip("ONNX Runtime's graphs")
    manifest = json.loads((folder / "model_index.json").read_text())
    assert all(entry.get("optimized") for entry in manifest["graphs"].values()), manifest["graphs"].keys()
    stored = folder / manifest["graphs"]["transformer"]["file"]
    again = tmp_path / stored.name
    shutil.copy(stored, again)
    optimize_for_onnxruntime(again)
    nodes = [sorted(n.op_type for n in onnx.load(str(p)).graph.node) for p in (stored, again)]
    assert nodes[0] == nodes[1]  # the same nodes (the optimizer may list them in another order)


def test_published_layout_and_names(exported):
    fmt, quant, folder = exported
    manifest = json.loads((folder / "model_index.json").read_text())
    ext = ".onnx" if fmt == "onnx" else ".mnn"
    for name in ["connector", "projector", "transformer", "vae_encoder", "vae_decoder"]:
        assert (folder / f"{name}{ext}").stat().st_size > 0
        assert manifest["graphs"][name]["bits"] == parse_quant(quant)[name]
    assert manifest["graphs"]["transformer"]["inputs"] == [
        "sample",
        "encoder_hidden_states",
        "timestep",
        "encoder_attention_mask",
        "ref_latents",
    ]
    assert manifest["graphs"]["transformer"]["outputs"] == ["noise_pred"]
    if fmt == "mnn":  # the published release's layout, file by file: tests/formats/test_release.py
        assert manifest["layout"] == "mnn-release" and manifest["graphs"]["llm"]["file"] == "llm/llm.mnn"
        assert manifest["graphs"]["vae_encoder"]["inputs"] == ["image"]
        assert manifest["llm"]["bits"] == manifest["graphs"]["llm"]["bits"] == (4 if quant else 16)
        return
    assert manifest["graphs"]["llm"]["file"] == f"llm/llm{ext}"
    assert manifest["graphs"]["llm"]["inputs"] == ["inputs_embeds", "attention_mask"]
    for name in [f"llm{ext}", "embeddings.safetensors", "meta_queries.safetensors", "tokenizer.json"]:
        assert (folder / "llm" / name).stat().st_size > 0, name
    assert not list((folder / "llm").glob("model*.safetensors"))  # no PyTorch copy of the LLM
    assert (folder / "prompt_cache.safetensors").is_file()
    assert manifest["llm"]["bits"] == manifest["graphs"]["llm"]["bits"] == (4 if quant else None)


def test_exported_text_path_matches_pytorch(exported, tiny_pipe):
    """Tokenizer + embedding rows + meta-queries + LLM graph, for prompts of different lengths in one batch."""
    fmt, quant, folder = exported
    prompts = ["a cat", "turn the sky purple, make it night, add snow"]
    encoder = load_pipeline(folder).text_encoder
    with torch.no_grad():
        ref = tiny_pipe.text_encoder.llm_features(prompts)
    if fmt == "mnn":  # MNN tokenizer, tied embeddings and llmexport's graph; "fp32" is fp16 there (its finest)
        features = encoder.llm_features(prompts)
    else:
        llm = encoder.load_graph("llm")
        features = llm(*encoder.llm_inputs(prompts))
    bound = (1e-4 if fmt == "onnx" else 1e-3) if quant is None else QUANT_BOUND["llm"]
    assert features.shape == ref.shape
    assert _rel_l2(features, ref) < bound
    hidden, mask = encoder(prompts)
    want, _ = tiny_pipe.text_encoder(prompts)
    assert _rel_l2(hidden, want) < (bound if quant is None else 0.1) and mask.shape == want.shape[:2]


def test_pipeline_on_exported_graphs_matches_torch(exported, tiny_model_dir):
    fmt, quant, folder = exported
    pipe = load_pipeline(folder)
    assert pipe.backend == ("onnxruntime" if fmt == "onnx" else "mnn")
    ref = SanaEditPipeline.from_pretrained(tiny_model_dir)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8))
    for kwargs in [{}, {"guidance_scale": 1.0}, {"prompt": "turn the sky purple"}]:
        out = pipe(photo, generator=torch.Generator().manual_seed(0), **kwargs).images[0]
        want = ref(photo, generator=torch.Generator().manual_seed(0), **kwargs).images[0]
        assert out.size == photo.size
        if quant is None:
            diff = np.abs(np.asarray(out, dtype=int) - np.asarray(want, dtype=int))
            assert diff.max() <= 2, kwargs  # float rounding, then uint8
        else:
            assert _psnr(out, want) > 25, kwargs  # random tiny weights; real ones: see bench/edit_speed.py
    # a prompt outside the cache ran the LLM, which is released as soon as its features exist
    assert "turn the sky purple" in pipe.prompt_cache and not pipe.text_encoder_loaded


def test_text_to_image_on_exported_graphs(exported, tiny_model_dir):
    _, quant, folder = exported
    out = load_pipeline(folder)(None, generator=torch.Generator().manual_seed(1)).images[0]
    want = SanaEditPipeline.from_pretrained(tiny_model_dir)(None, generator=torch.Generator().manual_seed(1)).images[0]
    assert out.size == want.size
    assert _psnr(out, want) > (45 if quant is None else 25)


def test_broken_exports_say_what_is_wrong(exported, tmp_path):
    fmt, _, folder = exported
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    graph = json.loads((broken / "model_index.json").read_text())["graphs"]["transformer"]["file"]
    if fmt == "mnn":
        (broken / "llm" / "tokenizer.mtok").unlink()
        with pytest.raises(ModelFolderError, match="tokenizer"):
            load_pipeline(broken)
    else:
        (broken / "llm" / "embeddings.safetensors").unlink()
        with pytest.raises(ModelFolderError, match="embeddings"):
            load_pipeline(broken)(None, prompt="a prompt outside the cache")
    (broken / graph).unlink()
    with pytest.raises(ModelFolderError, match="transformer"):
        load_pipeline(broken)
    other = "mnn" if fmt == "onnx" else "onnxruntime"
    with pytest.raises(ValueError, match="cannot run"):
        load_pipeline(folder, backend=other)


def test_torch_folder_refuses_a_graph_backend(tiny_model_dir):
    with pytest.raises(ValueError, match="sanaedit export"):
        load_pipeline(tiny_model_dir, backend="onnxruntime")


@pytest.mark.parametrize("text", ["llm=3", "llm", "vae=8", "rest=16"])
def test_bad_quant_spec(text):
    with pytest.raises(ValueError, match="--quant"):
        parse_quant(text)


def test_parse_quant_defaults():
    assert parse_quant("llm=4,rest=8") == {
        "llm": 4,
        "connector": 8,
        "projector": 8,
        "transformer": 8,
        "vae_encoder": 8,
        "vae_decoder": 8,
        "tiny_vae_encoder": 8,  # the light autoencoder's graphs, when a model has one
        "tiny_vae_decoder": 8,
    }
    assert parse_quant("transformer=8") == {**dict.fromkeys(parse_quant(None)), "transformer": 8}
    assert parse_quant("rest=8,vae_decoder=32")["vae_decoder"] is None


def test_large_models_keep_weights_in_one_side_file(tiny_model_dir, tmp_path, monkeypatch):
    """Over protobuf's 2 GB limit (lowered here) a graph keeps its weights in one `.data` file beside it, the folder
    holds nothing else, and the graphs still run. (The per-tensor files the TorchScript exporter writes above the
    real 2 GB were seen with the 0.6B bench model; that size is too big for a unit test.)"""
    import sanaedit.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "ONNX_SIZE_LIMIT", 20_000)
    out = export_model(tiny_model_dir, tmp_path / "big", fmt="onnx", progress=False)
    graphs = ["connector", "projector", "transformer", "vae_encoder", "vae_decoder"]
    names = {p.name for p in out.iterdir()}
    assert {"transformer.onnx.data", "vae_decoder.onnx.data"} <= names  # both exporters' paths
    assert names - {f"{g}.onnx.data" for g in graphs} == {f"{g}.onnx" for g in graphs} | {
        "llm",
        "model_index.json",
        "prompt_cache.safetensors",
    }
    ref = SanaEditPipeline.from_pretrained(tiny_model_dir)
    photo = Image.new("RGB", (40, 30), (20, 120, 220))
    out_image = load_pipeline(out)(photo, generator=torch.Generator().manual_seed(0)).images[0]
    want = ref(photo, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.abs(np.asarray(out_image, dtype=int) - np.asarray(want, dtype=int)).max() <= 2


def test_cli_edit_picks_the_runtime_from_the_folder(exported, tmp_path, capsys):
    from sanaedit.apps.cli import main
    from sanaedit.load import SAMPLE_PHOTO

    fmt, _, folder = exported
    out = tmp_path / "comic.png"
    assert main(["edit", str(SAMPLE_PHOTO), "-o", str(out), "--model", str(folder), "--steps", "2", "-q"]) == 0
    assert Image.open(out).size == Image.open(SAMPLE_PHOTO).size
    wrong = "mnn" if fmt == "onnx" else "onnxruntime"
    args = ["edit", str(SAMPLE_PHOTO), "-o", str(tmp_path / "x.png"), "--model", str(folder), "--backend", wrong]
    assert main(args) == 1
    assert "cannot run" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


# Runs the CLI in a process where torch, diffusers and transformers cannot be imported, and fails if any of them
# (or anything from them) was loaded by the end: an exported folder's edit needs only its runtime, NumPy and PIL.
WITHOUT_TORCH = """
import sys
BLOCKED = ("torch", "diffusers", "transformers")
for name in BLOCKED:
    sys.modules[name] = None  # `import torch` now raises ImportError
from sanaedit.apps.cli import main
status = main(sys.argv[1:])
loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in BLOCKED)
assert not loaded, loaded
sys.exit(status)
"""


def test_exported_folder_edits_without_torch(exported, tmp_path):
    """The CLI edits with an exported folder without importing torch (its import alone is ~1 s of a CLI edit, and
    a deployment need not install it), with the model's cached prompt and with a new one (the LLM graph, tokenized
    by `tokenizers`), and writes what the pipeline makes in-process from the same seed (noise.Generator draws
    torch.randn's numbers)."""
    import subprocess
    import sys

    from sanaedit.load import SAMPLE_PHOTO

    _, _, folder = exported
    pipe = load_pipeline(folder)
    for extra in ([], ["--prompt", "turn the sky purple"]):
        out = tmp_path / f"out{len(extra)}.png"
        args = ["edit", str(SAMPLE_PHOTO), "-o", str(out), "--model", str(folder), "--steps", "2", "--seed", "5"]
        command = [sys.executable, "-c", WITHOUT_TORCH, *args, *extra, "-q"]
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        prompt = {"prompt": extra[1]} if extra else {}
        want = pipe(SAMPLE_PHOTO, num_inference_steps=2, generator=torch.Generator().manual_seed(5), **prompt)
        assert np.array_equal(np.asarray(Image.open(out)), np.asarray(want.images[0])), extra
    info = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "info", str(folder)], capture_output=True, text=True)
    assert info.returncode == 0 and "pipeline defaults" in info.stdout, info.stderr[-3000:]


def test_cli_export_errors_name_the_problem(tiny_model_dir, tmp_path, capsys):
    from sanaedit.apps.cli import main

    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "model folder not found" in capsys.readouterr().err
    assert main(["export", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--quant", "llm=5"]) == 1
    assert "--quant" in capsys.readouterr().err and not (tmp_path / "o").exists()


def _tokenizer_of(model: str):
    """A transformers tokenizer around a bare `tokenizers` model of that kind."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = ["<pad>", "<unk>", "sky", "purple", "night"]
    if model == "Unigram":
        tok = Tokenizer(models.Unigram([(t, -float(i)) for i, t in enumerate(vocab)], unk_id=1))
    else:
        tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


@pytest.mark.parametrize("model", ["Unigram", "WordLevel"])
def test_mnn_export_refuses_a_tokenizer_it_cannot_write_before_any_graph(model, tiny_pipe, tmp_path, monkeypatch):
    """The MNN-LLM tokenizer file is written for BPE and WordPiece models: another is refused in one line naming it,
    before the first graph is converted (issue 26: it failed in the LLM's export, after every other graph)."""
    import sanaedit.export.graph_export as graph_export

    def no_graphs(*args, **kwargs):
        raise AssertionError("a graph was converted")

    monkeypatch.setattr(graph_export, "export_graph", no_graphs)
    monkeypatch.setattr(tiny_pipe.text_encoder, "tokenizer", _tokenizer_of(model))
    out = tmp_path / "out" / "mnn"
    with pytest.raises(ValueError, match=f"a {model} model") as err:
        export_model(None, out, fmt="mnn", progress=False, pipe=tiny_pipe)
    assert "\n" not in str(err.value) and "BPE and WordPiece" in str(err.value)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # nothing written, not even a temporary folder


def test_cli_mnn_export_names_a_tokenizer_it_cannot_write(tiny_model_dir, tmp_path, capsys):
    from sanaedit.apps.cli import main

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / "llm" / name).unlink(missing_ok=True)
    _tokenizer_of("WordLevel").save_pretrained(model / "llm")
    assert main(["export", str(model), "--format", "mnn", "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "a WordLevel model" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
