"""An exported folder (`sanaedit export --format onnx`): its networks as ONNX Runtime (or MNN) graphs.

Sampling, CFG, pre/post-processing and the prompt cache are the pipeline's own code; only the networks are graphs,
behind the same `FlowModel` the PyTorch pipeline uses. Each graph call returns a fresh tensor, so nothing
accumulates across steps. A prompt outside the prompt cache runs the LLM graph (loaded for that call and released
right after), then the connector and projector graphs. Everything is NumPy (`arrays.NumpyArrays`): an edit imports
neither torch nor diffusers nor transformers (a new prompt is tokenized by the `tokenizers` library alone).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sanaedit.backends import load_graph
from sanaedit.core.arrays import NumpyArrays, bfloat16_to_float32
from sanaedit.core.choices import Format, Vae
from sanaedit.core.config import PipelineConfig
from sanaedit.core.flow import FlowModel
from sanaedit.errors import ModelFolderError, first_line
from sanaedit.formats.index import (
    CONTROLLED_GRAPH,
    EMBEDDINGS_KEY,
    EXPORT_CLASS,
    META_QUERIES_FILE,
    TINY_GRAPHS,
    read_index,
)
from sanaedit.formats.prompt_cache import load_prompt_cache
from sanaedit.formats.refiner import folder_refiner, load_refiner_graph
from sanaedit.formats.source import Networks
from sanaedit.models.refine_tiles import REFINER_FILE, REFINER_GRAPH
from sanaedit.plan import FolderInfo, RunPlan

GRAPHS = ["connector", "projector", "transformer", "vae_encoder", "vae_decoder"]  # loaded up front


class TransformerGraph:
    """The DiT graph with the published inputs; absent mask / ref become what the published runtime passes."""

    def __init__(self, graph):
        self.graph = graph

    def __call__(self, sample, encoder_hidden_states, timestep, encoder_attention_mask=None, ref_latents=None):
        if encoder_attention_mask is None:
            encoder_attention_mask = np.ones(encoder_hidden_states.shape[:2], np.float32)
        if ref_latents is None:
            ref_latents = np.zeros(sample.shape, np.float32)
        return self.graph(sample, encoder_hidden_states, timestep, encoder_attention_mask, ref_latents)


class ControlledGraph:
    """The exported DiT with its ControlNet (one graph) as `FlowModel.controlnet`, loaded on its first call: an edit
    without a control image never loads it. The graph holds its own copy of the DiT, so the DiT it is passed runs
    only at scale 0."""

    def __init__(self, load):
        self.load, self.graph = load, None

    def __call__(self, transformer, sample, encoder_hidden_states, timestep, mask, ref, control, scale):
        if scale == 0:  # exactly the edit without it: the plain DiT graph (this one's int8 rounding may differ)
            return transformer(sample, encoder_hidden_states, timestep, mask, ref)
        if self.graph is None:
            self.graph = self.load()
        if mask is None:
            mask = np.ones(encoder_hidden_states.shape[:2], np.float32)
        if ref is None:
            ref = np.zeros(sample.shape, np.float32)
        scales = np.full(sample.shape[0], scale, np.float32)  # one per sample: the graph's batch axis stays free
        return self.graph(sample, encoder_hidden_states, timestep, mask, ref, control, scales)


class ExportedTextEncoder:
    """prompts -> (encoder_hidden_states, mask), all as graphs: the LLM graph is loaded for the call and released
    right after; the token embeddings are read row by row from the export's table (only the prompt's rows). Made
    only when a prompt is not in the prompt cache (the connector and projector graphs load with it)."""

    def __init__(self, folder: Path, manifest: dict, load_graph, template: str):
        self.folder, self.manifest, self.template, self.load_graph = folder, manifest, template, load_graph
        self.connector, self.projector = load_graph("connector"), load_graph("projector")

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        llm = self.load_graph(self.manifest["llm"]["graph"])
        try:
            features = llm(*self.llm_inputs(prompts))
        finally:
            del llm  # released as soon as the features exist
        hidden = self.projector(self.connector(features))
        return hidden, np.ones(hidden.shape[:2], np.int64)

    def llm_inputs(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        from sanaedit.models.prompt import FastTokenizer, llm_inputs, tokenize

        info = self.manifest["llm"]
        try:
            tokenizer = FastTokenizer.load(self.folder / info["folder"])
            input_ids, text_mask = tokenize(tokenizer, self.template, prompts, info["max_prompt_tokens"])
            wanted = np.unique(input_ids)  # sorted
            found = embedding_rows(self.folder / info["embeddings"], EMBEDDINGS_KEY, wanted)
            queries = embedding_rows(self.folder / info["folder"] / META_QUERIES_FILE, "meta_queries")
        except Exception as err:  # tokenizer / file errors vary in type
            raise ModelFolderError(
                f"{self.folder}: cannot read the LLM's tokenizer or embeddings ({first_line(err)}); export again"
            ) from err
        token_embeds = found[np.searchsorted(wanted, input_ids)]
        embeds, mask = llm_inputs(token_embeds, text_mask, queries)
        return embeds, mask.astype(np.float32)


def embedding_rows(path: Path, key: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows of a 2-D float32 or bfloat16 tensor in a safetensors file, as float32 (all rows with `rows=None`),
    read through a memory map: only the rows asked for leave the disk. By hand because safetensors' NumPy loader
    has no bfloat16 (the exported LLM's 300 MB table is bf16)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        entry = json.loads(f.read(size))[key]
    dtype = {"F32": np.float32, "BF16": np.uint16}[entry["dtype"]]
    start, end = entry["data_offsets"]
    table = np.memmap(path, dtype, "r", offset=8 + size + start, shape=tuple(entry["shape"]))
    if end - start != table.nbytes:
        raise ValueError(f"{path.name}: {key} holds {end - start} bytes, its shape needs {table.nbytes}")
    picked = np.array(table if rows is None else table[rows])
    return bfloat16_to_float32(picked) if dtype is np.uint16 else picked


def check_graph_file(folder: Path, entry: dict) -> None:
    """A graph's file (and its weight side file) exists and has the size the export wrote: a truncated or replaced
    graph is refused by name here (MNN would otherwise run a truncated weight file without a word)."""
    path = folder / entry["file"]
    if not path.is_file():
        raise ModelFolderError(f"{folder}: exported graph {entry['file']} is missing; export again")
    expected = entry.get("bytes")
    if isinstance(expected, int):
        found = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
        if found != expected:
            raise ModelFolderError(
                f"{path}: {found:,} bytes with its side files, the export wrote {expected:,}: truncated or "
                "changed since; export again"
            )
    if path.suffix == ".onnx":  # a serialized ModelProto opens with field 1, ir_version (tag byte 0x08)
        with path.open("rb") as f:
            if f.read(1) != b"\x08":
                raise ModelFolderError(f"{path}: not a valid ONNX graph (damaged content); export again")


def check_graphs_listed(folder: Path, manifest: dict) -> None:
    """The manifest lists every graph a run needs (the LLM's and GRAPHS)."""
    missing = [n for n in ("llm", *GRAPHS) if n not in manifest.get("graphs", {})]
    if missing:
        raise ModelFolderError(
            f"{folder}: the export has no {', '.join(missing)} graph (made by an older sanaedit?): export again"
        )


def check_exported(folder: str | Path) -> dict:
    """What loading an exported folder checks, without loading a graph: the manifest, every graph file and its size,
    the LLM's embeddings and meta-queries headers, the prompt cache. Returns the manifest."""
    from safetensors import safe_open

    folder = Path(folder)
    manifest = read_index(folder, kind=EXPORT_CLASS)
    check_graphs_listed(folder, manifest)
    for entry in manifest["graphs"].values():
        check_graph_file(folder, entry)
    info = manifest.get("llm", {})
    for name in (info.get("embeddings"), info.get("meta_queries")):
        if name:
            try:
                with safe_open(folder / name, "np") as f:
                    list(f.keys())
            except Exception as err:
                reason = first_line(err)
                raise ModelFolderError(f"{folder / name}: corrupt or missing ({reason}); export again") from None
    load_prompt_cache(folder, framework="np")
    return manifest


class ExportedFolder:
    """An exported folder of ONNX (or, from older exports, MNN) graphs as a source of networks (runtime/sources.py):
    `info` from its manifest, `networks(plan)` the DiT's and the planned autoencoder's graphs on the plan's backend
    (the LLM, connector and projector graphs only when a prompt outside the prompt cache needs them)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = manifest = read_index(self.folder, kind=EXPORT_CLASS)
        graphs = manifest.get("graphs", {})
        try:
            fmt = Format(manifest["format"])
        except (KeyError, ValueError):
            raise ModelFolderError(
                f"{self.folder}: model_index.json names no known graph format; export again"
            ) from None
        self.info = FolderInfo(
            folder=self.folder,
            format=fmt,
            config=PipelineConfig.from_dict(manifest.get("pipeline", {})),
            has_tiny_vae=all(n in graphs for n in TINY_GRAPHS),
            has_refiner=REFINER_GRAPH in graphs or (self.folder / REFINER_FILE).is_file(),
            controlnet=self.folder / graphs[CONTROLLED_GRAPH]["file"] if CONTROLLED_GRAPH in graphs else None,
        )

    def networks(self, plan: RunPlan) -> Networks:
        folder, manifest, backend, threads = self.folder, self.manifest, plan.backend, plan.threads
        check_graphs_listed(folder, manifest)

        def load(name: str):
            entry = manifest["graphs"][name]
            check_graph_file(folder, entry)
            return load_graph(folder / entry["file"], backend, entry["inputs"], entry["outputs"], threads, name)

        autoencoder = list(TINY_GRAPHS) if plan.vae == Vae.TINY else ["vae_encoder", "vae_decoder"]
        # files checked now; loaded now: the DiT and one autoencoder's graphs (the LLM, connector and projector only
        # when a prompt outside the prompt cache needs them)
        for name in ("connector", "projector"):
            check_graph_file(folder, manifest["graphs"][name])
        graphs = {name: load(name) for name in ["transformer", *autoencoder]}
        info = manifest["transformer"]
        flow = FlowModel(
            TransformerGraph(graphs["transformer"]),
            graphs[autoencoder[0]],
            graphs[autoencoder[1]],
            latent_channels=info["out_channels"],
            ref_channels=info["ref_channels"],
            vae_scale=manifest["vae"]["scale_factor"],
            # the refiner's graph; the PyTorch refiner only for exports made before it was a graph
            refiner=load_refiner_graph(folder, manifest, backend, threads) or folder_refiner(folder),
            arrays=NumpyArrays(),
        )
        if plan.controlnet is not None:  # checked now, loaded by the first edit with a control image
            check_graph_file(folder, manifest["graphs"][CONTROLLED_GRAPH])
            flow.controlnet = ControlledGraph(lambda: load(CONTROLLED_GRAPH))
        template = plan.config.template
        return Networks(
            flow=flow,
            prompt_cache=load_prompt_cache(folder, framework="np"),
            text_encoder_loader=lambda: ExportedTextEncoder(folder, manifest, load, template),
        )
