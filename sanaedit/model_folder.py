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

An exported folder (`sanaedit export`) has `model_index.json` with `_class_name` EXPORT_CLASS: one graph per
sub-model, `llm/` (the LLM body as a graph, its token embedding table, tokenizer, meta-queries) and the prompt
cache. Loading checks every piece and raises errors that name the folder and the problem.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MODEL_INDEX = "model_index.json"
META_QUERIES_FILE = "meta_queries.safetensors"
PROMPT_CACHE_FILE = "prompt_cache.safetensors"
REQUIRED = ("transformer", "vae", "llm", "connector", "projector")
MODEL_CLASS = "SanaEditPipeline"  # model_index.json `_class_name` of a PyTorch model folder
EXPORT_CLASS = "SanaEditExport"  # ... of an exported folder
EMBEDDINGS_FILE, EMBEDDINGS_KEY = "llm/embeddings.safetensors", "embed_tokens"  # exported LLM's token table


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete or inconsistent."""


def folder_kind(folder: str | Path) -> str | None:
    """MODEL_CLASS, EXPORT_CLASS or None: what `model_index.json` says a folder is (not checked further)."""
    try:
        index = json.loads((Path(folder) / MODEL_INDEX).read_text())
    except (OSError, ValueError):
        return None
    kind = index.get("_class_name") if isinstance(index, dict) else None
    return kind if kind in (MODEL_CLASS, EXPORT_CLASS) else None


def is_export(folder: str | Path) -> bool:
    return folder_kind(folder) == EXPORT_CLASS


def write_index(folder: Path, class_name: str, pipeline: dict[str, Any], **entries: Any) -> None:
    """model_index.json: the folder's kind, the sanaedit version, the pipeline defaults and any other entries."""
    from . import __version__

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
    if not isinstance(index, dict) or index.get("_class_name") != kind:
        found = index.get("_class_name") if isinstance(index, dict) else None
        raise ModelFolderError(f"{index_path}: _class_name is {found!r}, expected {kind!r}")
    if kind == EXPORT_CLASS:
        return index
    missing = [name for name in REQUIRED if not (model_dir / name).is_dir()]
    if not (model_dir / META_QUERIES_FILE).is_file():
        missing.append(META_QUERIES_FILE)
    if missing:
        raise ModelFolderError(f"{model_dir}: missing component(s): {', '.join(missing)}")
    return index


def load_component(model_dir: Path, name: str, loader: Callable[[Path], Any]) -> Any:
    """Run `loader(model_dir / name)`, turning any failure into an error that names the component."""
    path = Path(model_dir) / name
    try:
        return loader(path)
    except ModelFolderError:
        raise
    except Exception as err:  # library errors (missing weights, shape mismatch, bad config) vary in type
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFolderError(f"{path}: cannot load {name}: {first_line}") from err


def load_meta_queries(model_dir: Path) -> torch.Tensor:
    path = Path(model_dir) / META_QUERIES_FILE
    try:
        tensors = load_file(path)
    except Exception as err:
        raise ModelFolderError(f"{path}: unreadable safetensors file ({err})") from err
    if "meta_queries" not in tensors:
        raise ModelFolderError(f"{path}: no 'meta_queries' tensor (found {sorted(tensors)})")
    return tensors["meta_queries"]


def save_meta_queries(meta_queries: torch.Tensor, model_dir: Path) -> None:
    save_file({"meta_queries": meta_queries.detach().contiguous().cpu()}, Path(model_dir) / META_QUERIES_FILE)


def save_prompt_cache(entries: dict[str, tuple[torch.Tensor, torch.Tensor]], model_dir: Path) -> None:
    """entries: prompt text -> (encoder_hidden_states [1,N,C], encoder_attention_mask [1,N])."""
    tensors, prompts = {}, []
    for i, (prompt, (hidden, mask)) in enumerate(entries.items()):
        tensors[f"{i}.hidden"] = hidden.detach().contiguous().cpu()
        tensors[f"{i}.mask"] = mask.detach().contiguous().cpu()
        prompts.append(prompt)
    save_file(tensors, Path(model_dir) / PROMPT_CACHE_FILE, metadata={"prompts": json.dumps(prompts)})


def write_prompt_cache(
    folder: Path, encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]], prompts: list[str]
) -> None:
    """Store the conditioning of `prompts` (a model's fixed prompt and negative prompt), so later runs with them
    never need the LLM. `encode` is the pipeline's text path."""
    with torch.no_grad():
        entries = {p: tuple(t[:1] for t in encode([p])) for p in dict.fromkeys(prompts)}
    save_prompt_cache(entries, folder)


def load_prompt_cache(model_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    path = Path(model_dir) / PROMPT_CACHE_FILE
    if not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            prompts = json.loads(f.metadata()["prompts"])
            return {p: (f.get_tensor(f"{i}.hidden"), f.get_tensor(f"{i}.mask")) for i, p in enumerate(prompts)}
    except Exception as err:
        raise ModelFolderError(f"{path}: unreadable prompt cache ({err}); delete it to recompute") from err


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target`, on failure it is removed.

    An existing model folder is only moved away once the new one is complete, so a failed save loses nothing.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is an ordinary shared folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def copy_folder(source: Path | None, target: Path) -> Path:
    """Copy a whole folder (an exported model is already its deployable form), atomically."""
    if source is None or not Path(source).is_dir():
        raise ModelFolderError(f"nothing to copy: the pipeline's folder {source} does not exist")
    if Path(target).resolve() == Path(source).resolve():
        return Path(target)
    with atomic_folder(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return Path(target)
