"""`sanaedit export --format mnn`: the published release's layout exactly (see `formats/release_files.py`), which MNN's
engine loads as it loads MNN-Sana-Edit-V2, plus our additive files (model_index.json, prompt cache).

The five networks are converted as every MNN graph here (ONNX, then `_tools.mnnconvert`, checked against
PyTorch) under the engine's I/O names, DC-AE without its scaling factor (the engine applies it). The LLM goes
through MNN's own LLM exporter (`llm_mnn.py`), 4-bit asymmetric in blocks of 64 by default, and is checked three
ways: whether the tokenizer it wrote encodes the model's prompts to the model tokenizer's ids, its embedding rows
against the model's, its hidden states against transformers' (`llm_graph.LlmFeatures`, what the model folder's text
path computes). A tokenizer that encodes the model's prompts differently is reported (a warning, and
`tokenizer_matches: false` in model_index.json), not refused: the engine's tokenizer is what it is. A tokenizer
whose model the MNN tokenizer file cannot hold, or sanaedit cannot run from it, is refused before any graph
(`check_tokenizer`).
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from sanaedit.backends.mnn_llm import MnnLlm
from sanaedit.core.choices import Format
from sanaedit.export.graphs import release_specs
from sanaedit.export.llm_graph import LlmFeatures
from sanaedit.export.llm_mnn import export_llm_mnn
from sanaedit.formats.mnn_tokenizer import load_mnn_tokenizer
from sanaedit.formats.release_files import LLM_GRAPH, EmbeddingTable, llm_configs, save_meta_queries_mnn, tokenizer_file
from sanaedit.models.prompt import FastTokenizer, tokenize

logger = logging.getLogger(__name__)

LLM_BLOCK = 64  # the published LLM's 4-bit block
FP16_TOLERANCE = 1e-2  # max-abs relative error of fp16 LLM weights beyond which the export is broken, not rounded
CHECK_PROMPT = "turn the sky purple, make it night"  # a prompt outside the model's own, for the checks


# The tokenizer models llmexport writes into tokenizer.mtok and formats/mnn_tokenizer_pipeline.py runs (llmexport writes
# Unigram too, which sanaedit cannot run to check the export; a WordLevel model it leaves out of the file).
MNN_TOKENIZER_MODELS = ("BPE", "WordPiece")


def check_tokenizer(tokenizer: Any) -> None:
    """Refuse, in one line naming its model, a tokenizer the MNN export cannot write and read back."""
    kind = type(FastTokenizer.of(tokenizer).backend.model).__name__
    if kind not in MNN_TOKENIZER_MODELS:
        raise ValueError(
            f"--format mnn cannot export this model's tokenizer, a {kind} model: sanaedit writes MNN-LLM tokenizers "
            f"for {' and '.join(MNN_TOKENIZER_MODELS)} models only (--format onnx keeps any tokenizer)"
        )


def llm_block(width: int) -> int:
    """64, or for a narrow test LLM the largest power of two below it that divides its width (MNN reads
    `width / block` blocks per row: a block wider than the row would be none)."""
    block = LLM_BLOCK
    while block > 1 and width % block:
        block //= 2
    return block


def export_release(pipe, tmp: Path, bits: dict, progress: bool, llm_source: Path | None = None) -> tuple[dict, dict]:
    """Write the release's files into `tmp`; returns (graph entries, the manifest's "llm" entry)."""
    from sanaedit.export.graph_export import export_graph, say

    specs = release_specs(pipe)
    total = len(specs) + 1
    graphs: dict[str, dict] = {}
    for i, spec in enumerate(specs, 1):
        say(
            progress, f"[{i}/{total}] {spec.name}: exporting to mnn ({', '.join(spec.inputs)} -> {spec.outputs[0]}) ..."
        )
        entry = export_graph(spec, tmp, Format.MNN, bits[spec.quant_as or spec.name])
        graphs[spec.name] = entry
        say(progress, f"      {entry['file']}: max rel. error vs torch {entry['max_rel_error']:.1e}")
    llm_bits = bits["llm"]
    say(progress, f"[{total}/{total}] llm: MNN's LLM exporter, {'fp16' if llm_bits is None else f'{llm_bits}-bit'} ...")
    encoder = pipe.text_encoder
    width = encoder.meta_queries.shape[1]
    block = llm_block(width)
    with tempfile.TemporaryDirectory(dir=tmp) as scratch:
        source = llm_source
        if source is None or not (Path(source) / "config.json").is_file():
            source = Path(scratch) / "llm"
            encoder.llm.save_pretrained(source)
            encoder.tokenizer.save_pretrained(source)
        export_llm_mnn(source, tmp / "llm", llm_bits, block)
    save_meta_queries_mnn(encoder.meta_queries, tmp / "llm" / "meta_queries.mnn")
    errors, mismatches = check_llm(pipe, tmp)
    worst = errors["hidden_states_max_rel"]
    if not math.isfinite(worst) or (llm_bits is None and worst > FP16_TOLERANCE):
        raise RuntimeError(
            f"the exported LLM graph does not match transformers (max relative error {worst:.2e}); nothing was "
            "written. Please report this with your model's config."
        )
    say(progress, "      llm/llm.mnn: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    llm_path = tmp / LLM_GRAPH.file
    graphs["llm"] = {
        "file": LLM_GRAPH.file,
        "inputs": list(LLM_GRAPH.inputs),
        "outputs": list(LLM_GRAPH.outputs),
        "bits": 16 if llm_bits is None else llm_bits,
        "quant": {
            "bits": 16 if llm_bits is None else llm_bits,
            "block_size": block,
            "scheme": "fp16 (llmexport writes no fp32 linear layers)" if llm_bits is None else "llmexport asymmetric",
        },
        "max_rel_error": worst,
        "rel_l2_error": errors["hidden_states_rel_l2"],
        "bytes": sum(p.stat().st_size for p in llm_path.parent.glob(llm_path.name + "*")),
    }
    config, llm_config = llm_configs(tmp)
    table = EmbeddingTable(tmp, config, llm_config)
    llm_entry = {
        "folder": "llm",
        "graph": "llm",
        "format": "MNN-LLM (llmexport)",
        "tokenizer": str(tokenizer_file(tmp, config).relative_to(tmp)),
        "token_embeddings": str(table.path.relative_to(tmp)) + (" (tied)" if table.offset else ""),
        "meta_queries_file": "llm/meta_queries.mnn",
        "max_prompt_tokens": encoder.max_prompt_tokens,
        "bits": graphs["llm"]["bits"],
        "group_size": block,
        "errors": errors,
        "tokenizer_matches": not mismatches,  # the MNN tokenizer's ids equal the model's on its prompts
    }
    return graphs, llm_entry


def check_llm(pipe, folder: Path) -> tuple[dict[str, float], list[str]]:
    """The MNN-LLM folder against the model: embedding rows and hidden states (errors), and the prompts whose MNN
    token ids differ from the model tokenizer's (the rows compared are the model's ids either way)."""
    encoder = pipe.text_encoder
    template, queries = pipe.config.template, encoder.meta_queries.detach().float()
    config, llm_config = llm_configs(folder)
    mnn_tokenizer = load_mnn_tokenizer(tokenizer_file(folder, config))
    table = EmbeddingTable(folder, config, llm_config)
    llm = MnnLlm(folder / LLM_GRAPH.file, threads=None)
    reference = LlmFeatures(encoder.llm, queries.shape[0]).eval()
    mismatches: list[str] = []
    found = {
        "hidden_states_max_rel": 0.0,
        "hidden_states_rel_l2": 0.0,
        "embeddings_rel_l2": 0.0,
        "features_rel_l2": 0.0,
    }
    for prompt in dict.fromkeys([pipe.config.prompt, pipe.config.negative_prompt, CHECK_PROMPT]):
        ids, _ = tokenize(encoder.tokenizer, template, [prompt], encoder.max_prompt_tokens)
        ids = ids[0].tolist()
        mnn_ids = mnn_tokenizer.encode(template.replace("{prompt}", prompt))[: encoder.max_prompt_tokens]
        if mnn_ids != ids:  # what MNN's engine will feed differs from what the model was trained with: say so
            mismatches.append(prompt)
            logger.warning(
                f"the MNN tokenizer llmexport wrote encodes {prompt!r} to {mnn_ids[:12]}..., the model's "
                f"tokenizer to {ids[:12]}...; MNN's engine will see other tokens for it"
            )
        with torch.no_grad():
            want_rows = encoder.llm.get_input_embeddings().weight[ids].float()
            x = torch.cat([want_rows, queries])
            want = reference(x[None], torch.ones(1, x.shape[0]))[0]
        rows = torch.from_numpy(table.rows(ids))  # the runtime's NumPy, compared here in torch
        got = torch.from_numpy(llm(x, queries.shape[0]))
        full = torch.from_numpy(llm(torch.cat([rows, queries]), queries.shape[0]))
        errs = {
            "hidden_states_max_rel": float((got - want).abs().max() / want.abs().max().clamp(min=1e-12)),
            "hidden_states_rel_l2": _rel_l2(got, want),
            "embeddings_rel_l2": _rel_l2(rows, want_rows),
            "features_rel_l2": _rel_l2(full, want),
        }
        found = {k: max(found[k], v) if math.isfinite(v) else v for k, v in errs.items()}
    del llm
    return found, mismatches


def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm().clamp(min=1e-12))
