"""Low-memory PyTorch loading: weights streamed from safetensors straight into 8-bit (or 4-bit) layers.

`from_pretrained` then `quantize_model` would first hold the whole fp32 model (2.4 GB for Sana-0.6B): the peak
is the fp32 size, whatever happens after. Here the model is built on the meta device (no memory), and each
Linear/Conv2d weight is read alone from the file, quantized and dropped, so the peak is the quantized model plus
one fp32 tensor. Everything else (norms, embeddings, tables) is loaded as stored.

The cost is compute: quantized layers rebuild their float weight on every call (sanaedit.quant), which is cheap
next to the convolutions of the DC-AE and a few percent of a DiT step (measured in bench/edit_speed.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

from ..quant import QuantizedConv2d, QuantizedLinear

QUANTIZED = {nn.Linear: QuantizedLinear, nn.Conv2d: QuantizedConv2d}


def load_quantized_model(
    cls,
    folder: str | Path,
    bits: int = 8,
    group_size: int | None = None,
    keep_float: Callable[[str, nn.Module], bool] | None = None,
    min_params: int = 4096,
):
    """A diffusers model (`cls`, e.g. AutoencoderDC) from `folder` with its Linear/Conv2d weights quantized on load.

    Layers with fewer than `min_params` weights, or for which `keep_float(name, module)` is true, stay float.
    """
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from safetensors import safe_open

    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .safetensors weights")
    with init_empty_weights():
        model = cls.from_config(cls.load_config(folder))
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(f, "pt")) for f in files]
        where = {key: h for h in handles for key in h.keys()}

        def read(key: str) -> torch.Tensor:
            if key not in where:
                raise ValueError(f"{folder}: weight {key!r} missing from the safetensors files")
            return where[key].get_tensor(key)

        used: set[str] = set()
        for name, module in list(model.named_modules()):
            quant_cls = QUANTIZED.get(type(module))
            if quant_cls is None or module.weight.numel() < min_params or (keep_float and keep_float(name, module)):
                continue
            module.weight = nn.Parameter(read(f"{name}.weight"), requires_grad=False)
            used.add(f"{name}.weight")
            if module.bias is not None:
                module.bias = nn.Parameter(read(f"{name}.bias"), requires_grad=False)
                used.add(f"{name}.bias")
            _set_submodule(model, name, quant_cls(module, bits, group_size))  # the fp32 weight is freed here
        for key in model.state_dict():
            if key not in used and key in where:
                set_module_tensor_to_device(model, key, "cpu", value=read(key))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise ValueError(f"{folder}: no stored value for {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}")
    return model.eval().requires_grad_(False)


def load_low_memory_pipeline(model_dir: str | Path, bits: int = 8, text_kv_cache: bool = True):
    """SanaEditPipeline with an 8-bit DiT and DC-AE streamed from the model folder (LLM: lazily, as usual)."""
    from diffusers import AutoencoderDC

    from ..model_folder import load_component, load_prompt_cache, read_index
    from ..models.transformer import SanaEditTransformer2DModel
    from ..pipeline import PipelineConfig, SanaEditPipeline, load_text_encoder
    from .text_kv_cache import enable_text_kv_cache

    model_dir = Path(model_dir)
    config = PipelineConfig.from_dict(read_index(model_dir).get("pipeline", {}))
    transformer = load_component(
        model_dir, "transformer", lambda p: load_quantized_model(SanaEditTransformer2DModel, p, bits)
    )
    vae = load_component(model_dir, "vae", lambda p: load_quantized_model(AutoencoderDC, p, bits))
    if text_kv_cache:
        enable_text_kv_cache(transformer)
    pipe = SanaEditPipeline(
        transformer,
        vae,
        config=config,
        prompt_cache=load_prompt_cache(model_dir),
        text_encoder_loader=lambda: load_text_encoder(model_dir, config.template),
    )
    pipe.model_dir = model_dir
    return pipe


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
