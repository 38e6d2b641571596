"""The published MNN release, both ways (issue 15): `export --format mnn` writes its layout exactly (the engine's
file and I/O names, the LLM through MNN's own llmexport), and a folder of the release's files alone (no
model_index.json, no prompt cache, no Hugging Face tokenizer) runs from Python. On the tiny model: the real release
(1.66 GB) is not available offline; docs/deployment.md says what needs it."""

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("MNN")
if importlib.util.find_spec("llmexport") is None:  # (importing it needs its folder on sys.path)
    pytest.skip("llmexport is not installed (pip install 'sanaedit[export]')", allow_module_level=True)

from sanaedit.backends.mnn_graph import MnnGraph  # noqa: E402
from sanaedit.backends.mnn_inspect import inspect_graphs  # noqa: E402
from sanaedit.backends.mnn_llm import MnnLlm  # noqa: E402
from sanaedit.errors import ModelFolderError  # noqa: E402
from sanaedit.export.llm_mnn import export_llm_mnn  # noqa: E402
from sanaedit.formats.index import RELEASE_KIND, folder_kind
from sanaedit.formats.release_files import (  # noqa: E402
    ENGINE_PROMPT,
    GRAPHS,
    LLM_GRAPH,
    EmbeddingTable,
    graph_files,
    llm_configs,
)
from sanaedit.load import load_pipeline  # noqa: E402

LLM_FILES = ["llm/config.json", "llm/llm_config.json", "llm/llm.mnn", "llm/llm.mnn.weight", "llm/tokenizer.mtok"]
RELEASE = {*graph_files(), *LLM_FILES, "llm/meta_queries.mnn"}  # tied embeddings: no embeddings_bf16.bin


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _release_only(src: Path, dst: Path) -> Path:
    """The release's files alone, as a download of MNN-Sana-Edit-V2 holds them."""
    for name in RELEASE:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, dst / name)
    return dst


def _photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8))


def _rel_l2(out, ref) -> float:
    out, ref = torch.as_tensor(out), torch.as_tensor(ref)  # graphs return NumPy
    return float((out - ref).norm() / ref.norm())


@pytest.fixture
def release_only(tiny_mnn_release, tmp_path):
    return _release_only(tiny_mnn_release, tmp_path / "MNN-Sana-Edit-V2")


# ------------------------------------------------------------------------------------------ the exact layout
def test_export_writes_the_release_layout_with_the_engines_names(tiny_mnn_release, tiny_pipe):
    import MNN.expr as mnn_expr
    import MNN.nn as mnn_nn

    assert _files(tiny_mnn_release) == RELEASE | {"model_index.json", "prompt_cache.safetensors"}
    config = json.loads((tiny_mnn_release / "llm" / "config.json").read_text())
    llm_config = json.loads((tiny_mnn_release / "llm" / "llm_config.json").read_text())
    assert config["llm_model"] == "llm.mnn" and config["tokenizer_file"] == "tokenizer.mtok"
    assert llm_config["tie_embeddings"][3:] == [4, 32]  # 4-bit; blocks of 64, or the 32-wide test LLM's width
    manifest = json.loads((tiny_mnn_release / "model_index.json").read_text())
    assert manifest["layout"] == "mnn-release" and manifest["llm"]["tokenizer_matches"] is True
    assert manifest["llm"]["errors"]["hidden_states_rel_l2"] < 0.1
    infos = inspect_graphs([tiny_mnn_release / io.file for io in [*GRAPHS.values(), LLM_GRAPH]])
    for io in [*GRAPHS.values(), LLM_GRAPH]:
        info = infos[tiny_mnn_release / io.file]
        assert list(info.inputs) == io.inputs, io.file
        assert set(io.outputs) <= set(info.outputs), io.file
        assert info.weight_problem() is None and (tiny_mnn_release / (io.file + ".weight")).stat().st_size > 0
        assert info.bits_text == ("4-bit" if io is LLM_GRAPH else "8-bit"), io.file
    assert infos[tiny_mnn_release / LLM_GRAPH.file].outputs == ["logits", "hidden_states"]
    for name, io in GRAPHS.items():  # every graph loads and runs under the names the engine passes to Module::load
        dims = infos[tiny_mnn_release / io.file].inputs
        out = MnnGraph(tiny_mnn_release / io.file, io.inputs, io.outputs, threads=1)(
            *(torch.rand(*dims[n]) for n in io.inputs)
        )
        assert np.isfinite(out).all(), name
    llm = mnn_nn.load_module_from_file(
        str(tiny_mnn_release / LLM_GRAPH.file), LLM_GRAPH.inputs, ["logits", "hidden_states"]
    )  # as the engine loads it (hidden_states on)
    assert llm is not None
    queries = mnn_expr.load_as_list(str(tiny_mnn_release / "llm" / "meta_queries.mnn"))
    assert len(queries) == 1 and queries[0].shape == list(tiny_pipe.text_encoder.meta_queries.shape)
    got = np.array(queries[0].read(), dtype=np.float32).reshape(queries[0].shape)
    assert np.array_equal(got, tiny_pipe.text_encoder.meta_queries.detach().numpy())


