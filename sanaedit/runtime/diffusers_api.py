"""The diffusers habits `SanaEditPipeline` answers to beyond `__call__`: `to(dtype)` / `to(device, dtype)`,
`components`, `scheduler`, the LoRA methods under diffusers' names (`load_lora_weights`, `set_adapters`,
`fuse_lora`, `unload_lora_weights`) beside the pipeline's own, and the `callback_on_step_end` call.

A mixin on the pipeline (its `flow`, `config`, `staged`, `_text_encoder`, `_moved_to`): nothing here imports torch
unless the pipeline runs PyTorch networks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Self

import numpy as np

from sanaedit.core.arrays import is_torch
from sanaedit.core.choices import Sampler
from sanaedit.core.flow import TIMESTEP_SCALE
from sanaedit.core.sampling import Array, flow_sigmas
from sanaedit.plan import compute_dtype_name, styled, torch_dtype_name, warn_if_emulated

CALLBACK_TENSOR_INPUTS = ["latents"]  # what callback_on_step_end may ask for (diffusers' `_callback_tensor_inputs`)
# the diffusers scheduler each sampler integrates as (same sigmas for the same shift and steps)
SCHEDULER_CLASS = {
    Sampler.EULER: "FlowMatchEulerDiscreteScheduler",
    Sampler.DPM: "DPMSolverMultistepScheduler",
    Sampler.SCM: "SCMScheduler",
}


def is_dtype(value: Any) -> bool:
    """A torch.dtype (checked without importing torch)."""
    return is_torch(value) and type(value).__name__ == "dtype"


def placement(args: tuple, device: Any = None, dtype: Any = None) -> tuple[Any, Any]:
    """(device, dtype) from `to`'s arguments, as diffusers reads them: `to(dtype)`, `to(device)`, `to(device, dtype)`,
    or keywords."""
    if len(args) > 2 or (len(args) == 2 and is_dtype(args[0])):
        raise ValueError("to() takes a device, a dtype, or a device then a dtype")
    given_dtype = args[-1] if len(args) == 2 or (args and is_dtype(args[0])) else None
    given_device = args[0] if args and not is_dtype(args[0]) else None
    if (given_dtype is not None and dtype is not None) or (given_device is not None and device is not None):
        raise ValueError("to() got a device or dtype both as an argument and as a keyword; pass it once")
    return device if given_device is None else given_device, dtype if given_dtype is None else given_dtype


@dataclass(frozen=True)
class SamplerInfo:
    """What `pipe.scheduler` says: the sampler a call runs by default, its schedule and shift, and `config` in the keys
    of the diffusers scheduler that integrates the same way: Euler is FlowMatchEulerDiscreteScheduler fed
    `sigmas=linspace(1, 1/1000, N)` (the "default" schedule), DPM-Solver is DPMSolverMultistepScheduler with
    `use_flow_sigmas` (its own set_timesteps gives the "linear" schedule). Read-only: pass `sampler=` / `schedule=`
    to a call."""

    sampler: str
    schedule: str
    shift: float
    config: MappingProxyType = field(repr=False)

    @property
    def name(self) -> str:
        return self.config["_class_name"]

    def sigmas(self, num_inference_steps: int) -> np.ndarray:
        """The noise levels a call with this many steps runs through (N + 1 values, ending at 0)."""
        return flow_sigmas(num_inference_steps, self.shift, self.schedule)


def sampler_info(config: Any) -> SamplerInfo:
    """`pipe.scheduler` for a PipelineConfig."""
    shift = float(config.shift)
    values = {"_class_name": SCHEDULER_CLASS.get(config.sampler, str(config.sampler)), "num_train_timesteps": 1000}
    if config.sampler == Sampler.DPM:
        values.update(use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction", solver_order=2)
    else:
        values.update(shift=shift)
    return SamplerInfo(str(config.sampler), str(config.schedule), shift, MappingProxyType(values))


def step_end_callback(pipe: Any, callback: Callable[..., Any], names: list[str]) -> Callable[[int, float, Array], Any]:
    """The sampler's `step_end` for diffusers' `callback_on_step_end(pipe, step, timestep, {name: tensor})`: it gets
    the tensors named in `names` and may return {"latents": ...} to replace them."""

    def step_end(step: int, sigma: float, latents: Array) -> Array | None:
        timestep = pipe.flow.arrays.full(1, np.float32(sigma) * TIMESTEP_SCALE)[0]
        tensors = {"latents": latents}
        return (callback(pipe, step, timestep, {k: tensors[k] for k in names}) or {}).get("latents")

    return step_end


def check_tensor_inputs(names: list[str]) -> None:
    """diffusers' check_inputs for `callback_on_step_end_tensor_inputs`, in one line."""
    unknown = [k for k in names if k not in CALLBACK_TENSOR_INPUTS]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs has to be in {CALLBACK_TENSOR_INPUTS}, got {unknown}")


