"""Folder formats on disk, in one leaf module (names, constants, index and prompt-cache writing): the PyTorch model
folder and the exported folder. Everything that writes or reads either kind goes through here, so export ->
runtime needs no import between them.

A model folder is `model_index.json` plus one subfolder per component in its library's own layout:

    model_index.json            pipeline settings + which class loads each component
    transformer/                diffusers (SanaEditTransformer2DModel, readable as SanaTransformer2DModel)
    vae/                        diffusers AutoencoderDC
    llm/                        transformers causal LM + tokenizer
    meta_queries.safetensors    {"meta_queries": [num_queries, llm_width]}
    connector/, projector/      diffusers-style config.json + safetensors
    prompt_cache.safetensors    optional: final conditioning of the fixed prompts, so no LLM is needed for them
    tiny_vae/                   optional: a light autoencoder for the DC-AE's latents (models/tiny_vae.py)
    refiner.safetensors         optional: the learned full-resolution refiner (models/refiner.py), in exports too
    controlnet/                 optional: diffusers SanaControlNetModel (models/controlnet.py), used by default

An exported folder (`sanaedit export`) has `model_index.json` with `_class_name` EXPORT_CLASS: one graph per
sub-model, `llm/` (the LLM body as a graph, its token embedding table, tokenizer, meta-queries) and the prompt
cache. Loading checks every piece and raises errors that name the folder and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanaedit.errors import ModelFolderError
from sanaedit.formats.release_files import LLM_FILES, TOKENIZER_FILES, graph_files

if TYPE_CHECKING:
    pass

MODEL_INDEX = "model_index.json"
META_QUERIES_FILE = "meta_queries.safetensors"
PROMPT_CACHE_FILE = "prompt_cache.safetensors"
REQUIRED = ("transformer", "vae", "llm", "connector", "projector")
MODEL_CLASS = "SanaEditPipeline"  # model_index.json `_class_name` of a PyTorch model folder
EXPORT_CLASS = "SanaEditExport"  # ... of an exported folder
RELEASE_KIND = "MNNRelease"  # no model_index.json: the published MNN release's files (formats/release_files.py)
RELEASE_LAYOUT = "mnn-release"  # model_index.json "layout" of an MNN export: the release's files, plus ours
EMBEDDINGS_FILE, EMBEDDINGS_KEY = "llm/embeddings.safetensors", "embed_tokens"  # exported LLM's token table
TINY_VAE = "tiny_vae"  # the optional light autoencoder's component (and the exported graphs' prefix)
# A DiT stored in int8 (`sanaedit export DIR --format int8`, models/int8.py) says so in its config.json under this key
STORED_INT8 = "sanaedit_int8"
TINY_GRAPHS = ("tiny_vae_encoder", "tiny_vae_decoder")  # its exported graphs (scaled latents, pixels in [-1, 1])
CONTROLNET = "controlnet"  # the optional ControlNet's component
CONTROLLED_GRAPH = "transformer_controlnet"  # its exported graph: the DiT with the ControlNet, in one graph


def folder_kind(folder: str | Path) -> str | None:
    """MODEL_CLASS, EXPORT_CLASS or None: what `model_index.json` says a folder is (not checked further);
    RELEASE_KIND for a folder without one that holds the published MNN release's files (maybe not all)."""
    try:
        index = json.loads((Path(folder) / MODEL_INDEX).read_text())
    except (OSError, ValueError):
        return RELEASE_KIND if looks_like_release(folder) else None
    kind = index.get("_class_name") if isinstance(index, dict) else None
    return kind if kind in (MODEL_CLASS, EXPORT_CLASS) else None


def is_export(folder: str | Path) -> bool:
    """Graphs for a runtime (ONNX Runtime / MNN), not PyTorch weights: an export, or the MNN release's files."""
    return folder_kind(folder) in (EXPORT_CLASS, RELEASE_KIND)


