"""The ControlNet side of `SanaEditPipeline`: `pipe.controlnet`, `set_controlnet`, and the call's `control_image`
checked and turned into a control latent (models/controlnet.py; diffusers' names: `control_image=`,
`controlnet_conditioning_scale=`).

A mixin on the pipeline (its `flow`, `config`, `transformer`, `device`, `dtype`, `encode_image`, `_stage`): nothing here
imports torch unless the pipeline runs PyTorch networks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image

from sanaedit.core.choices import Control
from sanaedit.core.sampling import Array
from sanaedit.image.arrays import as_sources
from sanaedit.image.io import load_image, preprocess


def controlnet_module(options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """`from_pretrained`'s options split: (a `SanaControlNetModel` given as `controlnet=`, or None; the options
    for the plan, `controlnet` there only when it names a folder)."""
    controlnet = options.get("controlnet")
    if controlnet is None or isinstance(controlnet, (str, Path)):
        return None, options
    return controlnet, {k: v for k, v in options.items() if k != "controlnet"}


class ControlNetMixin:
    @property
    def controlnet(self):
        """The PyTorch ControlNet (diffusers' SanaControlNetModel), if the pipeline has one on PyTorch modules."""
        return getattr(self.flow.controlnet, "module", None)

    def set_controlnet(self, controlnet) -> Any:
        """Steer this pipeline's edits through `controlnet` (a `SanaControlNetModel` for this DiT; PyTorch networks
        only), moved to the DiT's device and dtype. Saving the pipeline then writes it as `controlnet/`. Returns the
        pipeline."""
        from sanaedit.models.controlnet import TorchControl, check_fits
        from sanaedit.models.torch_flow import place_modules

        if not self.flow.modules:
            raise ValueError(
                "this pipeline runs exported graphs: its ControlNet is a graph made at export (put it in the model "
                "folder as controlnet/ and export that)"
            )
        check_fits(controlnet, self.transformer)
        place_modules([controlnet], self.device, self.dtype)
        self.flow.controlnet = TorchControl(controlnet.eval())
        return self

    def _check_control(self, control_image: Any, sources: list[Any], scale: float) -> list[Any]:
        """The control of each input (None, Control.EDGES or a picture), checked before any work."""
        if control_image is None or (isinstance(control_image, str) and control_image == Control.NONE):
            return [None] * len(sources)
        if not math.isfinite(float(scale)):
            raise ValueError(f"controlnet_conditioning_scale must be a finite number, got {scale}")
        if self.flow.controlnet is None:
            raise ValueError(
                "this model has no ControlNet to take a control image: load one (from_pretrained(..., "
                "controlnet=DIR); CLI: --controlnet DIR), or put it in the model folder as controlnet/"
            )
        if isinstance(control_image, str) and control_image == Control.EDGES:
            if None in sources:
                raise ValueError("control_image='edges' takes the edges of the input photo: give an image")
            return [Control.EDGES] * len(sources)
        controls = as_sources(control_image)
        if None in controls or len(controls) not in (1, len(sources)):
            raise ValueError(
                f"control_image must be one picture, or one per input image ({len(sources)}), 'edges' or None; "
                f"got {len(controls)}"
            )
        return controls * len(sources) if len(controls) == 1 else controls

    def control_latents(self, control: Any, image: Image.Image | None) -> Array:
        """The control latent of one edit: a control picture, or the input photo's edges (at its own resolution:
        image/edges.py), through the pipeline's own preprocessing and the autoencoder (as diffusers encodes its
        control image), in the encoder's stage."""
        if control == Control.EDGES:
            from sanaedit.image.edges import edge_picture

            picture = edge_picture(image)
        else:
            picture = load_image(control) if isinstance(control, (str, Path)) else control
        pixels, _ = preprocess(picture, self.config.resolution, self.config.padding)
        with self._stage("encoder"):
            return self.encode_image(pixels)