class DiffusersApiMixin:
    """`to`, `components`, `scheduler` and the LoRA methods of `SanaEditPipeline`."""

    def to(self, *args: Any, device: Any = None, dtype: Any = None, torch_dtype: Any = None) -> Self:
        """Move the PyTorch networks (staged: the resident ones now, the others as their stages load them), as
        diffusers' `to`: `to(torch.bfloat16)`, `to("cuda", torch.float16)`, `to(device=..., dtype=...)` (or
        `torch_dtype=`). A dtype this CPU only emulates is honoured, and said once (plan.warn_if_emulated)."""
        device, dtype = placement(args, device, dtype if torch_dtype is None else torch_dtype)
        if not self.flow.modules and not self.staged:
            if str(device or "cpu").split(":")[0] != "cpu" or str(dtype or "float32").split(".")[-1] != "float32":
                raise ValueError("an exported pipeline runs on the CPU with float32 inputs only")
            return self
        from sanaedit.models.torch_flow import place_modules

        if dtype is not None:
            compute_dtype_name(dtype)  # the dtypes from_pretrained takes, no others
        place_modules([*self.flow.modules, self._text_encoder], device, dtype)
        last_device, last_dtype = self._moved_to or (None, None)
        self._moved_to = (device or last_device, dtype or last_dtype)
        if self.staged:
            self._staged_to(device, dtype)
        warn_if_emulated(str(self.device), torch_dtype_name(self.dtype))
        return self

    @property
    def components(self) -> dict[str, Any]:
        """The networks by diffusers' names (`vae` None on graphs; `text_encoder` None until a prompt outside the
        prompt cache loads it) and the `scheduler`."""
        return {
            "transformer": self.flow.transformer,
            "vae": self.flow.vae,
            "vae_encoder": self.flow.encoder,
            "vae_decoder": self.flow.decoder,
            "text_encoder": self._text_encoder,
            "scheduler": self.scheduler,
        }

    @property
    def scheduler(self) -> SamplerInfo:
        """The sampler a call runs unless told otherwise (`sampler=`, `schedule=`), diffusers-style."""
        return sampler_info(self.config)

    @scheduler.setter
    def scheduler(self, value: Any) -> None:
        raise AttributeError("the sampler is chosen per call here: pass sampler='euler'|'dpm'|'scm' (and schedule=)")

    # ------------------------------------------------------------------------------------------------ LoRA
    def load_lora(self, path: str | Path, scale: float = 1.0, name: str | None = None) -> str:
        """Add a LoRA style (diffusers' Sana LoRA format: a file or a folder holding pytorch_lora_weights.safetensors)
        at `scale`; several may be active at once. Scale 0 gives exactly the base model. Returns its name."""
        from sanaedit.models.lora import load_lora

        self.check_lora_target("loading a LoRA")
        self.config = styled(self.config)  # the base model's refiner is not the style's
        return load_lora(self.flow.transformer, path, scale, name)

    def unload_lora(self) -> None:
        """Remove every LoRA: the pipeline edits exactly as its base model again."""
        from sanaedit.models.lora import unload_loras

        if self.flow.modules and not self.staged:  # staged: no LoRA can have been loaded
            unload_loras(self.flow.transformer)

    def load_lora_weights(
        self, path: str | Path, adapter_name: str | None = None, weight_name: str | None = None
    ) -> None:
        """diffusers' name for `load_lora` at scale 1 (`weight_name`: the file inside the folder `path`)."""
        self.load_lora(Path(path) / weight_name if weight_name else path, 1.0, adapter_name)

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | list[float] | None = None) -> None:
        """Activate these loaded LoRAs at these scales (default 1); the other loaded ones are set to scale 0."""
        from sanaedit.models.lora import set_lora_scales

        self.check_lora_target("setting adapters")
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = adapter_weights if isinstance(adapter_weights, list) else [adapter_weights] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"{len(names)} adapter_names but {len(weights)} adapter_weights; pass one per adapter")
        set_lora_scales(self.flow.transformer, {n: 1.0 if w is None else float(w) for n, w in zip(names, weights)})

    def fuse_lora(self, lora_scale: float = 1.0) -> None:
        """Merge the active LoRAs (times `lora_scale`) into the weights (unload_lora cannot take them out again)."""
        from sanaedit.models.lora import fuse_loras

        self.check_lora_target("fusing a LoRA")
        fuse_loras(self.flow.transformer, lora_scale)

    def unload_lora_weights(self) -> None:
        """diffusers' name for `unload_lora`."""
        self.unload_lora()

    def check_lora_target(self, what: str) -> None:
        """LoRAs need the PyTorch transformer in memory."""
        self._refuse_when_staged(what)
        if not self.flow.modules:
            raise ValueError("exported graphs cannot take a LoRA: merge it at export (`sanaedit export --lora`)")
