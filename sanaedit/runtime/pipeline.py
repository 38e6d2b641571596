"""SanaEditPipeline on exported graphs: `load_pipeline(folder, backend=None)`.

The sampling, CFG, pre/post-processing and prompt cache are the torch pipeline's own code; only the five networks
are swapped for ONNX Runtime or MNN graphs. Each graph call returns a fresh tensor, so nothing accumulates across
steps. A prompt outside the prompt cache runs the LLM graph (loaded for that call and released right after), then
the connector and projector graphs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..model_folder import MODEL_INDEX, ModelFolderError, load_prompt_cache
from ..pipeline import PipelineConfig, SanaEditPipeline

BACKENDS = {"onnxruntime": "onnx", "mnn": "mnn"}
GRAPHS = ["connector", "projector", "transformer", "vae_encoder", "vae_decoder"]  # loaded up front


def is_export(folder: str | Path) -> bool:
    from ..export import EXPORT_CLASS

    index = Path(folder) / MODEL_INDEX
    try:
        return json.loads(index.read_text()).get("_class_name") == EXPORT_CLASS
    except (OSError, ValueError):
        return False


class TransformerGraph:
    """The DiT graph with the attributes the pipeline reads from a torch transformer."""

    def __init__(self, graph, info: dict):
        self.graph = graph
        self.ref_channels = info["ref_channels"]
        self.out_channels = info["out_channels"]

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

        from ..export.folder import EMBEDDINGS_KEY
        from ..model_folder import load_meta_queries
        from ..models.text_encoder import llm_inputs, tokenize

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


class ExportedPipeline(SanaEditPipeline):
    """SanaEditPipeline whose networks are exported graphs (CPU, fp32 I/O)."""

    def __init__(self, folder: Path, manifest: dict, backend: str, threads: int | None = None):
        self.model_dir, self.manifest, self.backend = folder, manifest, backend
        self.threads = threads
        missing = [n for n in ("llm", *GRAPHS) if n not in manifest["graphs"]]
        if missing:
            raise ModelFolderError(
                f"{folder}: the export has no {', '.join(missing)} graph (made by an older sanaedit?): export again"
            )
        graphs = {name: self._load_graph(name) for name in GRAPHS}  # the LLM only when a new prompt needs it
        self.transformer = TransformerGraph(graphs["transformer"], manifest["transformer"])
        self.vae = None
        self.vae_encoder, self.vae_decoder = graphs["vae_encoder"], graphs["vae_decoder"]
        self.config = PipelineConfig.from_dict(manifest.get("pipeline", {}))
        self.prompt_cache = load_prompt_cache(folder)
        encoder = ExportedTextEncoder(
            folder, manifest, graphs["connector"], graphs["projector"], self._load_graph, self.config.template
        )
        self._text_encoder = None
        self._text_encoder_loader = lambda: encoder
        self.keep_text_encoder = False  # the published runtime's rule: the LLM goes as soon as its features exist

    def _load_graph(self, name: str):
        entry = self.manifest["graphs"][name]
        path = self.model_dir / entry["file"]
        if not path.is_file():
            raise ModelFolderError(f"{self.model_dir}: exported graph {entry['file']} is missing")
        if self.backend == "onnxruntime":
            from .onnxruntime_backend import OrtGraph

            return OrtGraph(path, self.threads)
        from .mnn_backend import MnnGraph

        return MnnGraph(path, entry["inputs"], entry["outputs"], self.threads)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def latent_channels(self) -> int:
        return self.transformer.out_channels

    @property
    def vae_scale(self) -> int:
        return self.manifest["vae"]["scale_factor"]

    def to(self, device=None, dtype=None) -> ExportedPipeline:
        if (device is not None and torch.device(device).type != "cpu") or dtype not in (None, torch.float32):
            raise ValueError(f"an exported {self.backend} pipeline runs on the CPU with float32 inputs only")
        return self

    def save_pretrained(self, model_dir, prompt_cache: bool = True):
        raise NotImplementedError("an exported folder is already the deployable form; export again from the model")


def load_pipeline(folder: str | Path, backend: str | None = None, threads: int | None = None):
    """A pipeline for `folder`: an exported folder runs on its manifest's backend (or `backend`, which must match
    its format); a normal model folder runs on PyTorch (`backend` None or 'torch')."""
    folder = Path(folder)
    if not is_export(folder):
        if backend not in (None, "torch"):
            raise ValueError(
                f"{folder} is a PyTorch model folder; backend {backend!r} needs an exported folder "
                f"(`sanaedit export {folder} --format {BACKENDS.get(backend, 'onnx')} --out DIR`)"
            )
        return SanaEditPipeline.from_pretrained(folder)
    manifest = json.loads((folder / MODEL_INDEX).read_text())
    backend = backend or manifest["backend"]
    if BACKENDS.get(backend) != manifest["format"]:
        raise ValueError(
            f"{folder} holds {manifest['format']} graphs; backend {backend!r} cannot run them "
            f"(use {manifest['backend']!r}, or export with --format {BACKENDS.get(backend, '?')})"
        )
    return ExportedPipeline(folder, manifest, backend, threads)
