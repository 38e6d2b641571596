"""The PyTorch model folder: read (`TorchFolder`, a source of networks on diffusers / transformers modules), checked
from configs and file headers alone (`check_model_folder`, what `sanaedit info` runs), and written
(`save_model_folder`). Every piece is checked and a failure names the folder and the component.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from sanaedit.core.atomic import atomic_folder
from sanaedit.core.choices import Format, Vae
from sanaedit.core.config import PipelineConfig
from sanaedit.errors import ModelFolderError
from sanaedit.formats.index import (
    CONTROLNET,
    META_QUERIES_FILE,
    MODEL_CLASS,
    TINY_VAE,
    read_index,
    stored_int8,
    write_index,
)
from sanaedit.formats.prompt_cache import load_prompt_cache, write_prompt_cache
from sanaedit.formats.refiner import folder_refiner
from sanaedit.formats.source import Networks
from sanaedit.formats.torch_check import (
    DIFFUSERS_WEIGHTS,
    caption_channels,
    check_diffusers_component,
    check_files,
    check_text_path,
    load_component,
)
from sanaedit.models.refine_tiles import REFINER_FILE
from sanaedit.models.refiner import save_refiner
from sanaedit.models.torch_flow import torch_flow
from sanaedit.plan import FolderInfo, RunPlan, make_plan


def load_diffusers_model(cls, path: Path, dtype: torch.dtype, only: str | None = None, replace=None):
    """Streamed tensor by tensor where the folder has safetensors (peak RSS = the model, not file + model: see
    backends/torch_loading.py), just the tensors named `only...` if given, each layer swapped by `replace(name,
    module)` as it arrives; diffusers' own loader for anything else (.bin checkpoints: loaded whole, then swapped)."""
    from sanaedit.backends.torch_loading import load_model, weight_files
    from sanaedit.models.int8 import replace_layers

    try:
        weight_files(path)
    except FileNotFoundError:
        model = cls.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        if replace is not None:
            replace_layers(model, replace)
        return model
    return load_model(cls, path, dtype, replace=replace, only=only)


def check_model_folder(model_dir: str | Path) -> dict:
    """Everything `load_model_folder` checks, from configs and file headers only (what `sanaedit info` runs): the
    index, every component's weights against its config, the text path, the prompt cache. Returns the index."""
    from diffusers import AutoencoderDC

    from sanaedit.models.transformer import SanaEditTransformer2DModel

    model_dir = Path(model_dir)
    index = read_index(model_dir)
    transformer = check_diffusers_component(model_dir, "transformer", SanaEditTransformer2DModel)
    check_diffusers_component(model_dir, "vae", AutoencoderDC)
    if (model_dir / TINY_VAE).is_dir():
        from sanaedit.models.tiny_vae import TinyAutoencoder

        check_diffusers_component(model_dir, TINY_VAE, TinyAutoencoder)
    if (model_dir / CONTROLNET).is_dir():
        from diffusers import SanaControlNetModel

        check_diffusers_component(model_dir, CONTROLNET, SanaControlNetModel)
    make_plan(TorchFolder(model_dir).info)  # the folder's own choices fit what it holds
    folder_refiner(model_dir)
    check_text_path(model_dir, transformer.get("caption_channels"))
    load_prompt_cache(model_dir)
    return index


def load_text_encoder(model_dir: Path, template: str, dtype: torch.dtype = torch.float32):
    """LLM + tokenizer + meta-queries + connector + projector from a model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sanaedit.models.connector import Connector
    from sanaedit.models.projector import Projector
    from sanaedit.models.text_encoder import MetaQueryTextEncoder

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


def _scaling_factor(model_dir: Path) -> float:
    """The DC-AE's latent scaling factor, from its config alone (its weights stay on disk)."""
    import json

    return load_component(
        model_dir, "vae", lambda p: float(json.loads((p / "config.json").read_text())["scaling_factor"])
    )


def load_controlnet(folder: Path, transformer: torch.nn.Module, device, dtype: torch.dtype):
    """The ControlNet in `folder` (diffusers' SanaControlNetModel, streamed in as the DiT is) as the flow's
    `controlnet`, on the DiT's device in `dtype`, checked against the DiT (errors name the folder)."""
    from diffusers import SanaControlNetModel

    from sanaedit.models.controlnet import TorchControl, check_fits

    folder = Path(folder)

    def load(path: Path) -> torch.nn.Module:
        check_files(path, DIFFUSERS_WEIGHTS)
        module = load_diffusers_model(SanaControlNetModel, path, dtype)
        check_fits(module, transformer)  # its config (a staged DiT's weights are still on disk)
        return module.to(device).eval()

    return TorchControl(load_component(folder.parent, folder.name, load))


