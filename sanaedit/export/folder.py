"""`export_model`: a model folder -> a folder of ONNX or MNN graphs plus a manifest a runtime loads.

ONNX layout: connector, projector, transformer, vae_encoder, vae_decoder (.onnx, weights in a side file when
large); `llm/`: the frozen LLM's body as a graph (`llm/llm.onnx`, 4-bit by default), its token embedding table
(`embeddings.safetensors`, bf16 when the LLM is quantized: a lookup, read row by row), the tokenizer and
`meta_queries.safetensors` (only needed for prompts outside the prompt cache).
MNN layout: the published release's files and I/O names exactly, the LLM written by MNN's own LLM exporter
(`formats/release_files.py`, `export/release.py`): MNN's engine loads it as it loads MNN-Sana-Edit-V2.
Both add `prompt_cache.safetensors` and `model_index.json` (`_class_name` SanaEditExport), which the engine ignores,
and a model with a learned refiner its graph (`refiner.onnx` / `refiner.mnn`, fp32, any height and width) beside
its weights (`refiner.safetensors`, for PyTorch readers and older runtimes).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from sanaedit.backends import FORMATS, load_graph
from sanaedit.core.atomic import atomic_folder
from sanaedit.core.choices import Format, Vae
from sanaedit.export.calibrate import Calibration, autoencoder_calibration
from sanaedit.export.graph_export import LLM_GROUP_SIZE, export_graph, say, w8a8_check
from sanaedit.export.graphs import baked_guidance, graph_specs, refiner_spec
from sanaedit.export.quant_spec import W8A8, W8A8_CALIBRATED, W8A8_GRAPHS, W8A8_WHERE, parse_quant
from sanaedit.formats.index import (
    EMBEDDINGS_FILE,
    EMBEDDINGS_KEY,
    EXPORT_CLASS,
    PROMPT_CACHE_FILE,
    RELEASE_LAYOUT,
    stored_int8,
    write_index,
)
from sanaedit.formats.prompt_cache import write_prompt_cache
from sanaedit.formats.torch_folder import save_meta_queries
from sanaedit.load import load_model_folder
from sanaedit.models.refine_tiles import REFINER_GRAPH, RefinerGraph
from sanaedit.models.refiner import save_refiner
from sanaedit.plan import styled

logger = logging.getLogger(__name__)

# The refiner graph's tiled refine of a check photo may round a pixel to the next uint8 level, never further.
REFINER_LEVEL_TOLERANCE = 1
REFINER_CHECK_SIZE, REFINER_CHECK_TILE = (203, 150), 64  # non-square, several tiles of several shapes


def export_model(
    model_dir: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    quant: str | dict[str, int | str | None] | None = None,
    progress: bool = True,
    pipe=None,
    loras: list[tuple[str | Path, float]] | None = None,
) -> Path:
    """Export every sub-model of `model_dir` (or of an in-memory `pipe`) to `out`; each graph is checked. `loras`
    (file, scale) are merged into the transformer first."""

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {sorted(f.value for f in FORMATS)}")
    bits = quant if isinstance(quant, dict) else parse_quant(quant)
    if bits["llm"] not in (None, 4, 8):
        raise ValueError(f"llm bits must be 4, 8 or 32, got {bits['llm']}")
    if fmt != "onnx" and W8A8 in bits.values():
        raise ValueError(f"--quant ...={W8A8} (ONNX Runtime's int8 Conv and MatMul) is for --format onnx only")
    if any(b == W8A8 for name, b in bits.items() if name not in W8A8_GRAPHS):  # a dict passed in as is
        raise ValueError(f"--quant ...={W8A8} is for {W8A8_WHERE} only")
    if pipe is None and stored_int8(model_dir):
        raise ValueError(
            f"{model_dir} stores its DiT in int8 (sanaedit export --format int8): export graphs from the float folder "
            "it was made from (--quant chooses the graphs' own quantization)"
        )
    given_pipe = pipe is not None
    pipe = pipe or load_model_folder(model_dir, vae=Vae.FULL)  # every graph, the DC-AE's included
    if pipe.vae is None:
        raise ValueError("this pipeline has no DC-AE (loaded with vae='tiny'): export needs the full model")
    if fmt == Format.MNN:  # before any graph, not after them all in the LLM's export
        from sanaedit.export.release import check_tokenizer

        check_tokenizer(pipe.text_encoder.tokenizer)
    if loras:
        from sanaedit.models.lora import merge_loras

        merge_loras(pipe.transformer, [(Path(path), float(scale)) for path, scale in loras])
        pipe.config = styled(pipe.config)
    encoder = pipe.text_encoder
    out = Path(out)
    started = time.perf_counter()
    with atomic_folder(out) as tmp, torch.no_grad():
        (tmp / "llm").mkdir()
        if fmt == Format.MNN:  # the published release's layout (export/release.py)
            from sanaedit.export.release import export_release

            llm_source = Path(model_dir) / "llm" if model_dir is not None and not given_pipe else None
            graphs, llm = export_release(pipe, tmp, bits, progress, llm_source)
            layout = {"layout": RELEASE_LAYOUT}
        else:
            graphs, llm = _export_onnx_folder(pipe, tmp, fmt, bits, progress)
            layout = {}
        write_prompt_cache(tmp, encoder, [pipe.config.prompt, pipe.config.negative_prompt])
        if pipe.flow.refiner is not None:  # the graph for the exported runtime; the weights for PyTorch readers
            save_refiner(pipe.flow.refiner, tmp)
            graphs[REFINER_GRAPH] = export_refiner(pipe.flow.refiner, tmp, fmt, progress)
        t = pipe.transformer
        settings = dataclasses.asdict(pipe.config)
        baked = baked_guidance(pipe)
        if baked is not None:  # a student's guidance is inside its graph: the export runs it without CFG
            settings["guidance_scale"] = 1.0
        write_index(
            tmp,
            EXPORT_CLASS,
            settings,
            format=fmt,
            backend=FORMATS[fmt],
            **layout,
            graphs=graphs,
            llm=llm,
            prompt_cache=PROMPT_CACHE_FILE,
            transformer={
                "out_channels": t.config.out_channels,
                "ref_channels": t.ref_channels,
                "caption_channels": t.config.caption_channels,
            },
            vae={"scale_factor": pipe.vae_scale, "scaling_factor": pipe.vae.config.scaling_factor},
            **({"baked_guidance": baked} if baked is not None else {}),
        )
    say(progress, f"exported {out} ({fmt}) in {time.perf_counter() - started:.0f} s")
    return out


def _export_onnx_folder(pipe, tmp: Path, fmt: str, bits: dict, progress: bool) -> tuple[dict, dict]:
    """Our own layout (ONNX): every graph including the LLM body, the token table, tokenizer and meta-queries."""
    encoder = pipe.text_encoder
    specs = graph_specs(pipe)
    graphs: dict[str, dict] = {}
    calibration: dict[str, Calibration] = {}
    calibrated = [name for name in W8A8_CALIBRATED if bits[name] == W8A8]
    if calibrated:
        say(progress, f"      {W8A8}: calibrating {', '.join(calibrated)} on photos ...")
        calibration = autoencoder_calibration(pipe, calibrated)
    for i, spec in enumerate(specs, 1):
        t0 = time.perf_counter()
        say(progress, f"[{i}/{len(specs) + 1}] {spec.name}: exporting to {fmt} ...")
        where = tmp / "llm" if spec.name == "llm" else tmp
        entry = export_graph(spec, where, fmt, bits[spec.quant_as or spec.name], calibration.get(spec.name))
        entry["file"] = str((where / entry["file"]).relative_to(tmp))
        graphs[spec.name] = entry
        error = f"max rel. error vs torch {entry['max_rel_error']:.1e}"
        if "rel_l2_error" in entry:  # w8a8
            error = f"rel. L2 error vs torch on {w8a8_check(spec.quant_as or spec.name)} {entry['rel_l2_error']:.1e}"
        say(
            progress,
            f"      {entry['file']}: {error}, {entry['bytes'] / 2**20:.1f} MiB, {time.perf_counter() - t0:.0f} s",
        )
    say(progress, f"[{len(specs) + 1}/{len(specs) + 1}] llm/ embeddings, tokenizer, meta-queries, prompt cache ...")
    embed_dtype = torch.float32 if bits["llm"] is None else torch.bfloat16
    table = encoder.llm.get_input_embeddings().weight.detach().to(embed_dtype).contiguous()
    save_file({EMBEDDINGS_KEY: table}, tmp / EMBEDDINGS_FILE)
    encoder.tokenizer.save_pretrained(tmp / "llm")
    save_meta_queries(encoder.meta_queries, tmp / "llm")
    llm = {
        "folder": "llm",
        "graph": "llm",  # its entry in "graphs"
        "embeddings": EMBEDDINGS_FILE,
        "meta_queries": "llm/meta_queries.safetensors",
        "max_prompt_tokens": encoder.max_prompt_tokens,
        "bits": bits["llm"],
        "group_size": LLM_GROUP_SIZE,
    }
    return graphs, llm


def export_refiner(refiner, folder: Path, fmt: str, progress: bool = False) -> dict:
    """The learned refiner as a graph (`refiner.onnx` / `refiner.mnn`, fp32, height and width free), checked as
    every graph is (max relative error on a tile), then refining a non-square check photo in tiles as the exported
    runtime does (`runtime/refiner_graph.py`): at most REFINER_LEVEL_TOLERANCE uint8 levels off PyTorch's. Returns
    its manifest entry, with the factor and margin the tiling needs."""
    t0 = time.perf_counter()
    say(progress, f"      refiner: exporting to {fmt} (fp32, any height and width) ...")
    spec = refiner_spec(refiner)
    entry = export_graph(spec, folder, fmt, None)
    entry.update(factor=refiner.factor, margin=refiner.margin, config=dict(refiner.config))
    graph = load_graph(folder / entry["file"], FORMATS[fmt], spec.inputs, spec.outputs, threads=1)
    photo, edit = (_noise_picture(seed, REFINER_CHECK_SIZE) for seed in (1, 2))
    want = np.asarray(refiner.refine(photo, edit, tile=REFINER_CHECK_TILE), np.int16)
    got = RefinerGraph(graph, refiner.factor, refiner.margin).refine(photo, edit, tile=REFINER_CHECK_TILE)
    entry["max_level_error"] = int(np.abs(np.asarray(got, np.int16) - want).max())
    if entry["max_level_error"] > REFINER_LEVEL_TOLERANCE:
        raise RuntimeError(
            f"the exported refiner graph refines a photo {entry['max_level_error']} uint8 levels off PyTorch (at most "
            f"{REFINER_LEVEL_TOLERANCE} passes); nothing was written. Please report this with your model's config."
        )
    say(
        progress,
        f"      {entry['file']}: max rel. error vs torch {entry['max_rel_error']:.1e}, tiled photo at most "
        f"{entry['max_level_error']} level(s) off, {entry['bytes'] / 2**10:.0f} KiB, {time.perf_counter() - t0:.0f} s",
    )
    return entry


def _noise_picture(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)