def test_llm_hidden_states_match_transformers(tiny_mnn_release, tiny_model_dir, tiny_pipe, tmp_path):
    """llm.mnn's final-norm hidden states of [prompt tokens ; meta-queries] against transformers, fp16 (the finest
    llmexport writes) and 4-bit blocks (the published scheme); and a padded prompt gives the same query rows."""
    import MNN.expr as mnn_expr

    fp16 = export_llm_mnn(tiny_model_dir / "llm", tmp_path / "llm-fp16", None, 32)
    encoder = tiny_pipe.text_encoder
    queries = encoder.meta_queries.detach().float()
    ids = encoder.tokenize(["turn the sky purple, make it night"])[0][0]
    x = torch.cat([encoder.llm.get_input_embeddings().weight[ids].detach().float(), queries])
    with torch.no_grad():
        want = encoder.llm(inputs_embeds=x[None], output_hidden_states=True).hidden_states[-1][0, -len(queries) :]
    errors = {}
    for name, folder in [("fp16", fp16), ("4-bit", tiny_mnn_release / "llm")]:
        got = torch.from_numpy(MnnLlm(folder / "llm.mnn", threads=1)(x, len(queries)))
        errors[name] = _rel_l2(got, want)
    print(f"LLM hidden states vs transformers, relative L2: {errors}")
    assert errors["fp16"] < 1e-3
    assert 0 < errors["4-bit"] < 0.1  # random tiny weights; real Qwen3-0.6B: docs/deployment.md
    # the engine pads the shorter prompt of its CFG batch: padded keys masked, positions cumsum(mask) - 1
    llm = MnnLlm(fp16 / "llm.mnn", threads=1)
    pad = 3
    padded = torch.cat([x[: len(ids)], torch.randn(pad, x.shape[1]), queries])
    n = len(padded)
    mask = np.triu(np.full((n, n), np.finfo(np.float32).min, np.float32), 1)
    mask[:, len(ids) : len(ids) + pad] = np.finfo(np.float32).min
    valid = np.r_[np.ones(len(ids)), np.zeros(pad), np.ones(len(queries))]
    positions = np.clip(np.cumsum(valid) - 1, 0, None).astype(np.int32)[None]
    arrays = [padded.numpy()[:, None, :].copy(), mask[None, None].copy(), positions, np.array([-32], np.int32)]
    kinds = [mnn_expr.float, mnn_expr.float, mnn_expr.int, mnn_expr.int]
    out = llm.module.forward([mnn_expr.const(a, list(a.shape), mnn_expr.NCHW, k) for a, k in zip(arrays, kinds)])
    out = out[0] if isinstance(out, list) else out
    rows = torch.from_numpy(np.array(out.read(), dtype=np.float32).reshape(-1, x.shape[1]))
    assert _rel_l2(rows, llm(x, len(queries))) < 1e-5


# --------------------------------------------------------------------------------- the release's files alone
def test_release_files_alone_run_with_the_engines_defaults_and_match_the_full_export(tiny_mnn_release, release_only):
    assert folder_kind(release_only) == RELEASE_KIND
    alone, full = load_pipeline(release_only), load_pipeline(tiny_mnn_release)
    assert alone.backend == "mnn" and alone.prompt_cache == {}
    cfg = alone.config
    assert (cfg.schedule, cfg.guidance_scale, cfg.negative_prompt, cfg.prompt) == ("published", 4.5, "", ENGINE_PROMPT)
    assert cfg.resolution == full.config.resolution == 64  # what the graphs were exported for (512 for the release)
    photo = _photo()
    for kwargs in [
        {"prompt": "turn the sky purple", "negative_prompt": "blurry, dark"},
        {"prompt": "a watercolor painting", "guidance_scale": 1.0},
    ]:
        run = {"num_inference_steps": 3, "schedule": "published", "guidance_scale": 4.5, **kwargs}
        a = alone(photo, generator=torch.Generator().manual_seed(0), **run).images[0]
        b = full(photo, generator=torch.Generator().manual_seed(0), **run).images[0]
        assert a.size == photo.size
        assert np.array_equal(np.asarray(a), np.asarray(b)), kwargs
    assert not alone.text_encoder_loaded  # the LLM was released once the new prompts' features existed


