"""The PyTorch factory: a model folder <-> a SanaEditPipeline on diffusers / transformers modules.

Loading streams DiT and DC-AE weights tensor by tensor (speed/lowmem.py) and leaves the LLM on disk until a prompt
outside the prompt cache needs it; every piece is checked and a failure names the folder and the component.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .model_folder import (
    MODEL_CLASS,
    ModelFolderError,
    atomic_folder,
    load_component,
    load_meta_queries,
    load_prompt_cache,
    read_index,
    save_meta_queries,
    write_index,
    write_prompt_cache,
)
from .pipeline import PipelineConfig, SanaEditPipeline


def _load_diffusers_model(cls, path: Path, dtype: torch.dtype):
    """Streamed tensor by tensor where the folder has safetensors (peak RSS = the model, not file + model: see
    speed/lowmem.py); diffusers' own loader for anything else (e.g. .bin checkpoints)."""
    from .speed.lowmem import load_model, weight_files

    try:
        weight_files(path)
    except FileNotFoundError:
        return cls.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    return load_model(cls, path, dtype)


def load_text_encoder(model_dir: Path, template: str, dtype: torch.dtype = torch.float32):
    """LLM + tokenizer + meta-queries + connector + projector from a model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models.connector import Connector
    from .models.projector import Projector
    from .models.text_encoder import MetaQueryTextEncoder

    model_dir = Path(model_dir)
    llm = load_component(
        model_dir, "llm", lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=dtype, local_files_only=True)
    )
    tokenizer = load_component(model_dir, "llm", lambda p: AutoTokenizer.from_pretrained(p, local_files_only=True))
    connector = load_component(model_dir, "connector", lambda p: Connector.from_pretrained(p, torch_dtype=dtype))
    projector = load_component(model_dir, "projector", lambda p: Projector.from_pretrained(p, torch_dtype=dtype))
    meta_queries = load_meta_queries(model_dir).to(dtype)
    try:
        return MetaQueryTextEncoder(llm, tokenizer, meta_queries, connector, projector, template=template)
    except ValueError as err:
        raise ModelFolderError(f"{model_dir}: components do not fit together: {err}") from err


def load_model_folder(
    model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> SanaEditPipeline:
    """A model folder as a PyTorch pipeline. The LLM is loaded lazily, only if a prompt is not in the cache."""
    from diffusers import AutoencoderDC

    from .models.transformer import SanaEditTransformer2DModel

    model_dir = Path(model_dir)
    index = read_index(model_dir)
    config = PipelineConfig.from_dict(index.get("pipeline", {}))
    transformer = load_component(
        model_dir, "transformer", lambda p: _load_diffusers_model(SanaEditTransformer2DModel, p, dtype)
    )
    vae = load_component(model_dir, "vae", lambda p: _load_diffusers_model(AutoencoderDC, p, dtype))
    if torch.device(device) != transformer.device:
        transformer, vae = transformer.to(device), vae.to(device)
    prompt_cache = load_prompt_cache(model_dir)
    pipe = SanaEditPipeline.from_modules(
        transformer.eval(),
        vae.eval(),
        config=config,
        prompt_cache=prompt_cache,
        text_encoder_loader=lambda: load_text_encoder(model_dir, config.template, dtype).to(device=device),
        model_dir=model_dir,
    )
    if not prompt_cache:  # nothing cached: check the text path now, so a broken folder fails at load time
        pipe._check_projector(pipe.text_encoder)
    return pipe


def save_model_folder(pipe: SanaEditPipeline, model_dir: Path, prompt_cache: bool = True) -> Path:
    """Write `pipe` (on PyTorch modules) as a model folder, atomically."""
    from .lora import lora_scales

    if lora_scales(pipe.transformer):
        raise ValueError(
            "a LoRA is loaded: a model folder holds base weights. Save the LoRA file itself, or bake it in with "
            "`load_pipeline(MODEL, loras=[(FILE, SCALE)]).save_pretrained(DIR)` (merged weights)"
        )
    encoder = pipe.text_encoder
    with atomic_folder(model_dir) as tmp:
        pipe.transformer.save_pretrained(tmp / "transformer")
        pipe.vae.save_pretrained(tmp / "vae")
        encoder.llm.save_pretrained(tmp / "llm")
        encoder.tokenizer.save_pretrained(tmp / "llm")
        encoder.connector.save_pretrained(tmp / "connector")
        encoder.projector.save_pretrained(tmp / "projector")
        save_meta_queries(encoder.meta_queries, tmp)
        if prompt_cache:
            write_prompt_cache(tmp, encoder, [pipe.config.prompt, pipe.config.negative_prompt])
        write_index(
            tmp,
            MODEL_CLASS,
            dataclasses.asdict(pipe.config),
            transformer=["sanaedit", type(pipe.transformer).__name__],
            vae=["diffusers", type(pipe.vae).__name__],
            llm=["transformers", type(encoder.llm).__name__],
            connector=["sanaedit", "Connector"],
            projector=["sanaedit", "Projector"],
            meta_queries="meta_queries.safetensors",
        )
    return model_dir
