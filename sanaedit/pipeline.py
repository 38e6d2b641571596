"""SanaEditPipeline: photo in, edited photo out, in the style of a diffusers pipeline.

    pipe = SanaEditPipeline.from_pretrained("path/to/model")
    comic = pipe(Image.open("photo.jpg"), generator=torch.Generator().manual_seed(0))

Stages: preprocess (`image/io.py`) -> encode (ref latents) -> text conditioning (prompt cache, else the text encoder)
-> flow-matching Euler through `FlowModel` (CFG as one [neg, pos] batch) -> decode -> postprocess back to the
input's own size. One pipeline over a small protocol of networks (`FlowModel` + a text encoder
`prompts -> (hidden, mask)`), assembled in one place (`from_plan`) from what any reader yields (formats/source.py):
a PyTorch model folder, an ONNX export, MNN graphs in the published release's layout, or weights built in memory.
What a run uses is decided once, in its plan (plan.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sanaedit.core.arrays import float32, no_grad
from sanaedit.core.choices import SAMPLER_SCHEDULE, Backend
from sanaedit.core.config import (
    COMIC_PROMPT,  # noqa: F401  (part of this module's API)
    PipelineConfig,
)
from sanaedit.core.flow import FlowModel
from sanaedit.core.inpaint import keep_source_outside
from sanaedit.core.inputs import check_generators, check_inputs
from sanaedit.core.sampling import Array, flow_sigmas, get_sampler
from sanaedit.errors import ModelFolderError
from sanaedit.formats.source import ModelSource, TextEncoder
from sanaedit.image.arrays import as_sources, check_output_type, to_output
from sanaedit.image.io import load_image, preprocess
from sanaedit.image.masks import MaskInput, as_masks, feather_radius, fit_mask, latent_mask, mask_picture, paste_outside
from sanaedit.image.upsample import check_method, restore_photo
from sanaedit.plan import RunPlan, make_plan
from sanaedit.runtime.controlnet_api import ControlNetMixin, controlnet_module
from sanaedit.runtime.diffusers_api import DiffusersApiMixin, check_tensor_inputs, step_end_callback
from sanaedit.runtime.prompts import PromptsMixin
from sanaedit.runtime.residency import StagedResidencyMixin
from sanaedit.runtime.sources import open_source

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

ImageInput = Image.Image | str | Path | np.ndarray  # or a torch tensor (diffusers' conventions: image/arrays.py)


@dataclass
class SanaEditOutput:
    """What a pipeline call returns (diffusers' `ImagePipelineOutput` convention): PIL images, or as `output_type`."""

    images: Any


class SanaEditPipeline(DiffusersApiMixin, StagedResidencyMixin, PromptsMixin, ControlNetMixin):
    """Edits a photo (or makes one from text) with a SANA linear DiT conditioned through meta-queries."""

    def __init__(
        self,
        flow: FlowModel,
        text_encoder: TextEncoder | None = None,
        config: PipelineConfig | None = None,
        prompt_cache: dict[str, tuple[Array, Array]] | None = None,
        text_encoder_loader: Callable[[], TextEncoder] | None = None,
        model_dir: Path | None = None,
        backend: Backend = Backend.TORCH,
        network_loader: Callable[[str, Any, Any], Any] | None = None,
    ):
        self.flow = flow
        self.backend = backend  # what runs the networks: torch, onnxruntime or mnn
        self.config = config or PipelineConfig()
        self.prompt_cache = dict(prompt_cache or {})
        self._text_encoder = text_encoder
        self._text_encoder_loader = text_encoder_loader
        self.model_dir = model_dir  # the folder it was loaded from (None when built in memory)
        self.keep_text_encoder = True  # False: free the LLM once a new prompt's features are cached (one-shot use)
        self._progress_bar_config: dict[str, Any] = {}
        self._moved_to: tuple[Any, Any] | None = None  # (device, dtype) of the last `to`: for an LLM loaded later
        self._network_loader = network_loader  # (name, device, dtype) -> that network, loaded anew, placed there
        if self.config.resolution % flow.vae_scale:
            raise ModelFolderError(
                f"resolution {self.config.resolution} is not a multiple of the autoencoder's {flow.vae_scale}x "
                "compression"
            )
        if text_encoder is not None:
            self.check_text_encoder(text_encoder)
        if self.config.fp16_clipping:
            self.transformer.set_fp16_clipping(True)

    @classmethod
    def from_modules(
        cls, transformer, vae, text_encoder: TextEncoder | None = None, config: PipelineConfig | None = None, **kwargs
    ) -> SanaEditPipeline:
        """A pipeline on PyTorch modules: a SANA edit transformer, a DC-AE and (optionally) a MetaQueryTextEncoder."""
        from sanaedit.models.torch_flow import torch_flow

        return cls(torch_flow(transformer, vae), text_encoder, config, **kwargs)

    # ----------------------------------------------------------------------------------------------- components
    @property
    def transformer(self):
        return self.flow.transformer

    @property
    def vae(self):
        """The PyTorch autoencoder (None on exported graphs)."""
        return self.flow.vae

    @property
    def vae_encoder(self):
        return self.flow.encoder

    @property
    def vae_decoder(self):
        return self.flow.decoder

    @property
    def device(self) -> torch.device:
        return self.flow.device

    @property
    def dtype(self) -> torch.dtype:
        return self.flow.dtype

    @property
    def latent_channels(self) -> int:
        return self.flow.latent_channels

    @property
    def vae_scale(self) -> int:
        return self.flow.vae_scale

    @property
    def text_encoder(self) -> TextEncoder:
        """The LLM path, loaded on first use: prompts in the prompt cache never need it."""
        if self._text_encoder is None:
            if self._text_encoder_loader is None:
                raise RuntimeError("this pipeline has no text encoder; only cached prompts can be used")
            self._text_encoder = self._text_encoder_loader()
            if self._moved_to is not None:  # it loads where the pipeline was loaded: follow it where `to` moved it
                self.to(*self._moved_to)
        return self._text_encoder

    @property
    def text_encoder_loaded(self) -> bool:
        return self._text_encoder is not None

    def release_text_encoder(self) -> None:
        """Free the LLM (it is reloaded from the model folder if a new prompt needs it)."""
        if self._text_encoder_loader is not None:
            self._text_encoder = None

    def check_text_encoder(self, encoder: TextEncoder) -> None:
        """The text path's output width fits the DiT (PyTorch modules; graphs were checked when exported)."""
        projector, config = getattr(encoder, "projector", None), getattr(self.transformer, "config", None)
        if getattr(projector, "config", None) is None or config is None:
            return  # graphs: their shapes were checked when they were exported
        out, caption = projector.config.out_features, config.caption_channels
        if out != caption:
            raise ModelFolderError(f"projector out_features {out} != transformer caption_channels {caption}")

    # -------------------------------------------------------------------------------------------- save / load
    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | None = None,
        **options: Any,
    ) -> SanaEditPipeline:
        """Load any model source: a PyTorch model folder (the LLM only if a prompt is not in its prompt cache), an
        exported folder or the published release's files (their own runtime: CPU, float32; torch is not imported).
        `torch_dtype` is diffusers' name for `dtype` (default float32). `options` are `plan.make_plan`'s (backend, vae,
        upsample, threads, loras, staged, controlnet). `controlnet`: a ControlNet folder or a `SanaControlNetModel`
        (default: the folder's own `controlnet/`, if any). For the CLI's defaults (threads, dtype, caches) use
        `load_pipeline`."""
        source = open_source(model_dir)
        dtype = torch_dtype or dtype or "float32"
        module, options = controlnet_module(options)  # a module joins the pipeline; a folder is the plan's
        pipe = cls.from_plan(source, make_plan(source.info, device=str(device), dtype=dtype, tuned=False, **options))
        return pipe if module is None else pipe.set_controlnet(module)

    @classmethod
    def from_plan(cls, source: ModelSource, plan: RunPlan) -> SanaEditPipeline:
        """The one assembly: a pipeline on the networks `source` builds for `plan`, whatever the format."""
        parts = source.networks(plan)
        pipe = cls(
            parts.flow,
            text_encoder=parts.text_encoder,
            config=plan.config,
            prompt_cache=parts.prompt_cache,
            text_encoder_loader=parts.text_encoder_loader,
            model_dir=source.info.folder,
            backend=plan.backend,
            network_loader=parts.network_loader,
        )
        if plan.staged:
            pipe.enable_staged_residency()
        if not pipe.prompt_cache and parts.text_encoder_loader is not None and plan.backend == Backend.TORCH:
            pipe.check_text_encoder(pipe.text_encoder)  # nothing cached: a broken text path fails at load time
        return pipe

    def save_pretrained(self, model_dir: str | Path, prompt_cache: bool = True) -> Path:
        """Write the model folder atomically (an existing folder is replaced only once the new one is complete). With
        `prompt_cache`, the conditioning of the model's own prompts is stored, so runs with them never load the LLM.
        A pipeline on exported graphs copies its exported folder."""
        self._refuse_when_staged("saving")
        if not self.flow.modules:
            from sanaedit.core.atomic import copy_folder

            return copy_folder(self.model_dir, Path(model_dir))
        from sanaedit.formats.torch_folder import save_model_folder

        return save_model_folder(self, Path(model_dir), prompt_cache)

    @no_grad
    def encode_image(self, pixels: Array) -> Array:
        return self.flow.encode(pixels)

    @no_grad
    def decode_latents(self, latents: Array) -> Array:
        return self.flow.decode(latents)

    # -------------------------------------------------------------------------------------------------- call
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm settings for the denoising bar (diffusers' convention); `disable=False` shows it by default."""
        self._progress_bar_config = dict(kwargs)

    @no_grad
    def __call__(
        self,
        image: ImageInput | list[ImageInput] | None = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: Any = None,
        num_images_per_prompt: int = 1,
        strength: float = 1.0,
        progress: bool | None = None,
        callback: Callable[[int, int], None] | None = None,
        callback_on_step_end: Callable[..., dict] | None = None,
        schedule: str | None = None,
        sampler: str | None = None,
        return_dict: bool = True,
        output_type: str = "pil",
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        mask_image: MaskInput | list[MaskInput] | None = None,
        control_image: Any = None,
        controlnet_conditioning_scale: float = 1.0,
    ) -> SanaEditOutput | tuple[Any]:
        """Edit `image` (a PIL image, a path, a NumPy array or torch tensor as diffusers takes them, or a list), or
        with `image=None` generate from text.

        Returns `SanaEditOutput(images)` (`return_dict=False`: a tuple `(images,)`), `num_images_per_prompt` images
        per input in input order, each the size of its input; `output_type` "np" / "pt" gives them as float32 arrays /
        tensors in [0, 1] (image/arrays.py), "latent" the latents, undecoded (`decode_latents` decodes them).
        `strength` < 1 edits partially: the last int(steps x strength) steps, from the source latent noised to where
        they start (diffusers' img2img). `mask_image` (white = edit, diffusers' inpainting; given as `image` is, one
        for all or one per image) edits its white part only: the rest keeps the photo's own pixels (core/inpaint.py,
        image/masks.py; "latent": the blended latents). Both work on every runtime and sampler.
        `control_image` (a picture, one per input, or "edges": the photo's own) steers the edit through the model's
        ControlNet at `controlnet_conditioning_scale` (diffusers' names; runtime/controlnet_api.py).
        `callback(step, total)` reports progress; `callback_on_step_end(pipe, step, timestep, {"latents": x})` may
        return {"latents": ...} to replace them (torch tensors on PyTorch networks, NumPy arrays on exported graphs).
        `generator`: a torch.Generator (diffusers' convention) or a `sanaedit.core.noise.Generator` (the same numbers
        for the same seed, without torch), or a list with one per image; None draws fresh noise.
        """
        sources = as_sources(image)
        masks = [None if m is None else mask_picture(m) for m in as_masks(mask_image, sources)]  # bad files fail now
        cfg = self.config
        steps = cfg.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        scale = cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        check_inputs(sources, num_images_per_prompt, strength, steps, scale, prompt, negative_prompt)
        check_generators(generator, len(sources) * num_images_per_prompt)
        check_output_type(output_type)
        check_method(cfg.upsample, self.flow.refiner)
        tensor_inputs = getattr(callback_on_step_end, "tensor_inputs", callback_on_step_end_tensor_inputs)
        tensor_inputs = ["latents"] if tensor_inputs is None else list(tensor_inputs)  # diffusers' default
        check_tensor_inputs(tensor_inputs)
        controls = self._check_control(control_image, sources, controlnet_conditioning_scale)
        settings = dict(
            prompt=cfg.prompt if prompt is None else prompt,
            negative_prompt=cfg.negative_prompt if negative_prompt is None else negative_prompt,
            steps=steps,
            scale=scale,
            # A sampler asked for without a schedule gets its own: DPM-Solver's history term vanishes from sigma 1
            # (it would equal Euler there), so "linear" as SANA's pipelines run it; sCM its few-step "scm" times
            schedule=schedule
            or (SAMPLER_SCHEDULE.get(sampler, cfg.schedule) if sampler != cfg.sampler else cfg.schedule),
            sample=get_sampler(sampler or cfg.sampler),
            count=num_images_per_prompt,
            strength=strength,
            progress=(not self._progress_bar_config.get("disable", True)) if progress is None else progress,
            callback=callback,
            step_end=callback_on_step_end and step_end_callback(self, callback_on_step_end, tensor_inputs),
            decode=output_type != "latent",
            control_scale=float(controlnet_conditioning_scale),
        )
        schedule_used = settings["schedule"]
        logger.debug(f"sampling: {sampler or cfg.sampler}, schedule {schedule_used}, {steps} steps, guidance {scale:g}")
        count = num_images_per_prompt
        generators = [generator[i * count : (i + 1) * count] if isinstance(generator, list) else generator
                      for i in range(len(sources))]  # fmt: skip
        outputs = [out for source, mask, g, steer in zip(sources, masks, generators, controls)
                   for out in self._edit(source, mask_image=mask, generator=g, control=steer, **settings)]  # fmt: skip
        images = self.flow.arrays.cat(outputs) if output_type == "latent" else to_output(outputs, output_type)
        return SanaEditOutput(images) if return_dict else (images,)

    def _edit(
        self, image, mask_image, prompt, negative_prompt, steps, scale, schedule, sample, count, strength, generator,
        progress, callback, step_end, decode, control=None, control_scale=1.0,
    ) -> list[Any]:  # fmt: skip
        """`count` samples of one input, as one batch: pictures (`decode`), else their latents. `mask_image`: a
        greyscale picture (white = edit), or None."""
        size = self.config.resolution // self.vae_scale
        latent_shape = (count, self.latent_channels, size, size)
        if isinstance(image, (str, Path)):
            image = load_image(image)
        if image is not None:
            mask_image = mask_image and fit_mask(mask_image, image.size)  # before any network runs
            pixels, restore = preprocess(image, self.config.resolution, self.config.padding)
            with self._stage("encoder"):
                ref_latents = self.encode_image(pixels)
        else:
            restore = None
            ref_latents = self.flow.arrays.zeros((1, *latent_shape[1:]))
        control_latents = None if control is None else self.control_latents(control, image)

        use_cfg = scale > 1.0 and self.flow.guidance_embeds is None  # a student embeds the scale instead
        hidden, mask = self.encode_prompt([negative_prompt, prompt] if use_cfg else [prompt])
        velocity = self.flow.sampling_velocity(hidden, mask, ref_latents, scale, control_latents, control_scale)
        sigmas = flow_sigmas(steps, self.config.shift, schedule)
        # Noise drawn on the CPU in fp32 so a seed gives the same image on every device, dtype and runtime.
        latents = noise = self.flow.arrays.randn(latent_shape, generator)
        if strength < 1.0:
            kept = int(steps * strength)  # >= 1: checked by __call__
            sigmas = sigmas[steps - kept :]
            latents = (1 - float(sigmas[0])) * float32(ref_latents) + float(sigmas[0]) * latents

        if mask_image is not None:  # outside the mask, the source at every step's noise level
            cells = float32(self.flow.arrays.input(latent_mask(mask_image, restore, self.vae_scale)))
            step_end = keep_source_outside(float32(ref_latents), noise, cells, sigmas, then=step_end)

        total = len(sigmas) - 1
        bar_config = {"desc": "denoising", "unit": "step", "leave": False, **self._progress_bar_config}
        bar = tqdm(total=total, **{**bar_config, "disable": not progress})

        def on_step(i: int, total: int) -> None:
            bar.update(1)
            if callback is not None:
                callback(i, total)

        with self._stage("transformer"):
            try:
                latents = sample(
                    velocity,
                    latents,
                    sigmas,
                    callback=on_step,
                    step_end=step_end,
                    generator=generator,  # the sCM sampler draws fresh noise each step
                )
            finally:
                bar.close()  # before the stage's -v timing line, which would otherwise land on the bar's line
        if not self.flow.arrays.all_finite(latents):
            raise RuntimeError(
                "the transformer produced NaN/inf latents (broken weights, or an overflow in reduced precision: "
                "try float32)"
            )
        if not decode:
            return [latents[i : i + 1] for i in range(count)]
        with self._stage("decoder"):
            decoded = [self.decode_latents(latents[i : i + 1]) for i in range(count)]
        edits = [restore_photo(x, restore, image, self.config.upsample, self.flow.refiner) for x in decoded]
        if mask_image is not None:  # the photo's own pixels outside the mask, exactly
            edits = [paste_outside(edit, image, mask_image, feather_radius(restore)) for edit in edits]
        return edits
