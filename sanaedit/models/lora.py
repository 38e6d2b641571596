"""LoRA styles on the DiT, with peft, in diffusers' Sana LoRA format.

A LoRA file is `pytorch_lora_weights.safetensors` with keys `transformer.<module>.lora_A/B.weight` and its peft
config (rank, alpha, targets) in the header's `lora_adapter_metadata`: what diffusers'
`SanaLoraLoaderMixin.save_lora_weights` writes (and `train_dreambooth_lora_sana.py` produces), so files go both
ways. A folder peft saved (`adapter_model.safetensors` + `adapter_config.json`) loads too. The alpha matters: a LoRA
scales its update by alpha / rank, so a file read without it (alpha taken as the rank) applies at the wrong
strength. Loading, scaling and fusing are diffusers' own (`load_lora_adapter`, `set_adapters`, `fuse_lora`):
nothing of the LoRA math is written here.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sanaedit.errors import LoraError

if TYPE_CHECKING:  # torch only where a LoRA is applied: the CLI checks --lora FILE while parsing, torch-free
    import torch
    from torch import nn

LORA_FILE = "pytorch_lora_weights.safetensors"
PEFT_FILE, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"  # a folder saved by peft
PEFT_PREFIX = "base_model.model."  # peft's key prefix, where diffusers' files have "transformer."
DEFAULT_TARGETS = ("to_q", "to_k", "to_v")  # diffusers' Sana LoRA trainer; "to_out.0", "conv_inverted", "conv_point"
# (the Mix-FFN convs) may be added


logger = logging.getLogger(__name__)


def parse_lora(spec: str) -> tuple[Path, float]:
    """'FILE[:SCALE]' -> (path, scale); SCALE defaults to 1."""
    path, sep, scale = spec.rpartition(":")
    if sep and path:
        try:
            return Path(path), float(scale)
        except ValueError:
            pass  # a ':' inside the path itself
    return Path(spec), 1.0


def lora_file(path: str | Path) -> Path:
    """The LoRA weights file: `path` itself, or in the folder `path` diffusers' `pytorch_lora_weights.safetensors` or
    peft's `adapter_model.safetensors`."""
    path = Path(path)
    found = path
    if path.is_dir():
        found = next((path / n for n in (LORA_FILE, PEFT_FILE) if (path / n).is_file()), path / LORA_FILE)
    if not found.is_file():
        raise LoraError(f"{path}: no LoRA file here (expected {LORA_FILE}, {PEFT_FILE} or a .safetensors file)")
    return found


def read_lora(file: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict with diffusers' `transformer.` keys, its peft config as diffusers' `metadata`, or None when the
    file carries none: then the rank comes from the weights and alpha = rank). The config is the file's
    `lora_adapter_metadata`, else the `adapter_config.json` peft writes beside its weights."""
    import json

    from diffusers.loaders import SanaLoraLoaderMixin

    state, metadata = SanaLoraLoaderMixin.lora_state_dict(str(file), return_lora_metadata=True)
    if any(key.startswith(PEFT_PREFIX) for key in state):
        state = {f"transformer.{key.removeprefix(PEFT_PREFIX)}": value for key, value in state.items()}
    config_file = file.parent / PEFT_CONFIG
    if not metadata and config_file.is_file():
        config = json.loads(config_file.read_text())
        if not isinstance(config, dict):
            raise ValueError(f"{config_file.name} is not a JSON object")
        fields = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora")
        metadata = {f"transformer.{k}": config[k] for k in fields if k in config}
    return state, metadata or None


def add_lora(
    transformer: nn.Module, rank: int = 16, alpha: float | None = None, targets=DEFAULT_TARGETS, name: str = "default"
) -> None:
    """Fresh trainable adapters on `targets` (module-name suffixes), gaussian A and zero B: the model is unchanged
    until trained (as diffusers' trainer initialises them)."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(targets), init_lora_weights="gaussian")
    transformer.add_adapter(config, adapter_name=name)


def save_lora(transformer: nn.Module, folder: str | Path, name: str = "default") -> Path:
    """Write adapter `name` as `folder/pytorch_lora_weights.safetensors` (atomically), its peft config (alpha
    included) in the header as diffusers writes it."""
    from diffusers.loaders import SanaLoraLoaderMixin
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(transformer, adapter_name=name).items()
    }
    config = transformer.peft_config[name].to_dict()  # rank, alpha, targets: read back by `read_lora`
    with tempfile.TemporaryDirectory(dir=folder, prefix=".lora-") as tmp:
        SanaLoraLoaderMixin.save_lora_weights(
            tmp, transformer_lora_layers=state, transformer_lora_adapter_metadata=config
        )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(Path(tmp) / LORA_FILE, 0o666 & ~umask)  # an ordinary shared file (the library's is private)
        os.replace(Path(tmp) / LORA_FILE, folder / LORA_FILE)
    return folder / LORA_FILE


