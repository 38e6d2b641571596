"""A folder in the published release's layout (`release_files.py`) as a source of networks: the release's files
alone (a download of MNN-Sana-Edit-V2: no model_index.json, no prompt cache, no Hugging Face tokenizer), or our own
MNN export (the same files plus model_index.json and a prompt cache).

Everything MNN's engine does, from Python: the tokenizer read from `tokenizer.mtok` / `tokenizer.txt`, token
embeddings from `embeddings_bf16.bin` or tied inside `llm.mnn.weight`, hidden states from `llm.mnn` through MNN's
module API, the meta-queries from `meta_queries.mnn`, the scaling factor applied around the VAE graphs. For the
release's files alone the engine's defaults apply: its schedule, the resolution the graphs were exported for (512
for the release), its fixed prompt, CFG 4.5 with "" as negative. The conditioning of that prompt and of "" is
computed once (through the LLM) and stored beside the release, or in the user's cache folder when the release is
read-only, keyed to the files it came from.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sanaedit.backends import load_graph
from sanaedit.backends.mnn_inspect import GraphInfo, inspect_graphs
from sanaedit.backends.mnn_llm import MnnLlm
from sanaedit.core.arrays import NumpyArrays
from sanaedit.core.choices import Backend, Format, Vae
from sanaedit.core.config import PROMPT_TEMPLATE, PipelineConfig
from sanaedit.core.flow import FlowModel
from sanaedit.errors import ModelFolderError
from sanaedit.formats.exported import ControlledGraph, TransformerGraph, check_graph_file
from sanaedit.formats.index import CONTROLLED_GRAPH, EXPORT_CLASS, MODEL_INDEX, TINY_GRAPHS, read_index
from sanaedit.formats.prompt_cache import load_prompt_cache, save_prompt_cache
from sanaedit.formats.refiner import folder_refiner, load_refiner_graph
from sanaedit.formats.release_files import (
    ENGINE_GUIDANCE,
    ENGINE_PROMPT,
    ENGINE_RESOLUTION,
    ENGINE_SCALING_FACTOR,
    ENGINE_STEPS,
    GRAPHS,
    LLM_FILES,
    LLM_GRAPH,
    EmbeddingTable,
    check_files,
    fingerprint,
    llm_configs,
    load_meta_queries_mnn,
    tokenizer_file,
)
from sanaedit.formats.source import Networks
from sanaedit.models.refine_tiles import REFINER_FILE, REFINER_GRAPH
from sanaedit.plan import FolderInfo, RunPlan

MAX_PROMPT_TOKENS = 300  # as the model folders' text encoder (the engine itself does not cut long prompts)


@dataclass
class ReleaseCheck:
    manifest: dict | None  # None: the release's files alone
    graphs: dict[str, GraphInfo] | None  # what the graph files hold (read for the release's files alone)
    config: dict
    llm_config: dict
    meta_queries: np.ndarray


def check_release(folder: str | Path) -> ReleaseCheck:
    """What loading checks, without loading a graph: every file present (one line naming each missing one), every
    graph readable with the engine's I/O names and its weight file long enough, the LLM's configs, tokenizer,
    embeddings and meta-queries readable and consistent."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder does not exist")
    manifest = read_index(folder, EXPORT_CLASS) if (folder / MODEL_INDEX).exists() else None
    check_files(folder)
    infos = None
    if manifest is not None:
        for entry in manifest.get("graphs", {}).values():
            check_graph_file(folder, entry)
    else:
        ios = {**GRAPHS, "llm": LLM_GRAPH}
        found = inspect_graphs([folder / io.file for io in ios.values()])
        infos = {name: found[folder / io.file] for name, io in ios.items()}
        for name, info in infos.items():
            problem = info.error or info.weight_problem()
            if problem:
                raise ModelFolderError(f"{folder}: {problem}")
            lacking = [n for n in [*ios[name].inputs, *ios[name].outputs] if n not in [*info.inputs, *info.outputs]]
            if lacking:
                raise ModelFolderError(
                    f"{folder / ios[name].file}: no {', '.join(lacking)} (it has {list(info.inputs)} -> "
                    f"{info.outputs}): not the release's {name} graph"
                )
    config, llm_config = llm_configs(folder)
    path = tokenizer_file(folder, config)
    with open(path, "rb") as f:
        head = f.read(16).split()
    if len(head) < 2 or head[0] != b"430":
        raise ModelFolderError(f"{path}: not an MNN tokenizer file")
    EmbeddingTable(folder, config, llm_config)
    queries = load_meta_queries_mnn(folder / "llm" / "meta_queries.mnn")
    if queries.shape[1] != llm_config["hidden_size"]:
        raise ModelFolderError(
            f"{folder / 'llm' / 'meta_queries.mnn'}: {queries.shape[1]} wide, the LLM is {llm_config['hidden_size']}"
        )
    return ReleaseCheck(manifest, infos, config, llm_config, queries)


