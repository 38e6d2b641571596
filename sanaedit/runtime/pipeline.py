"""SanaEditPipeline on exported graphs: `load_pipeline(folder, backend=None)`.

The sampling, CFG, pre/post-processing and prompt cache are the torch pipeline's own code; only the five networks
are swapped for ONNX Runtime or MNN graphs. Each graph call returns a fresh tensor, so nothing accumulates across
steps. A prompt outside the prompt cache runs the LLM with PyTorch from the export's `llm/` folder (then the
connector and projector graphs), and the LLM is released again right after.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..model_folder import MODEL_INDEX, ModelFolderError, load_prompt_cache
from ..pipeline import PipelineConfig, SanaEditPipeline

BACKENDS = {"onnxruntime": "onnx", "mnn": "mnn"}


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
    """prompts -> (encoder_hidden_states, mask): LLM features in PyTorch, connector + projector as graphs."""

    def __init__(self, folder: Path, manifest: dict, connector, projector, template: str):
        self.folder, self.manifest = folder, manifest
        self.connector, self.projector, self.template = connector, projector, template

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._llm_features(prompts)
        hidden = self.projector(self.connector(features))
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.long)

    @torch.no_grad()
    def _llm_features(self, prompts: list[str]) -> torch.Tensor:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..model_folder import load_meta_queries
        from ..models.text_encoder import MetaQueryTextEncoder

        llm_dir = self.folder / self.manifest["llm"]["folder"]
        if not (llm_dir / "config.json").is_file():
            raise ModelFolderError(
                f"{self.folder}: this export has no LLM ({llm_dir} missing), so it can only use its cached prompts "
                f"(the model's own prompt and negative prompt); export again with the llm/ folder for new prompts"
            )
        llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32, local_files_only=True).eval()
        bits = self.manifest["llm"].get("bits")
        if bits:
            from ..quant import quantize_model

            # The tied embedding / LM head stays float (it is a lookup here; the head is never used).
            quantize_model(llm.base_model.layers, bits, self.manifest["llm"].get("group_size"))
        tokenizer = AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
        queries = load_meta_queries(llm_dir)
        encoder = MetaQueryTextEncoder.__new__(MetaQueryTextEncoder)  # only the LLM half is needed
        torch.nn.Module.__init__(encoder)
        encoder.llm, encoder.tokenizer, encoder.template, encoder.max_prompt_tokens = llm, tokenizer, self.template, 300
        encoder.meta_queries = torch.nn.Parameter(queries, requires_grad=False)
        try:
            return encoder.llm_features(prompts)
        finally:
            del encoder, llm  # released as soon as the features exist


class ExportedPipeline(SanaEditPipeline):
    """SanaEditPipeline whose networks are exported graphs (CPU, fp32 I/O)."""

    def __init__(self, folder: Path, manifest: dict, backend: str, threads: int | None = None):
        self.model_dir, self.manifest, self.backend = folder, manifest, backend
        graphs = {name: self._load_graph(name, threads) for name in manifest["graphs"]}
        self.transformer = TransformerGraph(graphs["transformer"], manifest["transformer"])
        self.vae = None
        self.vae_encoder, self.vae_decoder = graphs["vae_encoder"], graphs["vae_decoder"]
        self.config = PipelineConfig.from_dict(manifest.get("pipeline", {}))
        self.prompt_cache = load_prompt_cache(folder)
        encoder = ExportedTextEncoder(folder, manifest, graphs["connector"], graphs["projector"], self.config.template)
        self._text_encoder = None
        self._text_encoder_loader = lambda: encoder
        self.keep_text_encoder = False  # the published runtime's rule: the LLM goes as soon as its features exist

    def _load_graph(self, name: str, threads: int | None):
        entry = self.manifest["graphs"][name]
        path = self.model_dir / entry["file"]
        if not path.is_file():
            raise ModelFolderError(f"{self.model_dir}: exported graph {entry['file']} is missing")
        if self.backend == "onnxruntime":
            from .onnxruntime_backend import OrtGraph

            return OrtGraph(path, threads)
        from .mnn_backend import MnnGraph

        return MnnGraph(path, entry["inputs"], entry["outputs"], threads)

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