def prepare_transformer(transformer: torch.nn.Module, plan: RunPlan, streamed_int8: bool) -> torch.nn.Module:
    """The DiT as a plan runs it: LoRAs merged into its weights before any speed path, int8 layers (unless they were
    made while its weights streamed in), the text K/V cache (`plan.tuned`)."""
    from sanaedit.backends.torch_kv_cache import enable_text_kv_cache
    from sanaedit.models.int8 import quantize_dit_int8

    if plan.loras:
        from sanaedit.models.lora import merge_loras

        merge_loras(transformer, list(plan.loras))
    if plan.int8 and not streamed_int8:
        quantize_dit_int8(transformer)
    return enable_text_kv_cache(transformer) if plan.tuned else transformer


class TorchFolder:
    """A PyTorch model folder as a source of networks (runtime/sources.py): `info` from its index and file names,
    `networks(plan)` the DiT, the planned autoencoder, the refiner and the text path on diffusers / transformers
    modules.

    The DiT and DC-AE stream in tensor by tensor (backends/torch_loading.py); the LLM stays on disk until a prompt
    outside the prompt cache needs it. A folder's light autoencoder loads with the DC-AE too (small), so that saving
    the pipeline keeps it. Staged (`plan.staged`): nothing but the light autoencoder is loaded now; each edit loads
    the DC-AE's encoder, the DiT and the DC-AE's decoder in turn, each freed after its stage (residency.py)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = read_index(self.folder)
        self.info = FolderInfo(
            folder=self.folder,
            format=Format.TORCH,
            config=PipelineConfig.from_dict(index.get("pipeline", {})),
            has_tiny_vae=(self.folder / TINY_VAE).is_dir(),
            has_refiner=(self.folder / REFINER_FILE).is_file(),
            stored_int8=stored_int8(self.folder),
            controlnet=self.folder / CONTROLNET if (self.folder / CONTROLNET).is_dir() else None,
        )

    def networks(self, plan: RunPlan) -> Networks:
        from diffusers import AutoencoderDC

        from sanaedit.core.cpu import set_threads
        from sanaedit.models.int8 import int8_layer
        from sanaedit.models.tiny_vae import TinyVaeDecoder, TinyVaeEncoder
        from sanaedit.models.transformer import SanaEditTransformer2DModel
        from sanaedit.models.vae import VaeDecoder, VaeEncoder

        model_dir, device, dtype, staged = self.folder, plan.device, getattr(torch, plan.dtype), plan.staged
        if plan.tuned and torch.device(device).type == "cpu":
            set_threads(plan.threads)  # threads = cores: PyTorch's default can exceed what a container grants
        # a model folder's int8 layers are made while its weights stream in (no float DiT held), unless LoRAs must be
        # merged into the float weights first
        streamed_int8 = plan.int8 and not plan.loras

        def prepare(transformer: torch.nn.Module) -> torch.nn.Module:
            return prepare_transformer(transformer, plan, streamed_int8)

        transformer_layers = int8_layer if streamed_int8 else None
        # the text path is checked now from headers, not when a new prompt first needs it (the LLM stays on disk)
        check_text_path(model_dir, caption_channels(model_dir))
        # each one's config and weights file, before diffusers (whose errors for these take two lines or mislead),
        # loaded now or in its stage (as info checks them)
        for name in ("transformer", "vae", TINY_VAE):
            if name != TINY_VAE or self.info.has_tiny_vae:
                load_component(model_dir, name, lambda p: check_files(p, DIFFUSERS_WEIGHTS))

        def load_transformer(path: Path, dtype: torch.dtype) -> torch.nn.Module:
            return load_diffusers_model(SanaEditTransformer2DModel, path, dtype, replace=transformer_layers)

        full = plan.vae == Vae.FULL
        if staged:  # their configs now (the pipeline's checks need them), their weights in their stages
            check_diffusers_component(model_dir, "transformer", SanaEditTransformer2DModel)
            if full:
                check_diffusers_component(model_dir, "vae", AutoencoderDC)
            from sanaedit.backends.torch_loading import empty_model

            transformer = load_component(model_dir, "transformer", lambda p: empty_model(SanaEditTransformer2DModel, p))
            dc_ae = load_component(model_dir, "vae", lambda p: empty_model(AutoencoderDC, p)) if full else None
        else:
            transformer = load_component(model_dir, "transformer", lambda p: load_transformer(p, dtype))
            dc_ae = (
                load_component(model_dir, "vae", lambda p: load_diffusers_model(AutoencoderDC, p, dtype))
                if full
                else None
            )
        tiny = None
        if self.info.has_tiny_vae:
            from sanaedit.models.tiny_vae import TinyAutoencoder

            tiny = load_component(model_dir, TINY_VAE, lambda p: load_diffusers_model(TinyAutoencoder, p, dtype))
            # the DC-AE's scaling factor is the one the DiT was trained with (an autoencoder stage may have changed it)
            tiny.register_to_config(scaling_factor=dc_ae.config.scaling_factor if full else _scaling_factor(model_dir))
        move = torch.device(device) != torch.device("cpu")
        tiny = tiny if tiny is None else (tiny.to(device) if move else tiny).eval()
        if not staged:
            dc_ae = dc_ae if dc_ae is None else (dc_ae.to(device) if move else dc_ae).eval()
            transformer = (transformer.to(device) if move else transformer).eval()
            transformer = prepare(transformer)

        def load_network(name: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
            """One network of the edit, freshly loaded in the pipeline's dtype on its device (staged residency: the
            pipeline may have moved since the plan, and the light autoencoder with it)."""
            if name == "transformer":
                loaded = load_component(model_dir, "transformer", lambda p: load_transformer(p, dtype))
                return prepare(loaded.to(device).eval())
            if not full:
                return {"encoder": TinyVaeEncoder, "decoder": TinyVaeDecoder}[name](tiny)
            half = load_component(model_dir, "vae", lambda p: load_diffusers_model(AutoencoderDC, p, dtype, f"{name}."))
            getattr(half, name).to(device).eval()
            return {"encoder": VaeEncoder, "decoder": VaeDecoder}[name](half)

        flow = torch_flow(transformer, dc_ae, tiny, folder_refiner(model_dir))
        if plan.controlnet is not None:
            flow.controlnet = load_controlnet(plan.controlnet, transformer, device, dtype)
        if staged:
            flow.placement = (torch.device(device), dtype)
        template = plan.config.template
        return Networks(
            flow=flow,
            prompt_cache=load_prompt_cache(model_dir),
            text_encoder_loader=lambda: load_text_encoder(model_dir, template, dtype).to(device=device),
            network_loader=load_network,
        )


def save_model_folder(pipe, model_dir: Path, prompt_cache: bool = True) -> Path:
    """Write `pipe` (on PyTorch modules) as a model folder, atomically."""
    from sanaedit.models.lora import lora_scales

    if lora_scales(pipe.transformer):
        raise ValueError(
            "a LoRA is loaded: a model folder holds base weights. Save the LoRA file itself, or bake it in with "
            "`load_pipeline(MODEL, loras=[(FILE, SCALE)]).save_pretrained(DIR)` (merged weights)"
        )
    if pipe.vae is None:
        raise ValueError(
            "this pipeline runs on the tiny autoencoder alone (loaded with vae='tiny'): a model folder needs the "
            "DC-AE too; load it with vae='full' to save it"
        )
    encoder = pipe.text_encoder
    tiny = pipe.flow.tiny_vae
    with atomic_folder(model_dir) as tmp:
        pipe.transformer.save_pretrained(tmp / "transformer")
        pipe.vae.save_pretrained(tmp / "vae")
        if tiny is not None:
            tiny.register_to_config(scaling_factor=float(pipe.vae.config.scaling_factor))
            tiny.save_pretrained(tmp / TINY_VAE)
        encoder.llm.save_pretrained(tmp / "llm")
        encoder.tokenizer.save_pretrained(tmp / "llm")
        encoder.connector.save_pretrained(tmp / "connector")
        encoder.projector.save_pretrained(tmp / "projector")
        save_meta_queries(encoder.meta_queries, tmp)
        if pipe.flow.refiner is not None:
            save_refiner(pipe.flow.refiner, tmp)
        controlnet = getattr(pipe.flow.controlnet, "module", None)
        if controlnet is not None:
            controlnet.save_pretrained(tmp / CONTROLNET)
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
            **({TINY_VAE: ["sanaedit", type(tiny).__name__]} if tiny is not None else {}),
            **({CONTROLNET: ["diffusers", type(controlnet).__name__]} if controlnet is not None else {}),
        )
    return model_dir


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