def write_index(folder: Path, class_name: str, pipeline: dict[str, Any], **entries: Any) -> None:
    """model_index.json: the folder's kind, the sanaedit version, the pipeline defaults and any other entries."""
    from sanaedit import __version__

    index = {"_class_name": class_name, "_sanaedit_version": __version__, **entries, "pipeline": pipeline}
    (Path(folder) / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def read_index(model_dir: Path, kind: str = MODEL_CLASS) -> dict[str, Any]:
    """The index of a folder of `kind`, its required pieces checked (for a model folder)."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise ModelFolderError(f"{model_dir}: model folder does not exist")
    if not model_dir.is_dir():
        raise ModelFolderError(f"{model_dir}: not a folder (a model is a folder with {MODEL_INDEX})")
    index_path = model_dir / MODEL_INDEX
    if not index_path.is_file():
        raise ModelFolderError(
            f"{model_dir}: no {MODEL_INDEX}; not a sanaedit model folder "
            "(build one from published parts with `sanaedit assemble`)"
        )
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{index_path}: not valid JSON ({err})") from err
    if not isinstance(index, dict):
        raise ModelFolderError(
            f"{index_path}: holds {json.dumps(index)[:40]}, not the JSON object a model folder's index is "
            "(rewrite it, or make the folder again with `sanaedit assemble` / `save_pretrained`)"
        )
    if index.get("_class_name") != kind:
        found = index.get("_class_name")
        raise ModelFolderError(f"{index_path}: _class_name is {found!r}, expected {kind!r}")
    if kind == EXPORT_CLASS:
        return index
    missing = [name for name in REQUIRED if not (model_dir / name).is_dir()]
    if not (model_dir / META_QUERIES_FILE).is_file():
        missing.append(META_QUERIES_FILE)
    if missing:
        raise ModelFolderError(f"{model_dir}: missing component(s): {', '.join(missing)}")
    return index


def is_release_layout(folder: str | Path) -> bool:
    """The release's files alone, or an export of ours in the release's layout."""
    kind = folder_kind(folder)
    if kind == RELEASE_KIND:
        return True
    if kind != EXPORT_CLASS:
        return False
    try:
        return json.loads((Path(folder) / MODEL_INDEX).read_text()).get("layout") == RELEASE_LAYOUT
    except (OSError, ValueError, AttributeError):
        return False


MIN_PROMPT_LLM_WIDTH = 256  # Qwen3-0.6B is 1024 wide; the bundled and test models' LLMs are 32-wide stand-ins


def llm_width(folder: str | Path) -> int | None:
    """The LLM's hidden size, from the meta-queries' header (a model or an exported folder); None if unreadable."""
    from safetensors import safe_open

    folder = Path(folder)
    path = folder / META_QUERIES_FILE
    if folder_kind(folder) in (EXPORT_CLASS, RELEASE_KIND):
        path = folder / "llm" / META_QUERIES_FILE
        try:  # the MNN layout: the LLM's own config says
            return int(json.loads((folder / "llm" / "llm_config.json").read_text())["hidden_size"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    try:
        with safe_open(path, "np") as f:  # "np": the header alone, torch-free
            return int(f.get_slice("meta_queries").get_shape()[-1])
    except Exception:
        return None


def stored_int8(folder: str | Path) -> bool:
    """Whether a model folder's DiT is stored in int8 (its blocks' matmuls run in int8 whatever --dtype says)."""
    try:
        config = json.loads((Path(folder) / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get(STORED_INT8))


def follows_prompts(folder: str | Path) -> bool:
    """Whether the model can follow a prompt other than its own. An LLM narrower than MIN_PROMPT_LLM_WIDTH is a
    random stand-in (the bundled model's is 32 wide, trained on its one style prompt): it reads no instruction."""
    width = llm_width(folder)
    return width is None or width >= MIN_PROMPT_LLM_WIDTH


def looks_like_release(folder: str | Path) -> bool:
    """No model_index.json, and at least one of the release's own files: a release (maybe partly downloaded)."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / MODEL_INDEX).exists():
        return False
    return any((folder / name).exists() for name in [*graph_files(), *LLM_FILES, *TOKENIZER_FILES])