def test_release_prompt_cache_is_computed_once_and_stored(release_only, tmp_path, monkeypatch):
    import sanaedit.formats.release as release

    photo = _photo()
    first = load_pipeline(release_only)(photo, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert (release_only / "prompt_cache.safetensors").is_file()  # beside the release
    pipe = load_pipeline(release_only)
    assert set(pipe.prompt_cache) == {ENGINE_PROMPT, ""}

    def no_llm(*args, **kwargs):
        raise AssertionError("the LLM ran for a stored prompt")

    monkeypatch.setattr(release, "MnnLlm", no_llm)
    again = pipe(photo, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    monkeypatch.undo()
    # a read-only release: the user's cache folder
    readonly = _release_only(release_only, tmp_path / "readonly")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(release, "_writable", lambda folder: Path(folder) != readonly)
    load_pipeline(readonly)(photo, num_inference_steps=1)
    assert not (readonly / "prompt_cache.safetensors").exists()
    stored = list((tmp_path / "cache" / "sanaedit" / "releases").glob("*/prompt_cache.safetensors"))
    assert len(stored) == 1 and set(load_pipeline(readonly).prompt_cache) == {ENGINE_PROMPT, ""}
    # files changed since: the stored conditioning is not theirs, so it is computed again
    config = readonly / "llm" / "llm_config.json"
    config.write_text(config.read_text() + "\n")
    assert load_pipeline(readonly).prompt_cache == {}


def _separate_embeddings(folder: Path) -> torch.Tensor:
    """The tied table moved into llm/embeddings_bf16.bin as llmexport's `seperate_embed` lays it out (raw bf16,
    [vocab, hidden] row-major; no `tie_embeddings` in llm_config.json). export_llm_mnn cannot pass that option, so
    the rows are the tied 4-bit rows dequantised, then rounded to bf16 (llmexport would round the unquantised
    weights). Returns the tied rows, float32."""
    config, llm_config = llm_configs(folder)
    table = EmbeddingTable(folder, config, llm_config)
    tied = torch.from_numpy(table.rows(list(range(table.count))))
    (folder / "llm" / "embeddings_bf16.bin").write_bytes(tied.bfloat16().view(torch.int16).numpy().tobytes())
    del llm_config["tie_embeddings"]
    (folder / "llm" / "llm_config.json").write_text(json.dumps(llm_config, indent=4))
    return tied


def test_release_with_separate_bf16_embeddings_matches_the_tied_one(release_only, tmp_path, monkeypatch):
    import sanaedit.backends as backends

    # float compute, so that only the tables differ: MNN's low-memory mode (int8 activations) would add its own
    # rounding, 6.5e-3 here, against 5.3e-2 for the wrong table below
    monkeypatch.setattr(backends, "MNN_LOW_MEMORY", ())
    separate = _release_only(release_only, tmp_path / "separate")
    tied = _separate_embeddings(separate)
    table = EmbeddingTable(separate, *llm_configs(separate))
    assert (table.bits, table.count, table.path.name) == ("bf16", len(tied), "embeddings_bf16.bin")
    rows = torch.from_numpy(table.rows(list(range(len(tied)))))
    assert torch.equal(rows, tied.bfloat16().float())  # what was written, row for row
    a, b = load_pipeline(release_only), load_pipeline(separate)
    prompt, photo = "turn the sky purple", _photo()
    # bf16 keeps 8 mantissa bits: rows within 2^-9 relative of the 4-bit ones (1.7e-3 in L2). Measured: conditioning
    # 6e-5 relative L2 apart, images identical; a wrong table (rows shifted by one id) is 5e-2 apart.
    assert _rel_l2(b.encode_prompt([prompt])[0], a.encode_prompt([prompt])[0]) < 1e-3
    run = {"prompt": prompt, "num_inference_steps": 3}
    images = [p(photo, generator=torch.Generator().manual_seed(0), **run).images[0] for p in (a, b)]
    diff = np.abs(np.asarray(images[0], np.int16) - np.asarray(images[1], np.int16))
    assert images[1].size == photo.size and diff.max() <= 1, diff.max()


def test_a_partial_download_names_every_missing_file(release_only, tmp_path, capsys):
    from sanaedit.apps.cli import main

    gone = ["transformer.mnn.weight", "vae_encoder.mnn", "llm/tokenizer.mtok", "llm/meta_queries.mnn"]
    for name in gone:
        (release_only / name).unlink()
    with pytest.raises(ModelFolderError) as err:
        load_pipeline(release_only)
    message = str(err.value)
    assert "\n" not in message and "incomplete" in message
    assert all(name in message for name in gone), message
    out = tmp_path / "out.png"
    assert main(["edit", str(_photo_file(tmp_path)), "-o", str(out), "--model", str(release_only), "-q"]) == 1
    assert "transformer.mnn.weight" in capsys.readouterr().err and not out.exists()


def _photo_file(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    _photo().save(path)
    return path


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("vae_decoder.mnn", "truncate"),
        ("transformer.mnn.weight", "truncate"),
        ("llm/llm.mnn.weight", "truncate"),
        ("llm/meta_queries.mnn", "garbage"),
        ("llm/llm_config.json", "garbage"),
        ("llm/tokenizer.mtok", "garbage"),
    ],
)
def test_a_file_that_does_not_parse_is_named(release_only, name, damage):
    path = release_only / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x00garbage{" * 40)
    with pytest.raises(ModelFolderError) as err:
        load_pipeline(release_only)
    assert Path(name).name in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_info_describes_the_release(release_only, capsys):
    from sanaedit.apps.cli import main

    assert main(["info", str(release_only)]) == 0
    out = capsys.readouterr().out
    for text in [
        "llm_out -> connector_out",
        "connector_out -> prompt_embeds",
        "sample, encoder_hidden_states, timestep, encoder_attention_mask, ref_latents -> noise_pred",
        "image -> latent",
        "latent_sample -> sample",
        "[8-bit]",
        "[4-bit]",
        "tokenizer.mtok",
        "tied inside llm/llm.mnn.weight",
        "1,662,741,606",
        "schedule published",
    ]:
        assert text in out, text


def test_edit_from_the_command_line_with_the_release_files_alone(release_only, tmp_path):
    from sanaedit.apps.cli import main

    out = tmp_path / "out.png"
    argv = ["edit", str(_photo_file(tmp_path)), "-o", str(out), "--model", str(release_only), "--steps", "2", "-q"]
    assert main(argv) == 0
    with Image.open(out) as image:
        assert (image.format, image.size) == ("PNG", _photo().size)
        assert not np.array_equal(np.asarray(image.convert("RGB")), np.asarray(_photo()))  # edited, not copied


# --------------------------------------------------------------------------------------------- the tokenizers
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ASCII_PROMPTS = [
    "<|im_start|>user\nGenerate an image: turn the sky purple, make it night<|im_end|>\n<|im_start|>assistant\n"
    "<|vision_bos|>",
    ENGINE_PROMPT,
    "it's 12:30 -- (hello) [world] {x}; I'LL see   you\t\tthere\n\n\nok 2026",
    "",
]
OTHER_PROMPTS = [
    "héllo wörld, Ångström \u212b, 日本語のテキスト, emoji 🎨🌙 façade naïve",
    "x<|im_end|>y <|endoftext|>",
]


def _qwen_shaped_tokenizer(folder: Path) -> Path:
    """A byte-level BPE built the way Qwen's tokenizer.json is (NFC; Qwen's split regex then ByteLevel without a
    regex; special tokens added after the vocabulary), trained offline on a small corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sanaedit.tools.random_model import _CORPUS

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([*_CORPUS, *ASCII_PROMPTS, *OTHER_PROMPTS] * 4, trainer=trainer)
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return folder


def _write_mnn_tokenizers(source: Path, out: Path) -> dict[str, Path]:
    """tokenizer.mtok, and tokenizer.txt the two ways older llmexport versions wrote it, by llmexport's own code."""
    from sanaedit.export.llm_mnn import llmexport_modules

    tj = json.loads((source / "tokenizer.json").read_text())
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    written = {}
    with llmexport_modules():
        from utils.tokenizer import LlmTokenizer

        tok = LlmTokenizer(str(source), "qwen3")
        for kind, files in [
            ("mtok", None),
            ("huggingface", {"merges.txt": "#version: 0.2\n" + "\n".join(merges)}),
            ("tiktoken", {}),
        ]:
            where = out / kind
            where.mkdir(parents=True)
            model_path = source
            if files is not None:  # no tokenizer.json there: the older tokenizer.txt branches
                model_path = out / f"{kind}-src"
                model_path.mkdir()
                for name, text in files.items():
                    (model_path / name).write_text(text + "\n")
            written[kind] = Path(tok.export(str(where), model_path=str(model_path)))
    return written


@pytest.mark.parametrize("shape", ["tiny", "qwen-shaped"])
def test_both_mnn_tokenizer_formats_read_in_python(shape, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from sanaedit.formats.mnn_tokenizer import HuggingfaceTxtTokenizer, TiktokenTokenizer, load_mnn_tokenizer
    from sanaedit.formats.mnn_tokenizer_pipeline import PipelineTokenizer

    source = tiny_model_dir / "llm" if shape == "tiny" else _qwen_shaped_tokenizer(tmp_path / "qwen")
    hf = AutoTokenizer.from_pretrained(source)
    files = _write_mnn_tokenizers(source, tmp_path / "mnn")
    assert files["mtok"].name == "tokenizer.mtok" and files["huggingface"].name == "tokenizer.txt"
    mtok, txt, tiktoken = (load_mnn_tokenizer(files[k]) for k in ("mtok", "huggingface", "tiktoken"))
    assert (type(mtok), type(txt), type(tiktoken)) == (PipelineTokenizer, HuggingfaceTxtTokenizer, TiktokenTokenizer)
    for text in ASCII_PROMPTS + OTHER_PROMPTS:
        want = hf(text, add_special_tokens=False)["input_ids"]
        assert mtok.encode(text) == want, text  # the current format: tokenizers' pipeline, run the same way
        if shape == "qwen-shaped" and text in ASCII_PROMPTS:  # the engine's ASCII regex is Qwen's on ASCII text
            assert txt.encode(text) == want, text
        for tok in (txt, tiktoken):  # lossless, and special tokens are one id each
            ids = tok.encode(text)
            assert b"".join(tok.decode_id(i) for i in ids) == text.encode(), (type(tok).__name__, text)
            assert tok.encode("<|im_end|>") == [hf.convert_tokens_to_ids("<|im_end|>")]


def test_release_with_tokenizer_txt_matches_the_mtok_one(release_only, tiny_model_dir, tmp_path):
    """An older export: tokenizer.txt (either way llmexport wrote it), no tokenizer_file in config.json."""
    from sanaedit.formats.mnn_tokenizer_pipeline import PipelineTokenizer

    files = _write_mnn_tokenizers(tiny_model_dir / "llm", tmp_path / "tokenizers")
    mtok, photo, prompt = load_pipeline(release_only), _photo(), "turn the sky purple, make it night!"
    want = mtok(photo, prompt=prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images[0]
    for kind in ("huggingface", "tiktoken"):
        folder = _release_only(release_only, tmp_path / kind)
        (folder / "llm" / "tokenizer.mtok").unlink()
        shutil.copy2(files[kind], folder / "llm" / "tokenizer.txt")
        config = json.loads((folder / "llm" / "config.json").read_text())
        del config["tokenizer_file"]
        (folder / "llm" / "config.json").write_text(json.dumps(config))
        txt = load_pipeline(folder)
        assert not isinstance(txt.text_encoder.tokenizer, PipelineTokenizer), kind  # the .txt was read
        assert txt.text_encoder.token_ids(prompt) == mtok.text_encoder.token_ids(prompt), kind
        got = txt(photo, prompt=prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images[0]
        assert np.array_equal(np.asarray(got), np.asarray(want)), kind


WORDPIECE_TEXTS = [
    "Turn the SKY purple, make it night!",
    "a [SEP] b[CLS]c [MASK]",  # special tokens inside the text
    "it's 12:30 -- (hello) [world] {x}; I'LL see   you\t\tthere\n\nok",
    "xyzzyq unknownword qqq",  # words with no first piece, and with pieces but no last one
    "héllo wörld, Ångström \u212b, 日本語のテキスト, emoji 🎨🌙 façade naïve ж",
    "\x00\x07 tab\tend\u00a0nbsp\u3000",  # control characters and other spaces
    "",
]


def _wordpiece_tokenizer(folder: Path | None = None):
    """A BERT-style WordPiece tokenizer (lower-casing and accent-stripping BertNormalizer, BertPreTokenizer, `##`
    pieces, [CLS] text [SEP]), trained offline on a small corpus; saved to `folder` when given."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from sanaedit.tools.random_model import _CORPUS

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials, show_progress=False)
    tok.train_from_iterator([*_CORPUS, "héllo wörld 日本語のテキスト ж"] * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


def test_wordpiece_tokenizers_read_in_python(tmp_path):
    """A WordPiece tokenizer as llmexport writes it: in tokenizer.mtok from tokenizer.json (what the export writes),
    with tokenizers' ids; in a BERT tokenizer.txt from a vocab.txt alone, with the engine's own, plainer rules."""
    from transformers import BertTokenizer

    from sanaedit.export.llm_mnn import llmexport_modules
    from sanaedit.formats.mnn_tokenizer import BertTxtTokenizer, load_mnn_tokenizer
    from sanaedit.formats.mnn_tokenizer_pipeline import PipelineTokenizer

    hf = _wordpiece_tokenizer(tmp_path / "wordpiece")
    vocab_file = tmp_path / "vocab-only" / "vocab.txt"
    vocab_file.parent.mkdir()
    vocab_file.write_text("".join(t + "\n" for t, _ in sorted(hf.get_vocab().items(), key=lambda item: item[1])))
    BertTokenizer(vocab_file=str(vocab_file)).save_pretrained(vocab_file.parent)
    (vocab_file.parent / "tokenizer.json").unlink()  # vocab.txt and tokenizer_config.json: the older route
    with llmexport_modules():
        from utils.tokenizer import LlmTokenizer

        files = {}
        for name in ("wordpiece", "vocab-only"):
            source = tmp_path / name
            files[name] = LlmTokenizer(str(source), "qwen3").export(str(tmp_path / "mnn" / name), str(source))
    mtok, txt = load_mnn_tokenizer(files["wordpiece"]), load_mnn_tokenizer(files["vocab-only"])
    assert (type(mtok), type(txt)) == (PipelineTokenizer, BertTxtTokenizer), files
    for text in WORDPIECE_TEXTS:
        assert mtok.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text
    for text in WORDPIECE_TEXTS[:2]:  # plain ASCII words the vocabulary holds: the BERT file's rules agree
        assert txt.encode(text) == hf(text, add_special_tokens=False)["input_ids"], text
    unk = hf.convert_tokens_to_ids("[UNK]")
    assert hf("xyzzyq", add_special_tokens=False)["input_ids"] == [unk]
    assert txt.encode("xyzzyq")[-1] == unk and len(txt.encode("xyzzyq")) > 1  # the engine keeps the pieces it found
    assert txt.encode("Naïve") == txt.encode("na") + txt.encode("ï") + txt.encode("ve")  # non-ASCII: a word each


def test_export_of_a_wordpiece_model_writes_and_checks_its_tokenizer(tmp_path):
    """The export ran every graph, then failed reading back the WordPiece tokenizer.mtok llmexport wrote (issue 26)."""
    from sanaedit.export import export_model
    from sanaedit.tools.random_model import build_random_pipeline

    hf = _wordpiece_tokenizer()
    pipe = build_random_pipeline("tiny", seed=0, tokenizer=hf)
    out = export_model(None, tmp_path / "wordpiece-mnn", fmt="mnn", quant="llm=4,rest=8", progress=False, pipe=pipe)
    manifest = json.loads((out / "model_index.json").read_text())
    assert manifest["llm"]["tokenizer"] == "llm/tokenizer.mtok" and manifest["llm"]["tokenizer_matches"] is True
    encoder = load_pipeline(out).text_encoder
    for text in WORDPIECE_TEXTS:
        want = hf(pipe.config.template.replace("{prompt}", text), add_special_tokens=False)["input_ids"]
        assert encoder.token_ids(text) == want[: encoder.max_tokens], text


# --------------------------------------------------------------------------------------------- the telemetry trap
TRAP_SCRIPT = """
import builtins, json, os, socket, subprocess, sys, urllib.request
seen = {"connect": [], "subprocess": [], "system": [], "urlopen": [], "imports": []}
def refuse(kind):
    def record(*args, **kwargs):
        seen[kind].append(repr(args)[:200])
        raise OSError("sanaedit test: no network, no child processes")
    return record
socket.socket.connect = refuse("connect")
socket.socket.connect_ex = refuse("connect")
socket.create_connection = refuse("connect")
urllib.request.urlopen = refuse("urlopen")
subprocess.Popen.__init__ = refuse("subprocess")
os.system = refuse("system")
os.popen = refuse("system")
class Watch:  # sees every import not already done: MNN.tools (the converter wrapper) and its logger must never load
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("MNN.tools", "aliyun", "pip")):
            seen["imports"].append(name)
        return None
sys.meta_path.insert(0, Watch())
from sanaedit.export.llm_mnn import export_llm_mnn
export_llm_mnn(sys.argv[1], sys.argv[2], 4, 32)
seen["log_module_left"] = "MNN.tools.utils.log" in sys.modules
seen["mnn_tools_loaded"] = sorted(m for m in sys.modules if m.startswith("MNN.tools"))
print("SEEN " + json.dumps(seen))
"""


def test_llmexport_installs_nothing_and_connects_nowhere(tiny_model_dir, tmp_path):
    """The export through llmexport, in a process where any connection, child process or shell command fails
    loudly and is recorded: none is attempted, and MNN.tools (whose logger pip-installs a package and sends
    telemetry) is never imported."""
    out = tmp_path / "llm"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TRAP_SCRIPT), str(tiny_model_dir / "llm"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.split("SEEN ", 1)[1])
    assert seen["connect"] == [] and seen["urlopen"] == [], seen
    assert seen["subprocess"] == [] and seen["system"] == [], seen  # no pip, no MNNConvert binary
    assert seen["imports"] == [] and seen["mnn_tools_loaded"] == [] and not seen["log_module_left"], seen
    assert {"llm.mnn", "llm.mnn.weight", "llm_config.json", "config.json", "tokenizer.mtok"} <= {
        p.name for p in out.iterdir()
    }


def test_release_runs_without_diffusers_transformers_or_accelerate(release_only):
    """Even a new prompt: the MNN tokenizer, embedding rows, llm.mnn; no Hugging Face code at all."""
    script = f"""
import sys
from PIL import Image
from sanaedit.load import load_pipeline
pipe = load_pipeline({str(release_only)!r})
out = pipe(Image.new("RGB", (40, 24), "red"), prompt="a new prompt", num_inference_steps=2).images[0]
assert out.size == (40, 24)
print("HEAVY", sorted(m for m in ("diffusers", "transformers", "accelerate") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HEAVY []" in done.stdout, done.stdout


def test_matmul_graphs_run_in_mnns_low_memory_mode(tiny_mnn_release, monkeypatch):
    """The DiT, connector, projector and LLM keep their quantized weights packed (MNN's Memory_Low, which the wrapper
    reads only as an integer: a string is ignored without a word); the convolutional autoencoders, slower in that
    mode, run as before. The picture stays within a level or two of the float-compute one."""
    import MNN.nn as mnn_nn

    import sanaedit.backends as backends

    made = []
    real = mnn_nn.create_runtime_manager
    monkeypatch.setattr(mnn_nn, "create_runtime_manager", lambda configs: made.append(configs[0]) or real(configs))
    photo, run = _photo(), {"prompt": "a new prompt", "num_inference_steps": 2}
    pipe = load_pipeline(tiny_mnn_release)
    low = pipe(photo, generator=torch.Generator().manual_seed(0), **run).images[0]
    assert all(isinstance(c["memory"], int) and isinstance(c["precision"], int) for c in made)
    assert sorted(c["memory"] for c in made) == [0, 0, 2, 2, 2, 2]  # vae encoder/decoder; DiT, connector, proj., LLM
    monkeypatch.setattr(backends, "MNN_LOW_MEMORY", ())
    normal = load_pipeline(tiny_mnn_release)(photo, generator=torch.Generator().manual_seed(0), **run).images[0]
    diff = np.abs(np.asarray(low, np.int16) - np.asarray(normal, np.int16))
    assert 0 < diff.max() <= 3 and diff.mean() < 0.5, (diff.max(), diff.mean())  # measured 2 and 0.24: it differs
