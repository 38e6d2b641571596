"""A PyTorch model folder checked from configs and file headers alone (no weights read, the LLM's included): each
component's files, its weights' names and shapes against its config, and the text path's pieces against each
other. Loading runs these first (formats/torch_folder.py), and so does `sanaedit info`, so both refuse the same
folders with the same one-line errors naming the component."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sanaedit.core.log import quiet_libraries
from sanaedit.errors import ModelFolderError, first_line
from sanaedit.formats.index import META_QUERIES_FILE

# the weight files each kind of component may have (safetensors, its shard index, .bin, its shard index)
DIFFUSERS_WEIGHTS = tuple(
    f"diffusion_pytorch_model.{ext}" for ext in ("safetensors", "safetensors.index.json", "bin", "bin.index.json")
)


LLM_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_files(folder: Path, weights: tuple[str, ...]) -> None:
    """A component folder's config.json is a JSON object (diffusers takes anything else for a hub name and says it
    cannot reach huggingface.co) and one of `weights` is there, else a one-line ValueError (load_component adds the
    folder). A config that is missing or not JSON is left to the loaders, whose errors already say so."""

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        raise ValueError(f"config.json is not a JSON object (it holds {json.dumps(config)[:40]})")
    if not any((folder / name).is_file() for name in weights):
        raise ValueError(f"no weights file (expected {weights[0]}, its .index.json, or {weights[2]})")


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in safetensors `files`, from their headers (no tensor data is read). A missing,
    empty, truncated or garbage file raises ValueError naming it."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            if path.stat().st_size == 0:
                raise ValueError("empty file (0 bytes)")
            with safe_open(path, "pt") as f:
                shapes.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
        except Exception as err:  # safetensors raises its own SafetensorError; OSError for a missing file
            raise ValueError(f"{path.name}: corrupt or truncated safetensors file ({first_line(err)})") from None
    return shapes


def check_diffusers_component(model_dir: Path, name: str, cls) -> dict:
    """`name`'s config builds a model (on the meta device: no memory) whose every tensor is in its weights with the
    same shape, read from the weights' headers. Returns the config. Errors name the component."""

    def check(folder: Path) -> dict:
        from sanaedit.backends.torch_loading import empty_model, weight_files

        check_files(folder, DIFFUSERS_WEIGHTS)
        model = empty_model(cls, folder)
        try:
            files = weight_files(folder)
        except FileNotFoundError:
            return dict(model.config)  # a .bin checkpoint (there: check_files): diffusers' loader checks it
        found = tensor_shapes(files)
        for key, tensor in model.state_dict().items():
            if key not in found:
                raise ValueError(f"its weights have no {key} (the config needs it)")
            if found[key] != tuple(tensor.shape):
                raise ValueError(
                    f"{key} has shape {list(found[key])} in the weights, the config needs {list(tensor.shape)}"
                )
        return dict(model.config)

    return load_component(model_dir, name, check)


def check_llm(model_dir: Path) -> int:
    """The LLM's config, tokenizer files and weight headers (never its weights); returns its width."""

    def check(folder: Path) -> int:
        check_files(folder, LLM_WEIGHTS)
        config = json.loads((folder / "config.json").read_text())
        width = config.get("hidden_size") or (config.get("text_config") or {}).get("hidden_size")
        if not isinstance(width, int):
            raise ValueError("config.json has no hidden_size")
        if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            raise ValueError("no tokenizer files (tokenizer.json / tokenizer_config.json)")
        index = folder / "model.safetensors.index.json"
        files = (
            sorted({folder / n for n in json.loads(index.read_text())["weight_map"].values()})
            if index.is_file()
            else []
        )
        if not files and (folder / "model.safetensors").exists():
            files = [folder / "model.safetensors"]
        for key, shape in tensor_shapes(files).items():
            if key.endswith("embed_tokens.weight") and shape[-1] != width:
                raise ValueError(f"{key} is {shape[-1]} wide, its config says hidden_size {width}")
        return width

    return load_component(model_dir, "llm", check)


def check_text_path(model_dir: str | Path, caption_channels: int | None = None) -> None:
    """Every piece of the text path, from configs and file headers only (no weights loaded, the LLM included):
    the LLM (config, tokenizer files, weight headers), meta-queries, connector and projector (weights against their
    configs), and that they fit each other and the transformer. So a folder that loads also runs a new prompt."""
    from sanaedit.models.connector import Connector
    from sanaedit.models.projector import Projector

    model_dir = Path(model_dir)
    width = check_llm(model_dir)
    path = model_dir / META_QUERIES_FILE
    try:
        shape = tensor_shapes([path]).get("meta_queries")
    except ValueError as err:
        raise ModelFolderError(f"{model_dir}: {err}") from None
    if shape is None:
        raise ModelFolderError(f"{path}: no 'meta_queries' tensor")
    if len(shape) != 2 or shape[1] != width:
        raise ModelFolderError(f"{path}: meta_queries shape {shape} does not match the LLM width {width}")
    connector = check_diffusers_component(model_dir, "connector", Connector)
    projector = check_diffusers_component(model_dir, "projector", Projector)
    if connector["width"] != width:
        raise ModelFolderError(f"{model_dir}: connector width {connector['width']} != LLM width {width}")
    if projector["in_features"] != width:
        raise ModelFolderError(f"{model_dir}: projector in_features {projector['in_features']} != LLM width {width}")
    if caption_channels is not None and projector["out_features"] != caption_channels:
        raise ModelFolderError(
            f"{model_dir}: projector out_features {projector['out_features']} != transformer caption_channels "
            f"{caption_channels}"
        )


def caption_channels(model_dir: Path) -> int | None:

    try:
        return json.loads((model_dir / "transformer" / "config.json").read_text()).get("caption_channels")
    except (OSError, ValueError, AttributeError):
        return None  # the transformer's own load names what is wrong with it


def load_component(model_dir: Path, name: str, loader: Callable[[Path], Any]) -> Any:
    """Run `loader(model_dir / name)`, turning any failure into an error that names the component."""
    quiet_libraries()  # the CLI's verbosity for diffusers / transformers, imported by now (their loading bars)
    path = Path(model_dir) / name
    try:
        return loader(path)
    except ModelFolderError:
        raise
    except Exception as err:  # library errors (missing weights, shape mismatch, bad config) vary in type
        raise ModelFolderError(f"{path}: cannot load {name}: {first_line(err)}") from err
