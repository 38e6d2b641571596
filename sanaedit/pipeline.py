"""SanaEditPipeline: photo in, edited photo out, in the style of a diffusers pipeline.

    pipe = SanaEditPipeline.from_pretrained("path/to/model")
    comic = pipe(Image.open("photo.jpg"), generator=torch.Generator().manual_seed(0))

Stages: preprocess (centred square pad, resize, [-1,1]) -> DC-AE encode (ref_latents) -> text conditioning
(prompt cache, else LLM + meta-queries + connector + projector) -> flow-matching Euler with CFG as one
[neg, pos] batch -> DC-AE decode -> crop the padding and resize back to the input's own size.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .model_folder import (
    MODEL_INDEX,
    ModelFolderError,
    atomic_folder,
    load_component,
    load_meta_queries,
    load_prompt_cache,
    read_index,
    save_meta_queries,
    save_prompt_cache,
)
from .models.text_encoder import PROMPT_TEMPLATE, MetaQueryTextEncoder
from .models.transformer import SanaEditTransformer2DModel
from .models.vae import VaeDecoder, VaeEncoder, spatial_compression
from .sampling import euler_sample, flow_sigmas

PROMPT_CACHE_SIZE = 64  # conditioning tensors kept in memory (a 0.6B model's are 256 x 2304 floats, 2.4 MB each)
COMIC_PROMPT = "Convert to a comic-style illustration: bold ink outlines, flat colours, keep the scene consistent."


@dataclass
class PipelineConfig:
    """Run-time settings stored in model_index.json (the model's own defaults)."""

    resolution: int = 512
    prompt: str = COMIC_PROMPT
    negative_prompt: str = ""
    num_inference_steps: int = 10
    guidance_scale: float = 4.5
    shift: float = 3.0
    schedule: str = "default"
    template: str = PROMPT_TEMPLATE
    fp16_clipping: bool = False  # for fp16-trained SANA checkpoints run in fp32/bf16 (see transformer.py)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


@dataclass(frozen=True)
class Restore:
    """How to undo preprocessing: the input size and where it sits in the padded square."""

    width: int
    height: int
    left: int
    top: int
    side: int


def preprocess(image: Image.Image, resolution: int) -> tuple[torch.Tensor, Restore]:
    """RGB PIL image -> [1,3,R,R] in [-1,1]: zero-pad to a centred square, bilinear resize to R."""
    image = image.convert("RGB")
    width, height = image.size
    side = max(width, height)
    left, top = (side - width) // 2, (side - height) // 2
    if width != height:
        square = Image.new("RGB", (side, side), (0, 0, 0))
        square.paste(image, (left, top))
        image = square
    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255 * 2 - 1
    return pixels[None], Restore(width, height, left, top, side)


def postprocess(pixels: torch.Tensor, restore: Restore | None) -> Image.Image:
    """[1,3,R,R] in [-1,1] -> PIL image; with `restore`, crop the padding and resize to the input's size."""
    array = (pixels[0].float() * 0.5 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    image = Image.fromarray(array.permute(1, 2, 0).cpu().numpy())
    if restore is None:
        return image
    scale = image.width / restore.side
    box = (
        restore.left * scale,
        restore.top * scale,
        (restore.left + restore.width) * scale,
        (restore.top + restore.height) * scale,
    )
    return image.resize((restore.width, restore.height), Image.Resampling.BILINEAR, box=box)


def _load_diffusers_model(cls, path: Path, dtype: torch.dtype):
    """Streamed tensor by tensor where the folder has safetensors (peak RSS = the model, not file + model: see
    speed/lowmem.py); diffusers' own loader for anything else (e.g. .bin checkpoints)."""
    from .speed.lowmem import load_model, weight_files

    try:
        weight_files(path)
    except FileNotFoundError:
        return cls.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    return load_model(cls, path, dtype)


def _load_transformer(path: Path, dtype: torch.dtype) -> SanaEditTransformer2DModel:
    return _load_diffusers_model(SanaEditTransformer2DModel, path, dtype)


def _load_vae(path: Path, dtype: torch.dtype):
    from diffusers import AutoencoderDC

    return _load_diffusers_model(AutoencoderDC, path, dtype)


def load_text_encoder(model_dir: Path, template: str, dtype: torch.dtype = torch.float32) -> MetaQueryTextEncoder:
    """LLM + tokenizer + meta-queries + connector + projector from a model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models.connector import Connector
    from .models.projector import Projector

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


class SanaEditPipeline:
    """Edits a photo (or makes one from text) with a SANA linear DiT conditioned through meta-queries."""

    def __init__(
        self,
        transformer: SanaEditTransformer2DModel,
        vae,
        text_encoder: MetaQueryTextEncoder | None = None,
        config: PipelineConfig | None = None,
        prompt_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        text_encoder_loader: Callable[[], MetaQueryTextEncoder] | None = None,
    ):
        self.transformer = transformer
        self.vae = vae
        self.vae_encoder = VaeEncoder(vae) if vae is not None else None
        self.vae_decoder = VaeDecoder(vae) if vae is not None else None
        self.config = config or PipelineConfig()
        self.prompt_cache = dict(prompt_cache or {})
        self._text_encoder = text_encoder
        self._text_encoder_loader = text_encoder_loader
        self.model_dir: Path | None = None  # set by from_pretrained
        # False: free the LLM as soon as a new prompt's features exist (one-shot use: they go into the prompt
        # cache, and the LLM is reloaded only for yet another prompt). A server keeps it.
        self.keep_text_encoder = True
        self._check_fit()
        if self.config.fp16_clipping:
            transformer.set_fp16_clipping(True)

    # ----------------------------------------------------------------------------------------------- components
    @property
    def text_encoder(self) -> MetaQueryTextEncoder:
        """The LLM path, loaded on first use: prompts in the prompt cache never need it."""
        if self._text_encoder is None:
            if self._text_encoder_loader is None:
                raise RuntimeError("this pipeline has no text encoder; only cached prompts can be used")
            self._text_encoder = self._text_encoder_loader()
        return self._text_encoder

    @property
    def text_encoder_loaded(self) -> bool:
        return self._text_encoder is not None

    def release_text_encoder(self) -> None:
        """Free the LLM (it is reloaded from the model folder if a new prompt needs it)."""
        if self._text_encoder_loader is not None:
            self._text_encoder = None

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def latent_channels(self) -> int:
        return self.transformer.config.out_channels

    @property
    def vae_scale(self) -> int:
        return spatial_compression(self.vae)

    def _check_fit(self) -> None:
        t, v = self.transformer.config, self.vae.config
        if t.out_channels != v.latent_channels:
            raise ModelFolderError(
                f"transformer out_channels {t.out_channels} != autoencoder latent_channels {v.latent_channels}"
            )
        if self.transformer.ref_channels not in (0, v.latent_channels):
            raise ModelFolderError(
                f"transformer in_channels {t.in_channels} fits neither a text-to-image ({v.latent_channels}) nor an "
                f"editing ({2 * v.latent_channels}) model"
            )
        if self.config.resolution % self.vae_scale:
            raise ModelFolderError(
                f"resolution {self.config.resolution} is not a multiple of the autoencoder's "
                f"{self.vae_scale}x compression"
            )
        if self._text_encoder is not None:
            self._check_projector(self._text_encoder)

    def _check_projector(self, encoder: MetaQueryTextEncoder) -> None:
        out, caption = encoder.projector.config.out_features, self.transformer.config.caption_channels
        if out != caption:
            raise ModelFolderError(f"projector out_features {out} != transformer caption_channels {caption}")

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SanaEditPipeline:
        for module in (self.transformer, self.vae, self._text_encoder):
            if module is None:
                continue
            param = next(module.parameters())
            same_device = device is None or param.device == torch.device(device)
            if not (same_device and (dtype is None or param.dtype == dtype)):  # a no-op .to() still warns
                module.to(device=device, dtype=dtype)
        return self

    # -------------------------------------------------------------------------------------------- save / load
    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> SanaEditPipeline:
        """Load a model folder. The LLM is loaded lazily, only if a prompt is not in the folder's prompt cache."""
        model_dir = Path(model_dir)
        index = read_index(model_dir)
        config = PipelineConfig.from_dict(index.get("pipeline", {}))
        transformer = load_component(model_dir, "transformer", lambda p: _load_transformer(p, dtype))
        vae = load_component(model_dir, "vae", lambda p: _load_vae(p, dtype))
        if torch.device(device) != transformer.device:
            transformer, vae = transformer.to(device), vae.to(device)
        prompt_cache = load_prompt_cache(model_dir)
        pipe = cls(
            transformer.eval(),
            vae.eval(),
            config=config,
            prompt_cache=prompt_cache,
            text_encoder_loader=lambda: load_text_encoder(model_dir, config.template, dtype).to(device=device),
        )
        pipe.model_dir = model_dir
        if not prompt_cache:  # nothing cached: check the text path now, so a broken folder fails at load time
            pipe._check_projector(pipe.text_encoder)
        return pipe

    def save_pretrained(self, model_dir: str | Path, prompt_cache: bool = True) -> Path:
        """Write the model folder atomically (an existing folder is replaced only once the new one is complete).

        With `prompt_cache`, the conditioning of the model's own prompt and negative prompt is stored, so later
        runs with those prompts never load the LLM.
        """
        model_dir = Path(model_dir)
        encoder = self.text_encoder
        with atomic_folder(model_dir) as tmp:
            self.transformer.save_pretrained(tmp / "transformer")
            self.vae.save_pretrained(tmp / "vae")
            encoder.llm.save_pretrained(tmp / "llm")
            encoder.tokenizer.save_pretrained(tmp / "llm")
            encoder.connector.save_pretrained(tmp / "connector")
            encoder.projector.save_pretrained(tmp / "projector")
            save_meta_queries(encoder.meta_queries, tmp)
            if prompt_cache:
                prompts = dict.fromkeys([self.config.prompt, self.config.negative_prompt])
                with torch.no_grad():
                    entries = {p: tuple(t[:1] for t in self._encode_with_llm([p])) for p in prompts}
                save_prompt_cache(entries, tmp)
            index = {
                "_class_name": "SanaEditPipeline",
                "_sanaedit_version": __version__,
                "transformer": ["sanaedit", type(self.transformer).__name__],
                "vae": ["diffusers", type(self.vae).__name__],
                "llm": ["transformers", type(encoder.llm).__name__],
                "connector": ["sanaedit", "Connector"],
                "projector": ["sanaedit", "Projector"],
                "meta_queries": "meta_queries.safetensors",
                "pipeline": dataclasses.asdict(self.config),
            }
            (tmp / MODEL_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return model_dir

    # ------------------------------------------------------------------------------------------------ stages
    def _encode_with_llm(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_encoder(prompts)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning for each prompt, from the prompt cache where possible, else through the LLM (batched)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self.prompt_cache]
        if missing:
            hidden, mask = self._encode_with_llm(missing)
            if not self.keep_text_encoder:
                self.release_text_encoder()
            for i, p in enumerate(missing):
                self.prompt_cache[p] = (hidden[i : i + 1].cpu(), mask[i : i + 1].cpu())
            # bounded: a server fed user prompts must not grow without limit. The oldest entries go first; the
            # model's own prompts stay (they are what spares loading the LLM at all).
            pinned = {self.config.prompt, self.config.negative_prompt, *prompts}
            evictable = [p for p in self.prompt_cache if p not in pinned]
            for p in evictable[: max(0, len(self.prompt_cache) - PROMPT_CACHE_SIZE)]:
                del self.prompt_cache[p]
        hidden = torch.cat([self.prompt_cache[p][0] for p in prompts]).to(self.device, self.dtype)
        mask = torch.cat([self.prompt_cache[p][1] for p in prompts]).to(self.device)
        return hidden, mask

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae_encoder(pixels.to(self.device, self.dtype))

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae_decoder(latents.to(self.device, self.dtype))

    # -------------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | str | Path | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        callback: Callable[[int, int], None] | None = None,
        schedule: str | None = None,
    ) -> Image.Image:
        """Edit `image` (or, with `image=None`, generate from text). Returns a PIL image the size of the input."""
        cfg = self.config
        prompt = cfg.prompt if prompt is None else prompt
        negative_prompt = cfg.negative_prompt if negative_prompt is None else negative_prompt
        steps = cfg.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        scale = cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        sigmas = flow_sigmas(steps, cfg.shift, schedule or cfg.schedule)
        size = cfg.resolution // self.vae_scale
        latent_shape = (1, self.latent_channels, size, size)

        if isinstance(image, (str, Path)):
            from .image_io import load_image

            image = load_image(image)
        if image is not None:
            pixels, restore = preprocess(image, cfg.resolution)
            ref_latents = self.encode_image(pixels)
        else:
            restore = None
            ref_latents = torch.zeros(latent_shape, device=self.device, dtype=self.dtype)
        if not self.transformer.ref_channels:
            ref_latents = None  # a text-to-image model has no reference input

        use_cfg = scale > 1.0
        hidden, mask = self.encode_prompt([negative_prompt, prompt] if use_cfg else [prompt])
        if use_cfg and ref_latents is not None:
            ref_latents = ref_latents.expand(2, -1, -1, -1)

        def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            batch = x.expand(2, -1, -1, -1) if use_cfg else x
            timestep = (sigma * 1000).to(self.device, torch.float32).expand(batch.shape[0])
            v = self.transformer(batch.to(self.dtype), hidden, timestep, mask, ref_latents)
            if use_cfg:
                uncond, cond = v.float().chunk(2)
                return uncond + scale * (cond - uncond)
            return v

        bar = tqdm(total=steps, desc="denoising", unit="step", disable=not progress, leave=False)

        def on_step(i: int, total: int) -> None:
            bar.update(1)
            if callback is not None:
                callback(i, total)

        # Noise drawn on the CPU in fp32 so a seed gives the same image on every device and dtype.
        noise = torch.randn(latent_shape, generator=generator, dtype=torch.float32)
        try:
            latents = euler_sample(velocity, noise.to(self.device), sigmas, callback=on_step)
        finally:
            bar.close()
        if not torch.isfinite(latents).all():
            raise RuntimeError(
                "the transformer produced NaN/inf latents (broken weights, or an overflow in reduced precision: "
                "try float32)"
            )
        return postprocess(self.decode_latents(latents), restore)