def load_lora(transformer: nn.Module, path: str | Path, scale: float = 1.0, name: str | None = None) -> str:
    """Add the LoRA at `path` as adapter `name` (default: its file stem, made unique) at `scale`; every adapter
    loaded so far stays active with its own scale. Returns the adapter's name."""
    from sanaedit.models.int8 import Int8Conv1x1, Int8Linear

    if any(isinstance(m, (Int8Linear, Int8Conv1x1)) for m in transformer.modules()):
        raise ValueError(
            "this transformer's layers were replaced for speed (int8): load it with the LoRA merged instead "
            "(`load_pipeline(..., loras=[(path, scale)])`, or `sanaedit edit --lora`)"
        )
    file = lora_file(path)
    have = lora_scales(transformer)
    name = name or _unique(file.parent.name if file.name == LORA_FILE else file.stem, have)
    try:
        state, metadata = read_lora(file)
        check_fits(transformer, state, file)
        with warnings.catch_warnings():  # peft's "multiple adapters" notice: several styles at once are intended
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            transformer.load_lora_adapter(state, prefix="transformer", adapter_name=name, metadata=metadata)
    except LoraError:
        raise
    except Exception as err:  # safetensors / peft / shape errors vary in type
        from sanaedit.errors import first_line

        raise LoraError(f"{file}: cannot load this LoRA into the model ({first_line(err)})") from err
    if name not in _adapters(transformer):
        raise LoraError(f"{file}: holds no weights for this transformer (keys must start with 'transformer.')")
    transformer._sanaedit_lora_scales = {**have, name: float(scale)}
    transformer.set_adapters(list(transformer._sanaedit_lora_scales), list(transformer._sanaedit_lora_scales.values()))
    return name


def check_fits(transformer: nn.Module, state: dict[str, torch.Tensor], file: Path) -> None:
    """Every adapter matrix fits the layer it adapts: A reads the layer's inputs, B writes its outputs. Checked
    before peft builds anything, so a LoRA for another model is one line naming the layer (peft's own error is a
    list of every mismatch, logged before it is raised)."""
    layers = dict(transformer.named_modules())
    for key, tensor in state.items():
        if not key.startswith("transformer.") or ".lora_" not in key:
            continue  # another component's (a text encoder's), or not a LoRA matrix: diffusers' loader skips it too
        name, _, part = key.removeprefix("transformer.").rpartition(".lora_")
        layer = layers.get(name)
        weight = getattr(layer, "weight", None)
        if layer is None or weight is None:
            raise LoraError(f"{file}: {name} is not a layer of this transformer (a LoRA made for another model?)")
        side, want, got = (
            ("inputs", weight.shape[1], tensor.shape[1])
            if part.startswith("A")
            else ("outputs", weight.shape[0], tensor.shape[0])
        )
        if want != got:
            raise LoraError(
                f"{file}: does not fit this model: {name} has {want} {side}, the LoRA's {key.rsplit('.', 2)[-2]} "
                f"matrix {got} (a LoRA made for another model size?)"
            )


def lora_scales(transformer: nn.Module) -> dict[str, float]:
    """The loaded (unfused) adapters and their scales."""
    return dict(getattr(transformer, "_sanaedit_lora_scales", {}))


def unload_loras(transformer: nn.Module) -> None:
    """Remove every adapter: the model is exactly the base model again."""
    if _adapters(transformer):
        transformer.unload_lora()
    transformer._sanaedit_lora_scales = {}


def set_lora_scales(transformer: nn.Module, scales: dict[str, float]) -> None:
    """Run the named adapters at these scales and every other loaded one at scale 0 (diffusers' `set_adapters`)."""
    have = lora_scales(transformer)
    unknown = [name for name in scales if name not in have]
    if unknown:
        raise ValueError(f"no LoRA named {unknown[0]!r} is loaded; loaded: {sorted(have) or 'none'}")
    transformer._sanaedit_lora_scales = {name: scales.get(name, 0.0) for name in have}
    transformer.set_adapters(list(transformer._sanaedit_lora_scales), list(transformer._sanaedit_lora_scales.values()))


def fuse_loras(transformer: nn.Module, lora_scale: float = 1.0) -> None:
    """Merge the loaded adapters at their scales (times `lora_scale`) into the weights and drop the adapter layers
    (for speed paths that replace layers, e.g. int8, and for export)."""
    if _adapters(transformer):
        import torch

        with torch.no_grad():
            transformer.fuse_lora(lora_scale=lora_scale)
        transformer.unload_lora()  # keeps the fused base weights
    transformer._sanaedit_lora_scales = {}


def merge_loras(transformer: nn.Module, specs: list[tuple[Path, float]]) -> None:
    """Load each (file, scale) and fuse them all into the weights."""
    for path, scale in specs:
        load_lora(transformer, path, scale)
    fuse_loras(transformer)


def _adapters(transformer: nn.Module) -> list[str]:
    config = getattr(transformer, "peft_config", None)
    return list(config) if config else []


def _unique(stem: str, taken: dict[str, float]) -> str:
    name, n = stem.replace(".", "_") or "lora", 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}"
    return name
