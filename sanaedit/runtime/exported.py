"""The exported-folder factory: a SanaEditPipeline whose networks are ONNX Runtime or MNN graphs.

Sampling, CFG, pre/post-processing and the prompt cache are the pipeline's own code; only the networks are graphs,
behind the same `FlowModel` the PyTorch pipeline uses. Each graph call returns a fresh tensor, so nothing
accumulates across steps. A prompt outside the prompt cache runs the LLM graph (loaded for that call and released
right after), then the connector and projector graphs. Nothing here imports diffusers, and transformers only for
the tokenizer of a new prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..backends import BACKENDS, load_graph
from ..flow import FlowModel
from ..model_folder import (
    EMBEDDINGS_KEY,
    EXPORT_CLASS,
    TINY_GRAPHS,
    ModelFolderError,
    choose_vae,
    first_line,
    folder_refiner,
    load_prompt_cache,
    read_index,
)
from ..pipeline import PipelineConfig, SanaEditPipeline

GRAPHS = ["connector", "projector", "transformer", "vae_encoder", "vae_decoder"]  # loaded up front


class TransformerGraph:
    """The DiT graph with the published inputs; absent mask / ref become what the published runtime passes."""

    def __init__(self, graph):
        self.graph = graph

    def __call__(self, sample, encoder_hidden_states, timestep, encoder_attention_mask=None, ref_latents=None):
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2])
        if ref_latents is None:
            ref_latents = torch.zeros_like(sample)
        return self.graph(sample, encoder_hidden_states, timestep, encoder_attention_mask, ref_latents)


class ExportedTextEncoder:
    """prompts -> (encoder_hidden_states, mask), all as graphs: the LLM graph is loaded for the call and released
    right after; the token embeddings are read row by row from the export's table (only the prompt's rows)."""

    def __init__(self, folder: Path, manifest: dict, connector, projector, load_graph, template: str):
        self.folder, self.manifest, self.template = folder, manifest, template
        self.connector, self.projector, self.load_graph = connector, projector, load_graph

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        llm = self.load_graph(self.manifest["llm"]["graph"])
        try:
            features = llm(*self.llm_inputs(prompts))
        finally:
            del llm  # released as soon as the features exist
        hidden = self.projector(self.connector(features))
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.long)

    def llm_inputs(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors import safe_open
        from transformers import AutoTokenizer

        from ..model_folder import load_meta_queries
        from ..models.prompt import llm_inputs, tokenize

        info = self.manifest["llm"]
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.folder / info["folder"], local_files_only=True)
            input_ids, text_mask = tokenize(tokenizer, self.template, prompts, info["max_prompt_tokens"])
            wanted = input_ids.unique()  # sorted
            with safe_open(self.folder / info["embeddings"], "pt") as table:
                rows = table.get_slice(EMBEDDINGS_KEY)
                found = torch.cat([rows[int(i) : int(i) + 1] for i in wanted]).float()
        except Exception as err:  # tokenizer / safetensors errors vary in type
            raise ModelFolderError(
                f"{self.folder}: cannot read the LLM's tokenizer or embeddings ({err}); export again"
            ) from err
        token_embeds = found[torch.searchsorted(wanted, input_ids)]
        queries = load_meta_queries(self.folder / info["folder"]).float()
        embeds, mask = llm_inputs(token_embeds, text_mask, queries)
        return embeds, mask.float()


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


def check_exported(folder: str | Path) -> dict:
    """What loading an exported folder checks, without loading a graph: the manifest, every graph file and its size,
    the LLM's embeddings and meta-queries headers, the prompt cache. Returns the manifest."""
    from safetensors import safe_open

    from .release import check_release, is_release_layout

    folder = Path(folder)
    if is_release_layout(folder):  # the published MNN release's layout (runtime/release.py)
        return check_release(folder).manifest or {}
    manifest = read_index(folder, kind=EXPORT_CLASS)
    missing = [n for n in ("llm", *GRAPHS) if n not in manifest.get("graphs", {})]
    if missing:
        raise ModelFolderError(f"{folder}: the export has no {', '.join(missing)} graph: export again")
    for entry in manifest["graphs"].values():
        check_graph_file(folder, entry)
    info = manifest.get("llm", {})
    for name in (info.get("embeddings"), info.get("meta_queries")):
        if name:
            try:
                with safe_open(folder / name, "pt") as f:
                    list(f.keys())
            except Exception as err:
                reason = first_line(err)
                raise ModelFolderError(f"{folder / name}: corrupt or missing ({reason}); export again") from None
    load_prompt_cache(folder)
    return manifest


def load_exported(
    folder: str | Path, backend: str | None = None, threads: int | None = None, vae: str | None = None
) -> SanaEditPipeline:
    """An exported folder as a pipeline on its manifest's backend (or `backend`, which must run its format). `vae`:
    "full" (the DC-AE graphs), "tiny" (the light autoencoder's; the DC-AE's are then not loaded), None: the
    folder's default."""
    from .release import is_release_layout, load_release

    folder = Path(folder)
    if is_release_layout(folder):  # the published MNN release's files, or our MNN export of them
        return load_release(folder, backend, threads, vae)
    manifest = read_index(folder, kind=EXPORT_CLASS)
    backend = backend or manifest["backend"]
    if BACKENDS.get(backend) != manifest["format"]:
        raise ValueError(
            f"{folder} holds {manifest['format']} graphs; backend {backend!r} cannot run them "
            f"(use {manifest['backend']!r}, or export with --format {BACKENDS.get(backend, '?')})"
        )
    missing = [n for n in ("llm", *GRAPHS) if n not in manifest["graphs"]]
    if missing:
        raise ModelFolderError(
            f"{folder}: the export has no {', '.join(missing)} graph (made by an older sanaedit?): export again"
        )

    def load(name: str):
        entry = manifest["graphs"][name]
        check_graph_file(folder, entry)
        return load_graph(folder / entry["file"], backend, entry["inputs"], entry["outputs"], threads)

    config = PipelineConfig.from_dict(manifest.get("pipeline", {}))
    tiny = choose_vae(folder, vae, config.vae, all(n in manifest["graphs"] for n in TINY_GRAPHS)) == "tiny"
    autoencoder = list(TINY_GRAPHS) if tiny else ["vae_encoder", "vae_decoder"]
    # the LLM only when a new prompt needs it; one autoencoder's graphs
    graphs = {name: load(name) for name in [*GRAPHS[:3], *autoencoder]}
    info = manifest["transformer"]
    flow = FlowModel(
        TransformerGraph(graphs["transformer"]),
        graphs[autoencoder[0]],
        graphs[autoencoder[1]],
        latent_channels=info["out_channels"],
        ref_channels=info["ref_channels"],
        vae_scale=manifest["vae"]["scale_factor"],
        refiner=folder_refiner(folder, config.upsample),
    )
    encoder = ExportedTextEncoder(folder, manifest, graphs["connector"], graphs["projector"], load, config.template)
    return SanaEditPipeline(
        flow,
        config=config,
        prompt_cache=load_prompt_cache(folder),
        text_encoder_loader=lambda: encoder,
        model_dir=folder,
        backend=backend,
    )