class ScaledVaeGraph:
    """A release VAE graph with the engine's scaling around it: latents the sampler sees are DC-AE's x factor."""

    def __init__(self, graph, factor: float, decode: bool):
        self.graph, self.factor, self.decode = graph, factor, decode

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.graph(x / self.factor) if self.decode else self.graph(x) * self.factor


class ReleaseTextEncoder:
    """prompts -> (encoder_hidden_states, mask) as the engine computes them: template, MNN tokenizer, embedding rows,
    [tokens ; meta-queries] through llm.mnn (loaded for the call), the last rows -> connector -> projector."""

    def __init__(self, folder: Path, connector, projector, template: str, max_tokens: int, threads, on_encoded=None):
        self.folder, self.connector, self.projector = folder, connector, projector
        self.template, self.max_tokens, self.threads, self.on_encoded = template, max_tokens, threads, on_encoded
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from sanaedit.errors import TokenizerFileError
            from sanaedit.formats.mnn_tokenizer import load_mnn_tokenizer

            config, _ = llm_configs(self.folder)
            try:
                self._tokenizer = load_mnn_tokenizer(tokenizer_file(self.folder, config))
            except TokenizerFileError as err:
                raise ModelFolderError(str(err)) from None
        return self._tokenizer

    def token_ids(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(self.template.replace("{prompt}", prompt))[: self.max_tokens]

    def llm_features(self, prompts: list[str]) -> np.ndarray:
        """[B, queries, width]: the last rows of the LLM's final-norm hidden states, one prompt at a time."""
        config, llm_config = llm_configs(self.folder)
        table = EmbeddingTable(self.folder, config, llm_config)
        queries = load_meta_queries_mnn(self.folder / "llm" / "meta_queries.mnn")
        llm = MnnLlm(self.folder / LLM_GRAPH.file, self.threads)
        try:
            rows = [llm(np.concatenate([table.rows(self.token_ids(p)), queries]), queries.shape[0]) for p in prompts]
        finally:
            del llm  # released as soon as the features exist
        return np.stack(rows)

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        hidden = self.projector(self.connector(self.llm_features(prompts)))
        mask = np.ones(hidden.shape[:2], np.int64)
        if self.on_encoded is not None:
            self.on_encoded(prompts, hidden, mask)
        return hidden, mask


# ------------------------------------------------------------------------------------ the release's prompt cache
def _cache_sources(folder: Path) -> list[str]:
    config, llm_config = llm_configs(folder)
    names = [*LLM_FILES, *(n for g in ("connector", "projector") for n in (GRAPHS[g].file, GRAPHS[g].file + ".weight"))]
    names.append(str(tokenizer_file(folder, config).relative_to(folder)))
    names.append(str(EmbeddingTable(folder, config, llm_config).path.relative_to(folder)))
    return sorted(set(names))


def cache_folders(folder: Path) -> list[Path]:
    """Where a release's prompt cache lives: beside it, else (read-only release) in the user's cache folder."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sanaedit" / "releases"
    user = base / hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return [folder, user]


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def load_release_cache(folder: Path) -> dict:
    key = fingerprint(folder, _cache_sources(folder))
    for where in cache_folders(folder):
        try:  # one computed from other files (the release was replaced) reads as empty: computed again
            entries = load_prompt_cache(where, match={"release_fingerprint": key}, framework="np")
        except Exception:  # unreadable: it is only a cache
            continue
        if entries:
            return entries
    return {}


def store_release_cache(folder: Path, entries: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path | None:
    """Merge `entries` into the release's prompt cache (atomically); None when no place is writable."""
    entries = {**load_release_cache(folder), **entries}
    key = fingerprint(folder, _cache_sources(folder))
    for where in cache_folders(folder):
        try:
            where.mkdir(parents=True, exist_ok=True)
            if not _writable(where):
                continue
            return save_prompt_cache(entries, where, metadata={"release_fingerprint": key})
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------------------------------- loading
def engine_config(resolution: int) -> PipelineConfig:
    """The published engine's defaults (sana_diffusion.cpp / its app): schedule, prompt, CFG 4.5 with ""."""
    return PipelineConfig(
        resolution=resolution,
        prompt=ENGINE_PROMPT,
        negative_prompt="",
        num_inference_steps=ENGINE_STEPS,
        guidance_scale=ENGINE_GUIDANCE,
        shift=3.0,
        schedule="published",
        template=PROMPT_TEMPLATE,
    )


def _dim(info: GraphInfo | None, name: str, axis: int, default: int) -> int:
    dims = info.inputs.get(name, []) if info is not None else []
    return dims[axis] if len(dims) > axis and isinstance(dims[axis], int) and dims[axis] > 0 else default


class ReleaseFolder:
    """A folder in the published release's layout (the release's files alone, or our MNN export of them) as a source
    of networks (runtime/sources.py). Everything is checked on opening (`check_release`); `networks(plan)` loads the
    DiT and one autoencoder's graphs now, the connector and projector with the text encoder, only when a prompt
    outside the prompt cache needs them."""

    def __init__(self, folder: str | Path):
        self.folder = folder = Path(folder)
        self.found = found = check_release(folder)
        self.entries = entries = (found.manifest or {}).get("graphs", {})
        if found.manifest is not None:
            config = PipelineConfig.from_dict(found.manifest.get("pipeline", {}))
        else:  # the release's files alone: the shapes its graphs were exported for, the engine's constants
            config = engine_config(_dim(found.graphs["vae_encoder"], "image", 2, ENGINE_RESOLUTION))
        self.info = FolderInfo(
            folder=folder,
            format=Format.MNN,
            config=config,
            has_tiny_vae=all(n in entries for n in TINY_GRAPHS),
            has_refiner=REFINER_GRAPH in entries or (folder / REFINER_FILE).is_file(),
            release_layout=True,
            controlnet=folder / entries[CONTROLLED_GRAPH]["file"] if CONTROLLED_GRAPH in entries else None,
        )

    def networks(self, plan: RunPlan) -> Networks:
        folder, manifest, entries, threads = self.folder, self.found.manifest, self.entries, plan.threads
        config, tiny = plan.config, plan.vae == Vae.TINY
        skip = ("connector", "projector", *(("vae_encoder", "vae_decoder") if tiny else ()))

        def load(name: str):
            io = GRAPHS[name]
            return load_graph(folder / io.file, Backend.MNN, io.inputs, io.outputs, threads, name)

        graphs = {name: load(name) for name in GRAPHS if name not in skip}
        if manifest is not None:
            channels, ref_channels = manifest["transformer"]["out_channels"], manifest["transformer"]["ref_channels"]
            vae_scale = manifest["vae"]["scale_factor"]
            factor = manifest["vae"].get("scaling_factor", ENGINE_SCALING_FACTOR)
            max_tokens = manifest.get("llm", {}).get("max_prompt_tokens", MAX_PROMPT_TOKENS)
            prompt_cache, on_encoded = load_prompt_cache(folder, framework="np"), None
        else:  # the release's files alone: the shapes its graphs were exported for, the engine's constants
            infos = self.found.graphs
            resolution = config.resolution
            channels = _dim(infos["vae_decoder"], "latent_sample", 1, 32)
            vae_scale = max(1, resolution // _dim(infos["vae_decoder"], "latent_sample", 2, resolution // 32))
            ref_channels = _dim(infos["transformer"], "ref_latents", 1, channels)
            factor, max_tokens = ENGINE_SCALING_FACTOR, MAX_PROMPT_TOKENS
            prompt_cache = load_release_cache(folder)

            def on_encoded(prompts, hidden, mask):
                keep = {config.prompt, config.negative_prompt}
                new = {p: (hidden[i : i + 1], mask[i : i + 1]) for i, p in enumerate(prompts) if p in keep}
                if new:
                    store_release_cache(folder, new)

        if tiny:  # ours, beside the release's files: scaled latents already (their entries in model_index.json)
            encoder, decoder = (
                load_graph(
                    folder / entries[n]["file"], Backend.MNN, entries[n]["inputs"], entries[n]["outputs"], threads
                )
                for n in TINY_GRAPHS
            )
        else:
            encoder, decoder = (
                ScaledVaeGraph(graphs[n], factor, decode=n == "vae_decoder") for n in ("vae_encoder", "vae_decoder")
            )
        flow = FlowModel(
            TransformerGraph(graphs["transformer"]),
            encoder,
            decoder,
            latent_channels=channels,
            ref_channels=ref_channels,
            vae_scale=vae_scale,
            # ours, beside the release's files, when exported with one (its graph; the PyTorch one in older exports)
            refiner=load_refiner_graph(folder, manifest or {}, Backend.MNN, threads) or folder_refiner(folder),
            arrays=NumpyArrays(),  # graphs: NumPy in and out
        )
        if plan.controlnet is not None:  # ours, beside the release's files: checked now, loaded when first used
            entry = entries[CONTROLLED_GRAPH]
            check_graph_file(folder, entry)
            flow.controlnet = ControlledGraph(
                lambda: load_graph(folder / entry["file"], Backend.MNN, entry["inputs"], entry["outputs"], threads)
            )

        def text_encoder():  # a fresh one each time: releasing it frees the tokenizer, connector and projector too
            return ReleaseTextEncoder(
                folder, load("connector"), load("projector"), config.template, max_tokens, threads, on_encoded
            )

        return Networks(flow=flow, prompt_cache=prompt_cache, text_encoder_loader=text_encoder)
