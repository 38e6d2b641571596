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

An exported folder (`sanaedit export`) has `model_index.json` with `_class_name` EXPORT_CLASS: one graph per
sub-model, `llm/` (the LLM body as a graph, its token embedding table, tokenizer, meta-queries) and the prompt
cache. Loading checks every piece and raises errors that name the folder and the problem.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanaedit.core.log import quiet_libraries
from sanaedit.core.tempfiles import pid_alive, remove_stale, replacing, temp_folder

if TYPE_CHECKING:
    import torch

MODEL_INDEX = "model_index.json"
META_QUERIES_FILE = "meta_queries.safetensors"
PROMPT_CACHE_FILE = "prompt_cache.safetensors"
REQUIRED = ("transformer", "vae", "llm", "connector", "projector")
MODEL_CLASS = "SanaEditPipeline"  # model_index.json `_class_name` of a PyTorch model folder
EXPORT_CLASS = "SanaEditExport"  # ... of an exported folder
RELEASE_KIND = "MNNRelease"  # no model_index.json: the published MNN release's files (release_folder.py)
RELEASE_LAYOUT = "mnn-release"  # model_index.json "layout" of an MNN export: the release's files, plus ours
EMBEDDINGS_FILE, EMBEDDINGS_KEY = "llm/embeddings.safetensors", "embed_tokens"  # exported LLM's token table
TINY_VAE = "tiny_vae"  # the optional light autoencoder's component (and the exported graphs' prefix)
# A DiT stored in int8 (`sanaedit export DIR --format int8`, speed/int8.py) says so in its config.json under this key
STORED_INT8 = "sanaedit_int8"
VAE_CHOICES = ("full", "tiny")  # `--vae`: DC-AE or the light autoencoder
TINY_GRAPHS = ("tiny_vae_encoder", "tiny_vae_decoder")  # its exported graphs (scaled latents, pixels in [-1, 1])


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete or inconsistent."""


def first_line(err: BaseException) -> str:
    """A library error in one line for a user's message: its first line, or its type when it has no text."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def folder_kind(folder: str | Path) -> str | None:
    """MODEL_CLASS, EXPORT_CLASS or None: what `model_index.json` says a folder is (not checked further);
    RELEASE_KIND for a folder without one that holds the published MNN release's files (maybe not all)."""
    try:
        index = json.loads((Path(folder) / MODEL_INDEX).read_text())
    except (OSError, ValueError):
        from sanaedit.formats.release_files import looks_like_release

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


def choose_vae(folder: str | Path, requested: str | None, default: str, has_tiny: bool) -> str:
    """The autoencoder a pipeline runs on: `requested` ("full" / "tiny"), else the folder's default, else full.
    Tiny for a folder without a light autoencoder is an error that says how to add one."""
    choice = requested or default or "full"
    if choice not in VAE_CHOICES:
        where = "asked for" if requested else f"{folder}'s default (model_index.json pipeline.vae)"
        raise ModelFolderError(f"unknown autoencoder {choice!r} {where}; use one of {', '.join(VAE_CHOICES)}")
    if choice == "tiny" and not has_tiny:
        raise ModelFolderError(
            f"{folder}: no tiny autoencoder in this folder; add one with `sanaedit assemble ... --tiny-vae` or the "
            "`tiny-vae` training stage, or use --vae full"
        )
    return choice


def folder_refiner(folder: str | Path, upsample: str | None):
    """A model or exported folder's learned refiner (models/refiner.py; None without one). A broken file, or a
    folder whose default upsampling needs a refiner it lacks, is named at load time, not after an edit's sampling."""
    from sanaedit.models.refine_tiles import REFINER_FILE  # torch-free

    if not (Path(folder) / REFINER_FILE).is_file():
        refiner = None  # nothing to load: torch is not imported for it
    else:
        from sanaedit.models.refiner import load_refiner

        try:
            refiner = load_refiner(Path(folder))
        except Exception as err:  # safetensors, JSON, key and shape errors vary in type
            raise ModelFolderError(
                f"{Path(folder) / REFINER_FILE}: cannot load the refiner: {first_line(err)}"
            ) from err
    if upsample == "refine" and refiner is None:
        raise ModelFolderError(
            f"{folder}: model_index.json asks for upsample 'refine' but the folder has no {REFINER_FILE}"
        )
    return refiner


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
        with safe_open(path, "pt") as f:
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


def load_meta_queries(model_dir: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    path = Path(model_dir) / META_QUERIES_FILE
    try:
        tensors = load_file(path)
    except Exception as err:
        raise ModelFolderError(f"{path}: unreadable safetensors file ({err})") from err
    if "meta_queries" not in tensors:
        raise ModelFolderError(f"{path}: no 'meta_queries' tensor (found {sorted(tensors)})")
    return tensors["meta_queries"]


def save_meta_queries(meta_queries: torch.Tensor, model_dir: Path) -> None:
    from safetensors.torch import save_file

    save_file({"meta_queries": meta_queries.detach().contiguous().cpu()}, Path(model_dir) / META_QUERIES_FILE)


def save_prompt_cache(
    entries: dict[str, tuple[torch.Tensor, torch.Tensor]], model_dir: Path, metadata: dict[str, str] | None = None
) -> Path:
    """entries: prompt text -> (encoder_hidden_states [1,N,C], encoder_attention_mask [1,N]), torch tensors or NumPy
    arrays (exported graphs). `metadata`: more string entries for the file's header (a release's cache: the key of
    the files it was computed from). The one writer of the format, atomically (a temporary beside it, renamed over
    it), readable by all (0644)."""
    import numpy as np

    tensors, prompts = {}, []
    for i, (prompt, (hidden, mask)) in enumerate(entries.items()):
        tensors[f"{i}.hidden"], tensors[f"{i}.mask"] = hidden, mask
        prompts.append(prompt)
    header = {**(metadata or {}), "prompts": json.dumps(prompts)}
    path = Path(model_dir) / PROMPT_CACHE_FILE
    with replacing(path) as (fd, tmp):
        os.close(fd)
        if all(isinstance(t, np.ndarray) for t in tensors.values()):  # exported graphs' (no torch needed)
            from safetensors.numpy import save_file

            tensors = {k: np.ascontiguousarray(t) for k, t in tensors.items()}
        else:  # torch tensors (a bf16 cache has no NumPy dtype)
            import torch
            from safetensors.torch import save_file

            tensors = {k: torch.as_tensor(t).detach().contiguous().cpu() for k, t in tensors.items()}
        save_file(tensors, tmp, metadata=header)
    return path


def write_prompt_cache(
    folder: Path, encode: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]], prompts: list[str]
) -> None:
    """Store the conditioning of `prompts` (a model's fixed prompt and negative prompt), so later runs with them
    never need the LLM. `encode` is the pipeline's text path."""
    from sanaedit.core.arrays import no_grad

    entries = {p: tuple(t[:1] for t in no_grad(encode)([p])) for p in dict.fromkeys(prompts)}
    save_prompt_cache(entries, folder)


def load_prompt_cache(
    model_dir: Path, match: dict[str, str] | None = None, framework: str = "pt"
) -> dict[str, tuple[Any, Any]]:
    """The cache `save_prompt_cache` wrote, as torch tensors (`framework` "pt") or NumPy arrays ("np": exported
    graphs, without torch); empty when absent, or when its header lacks an entry of `match`."""
    path = Path(model_dir) / PROMPT_CACHE_FILE
    if not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(path, framework) as f:
            metadata = f.metadata() or {}
            if any(metadata.get(k) != v for k, v in (match or {}).items()):
                return {}  # computed from other files: computed again
            prompts = json.loads(metadata["prompts"])
            return {p: (f.get_tensor(f"{i}.hidden"), f.get_tensor(f"{i}.mask")) for i, p in enumerate(prompts)}
    except Exception as err:
        raise ModelFolderError(f"{path}: unreadable prompt cache ({err}); delete it to recompute") from err


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target`, on failure it is removed.

    An existing model folder is only moved away once the new one is complete, so a failed save loses nothing.
    """
    target = Path(target)
    quiet_libraries()  # the CLI's verbosity for diffusers / transformers (their "Writing model shards" bars)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(target)
    tmp = temp_folder(target)  # named after this process, so a killed writer's folder is removed by the next one
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is an ordinary shared folder
    try:
        yield tmp
        _share(tmp)
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


def _clean_stale(target: Path) -> None:
    """What a killed writer of `target` left beside it: its temporary folders are removed; the previous folder it had
    moved aside (`.NAME.old-PID`) is put back if `target` is missing (killed between the two renames), else
    removed. Folders of writers still running are left alone."""
    remove_stale(target.parent, target.name)
    prefix = f".{target.name}.old-"
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(prefix) :]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        try:
            if not target.exists():
                os.replace(entry.path, target)
            else:
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


def _umask() -> int:
    try:  # read, not set: os.umask(0) would briefly change it for every thread of the process
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


def _share(folder: Path) -> None:
    """Ordinary permissions (0644 / 0755 under the usual umask) for everything written: some writers (safetensors
    >= 0.8) create private 0600 files, which a model folder served or shared by another user could not read."""
    umask = _umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, (0o777 if os.access(path, os.X_OK) else 0o666) & ~umask)


def copy_folder(source: Path | None, target: Path) -> Path:
    """Copy a whole folder (an exported model is already its deployable form), atomically."""
    if source is None or not Path(source).is_dir():
        raise ModelFolderError(f"nothing to copy: the pipeline's folder {source} does not exist")
    if Path(target).resolve() == Path(source).resolve():
        return Path(target)
    with atomic_folder(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return Path(target)
