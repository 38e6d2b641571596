"""Pictures given and returned as arrays, with diffusers' `VaeImageProcessor` conventions, so the habits of diffusers'
users work here: NumPy images are HWC or NHWC (uint8, or float in [0, 1]), torch images CHW or NCHW (float in
[0, 1]); `output_type` "pil", "np" (float32 NHWC in [0, 1]), "pt" (float32 NCHW in [0, 1]) or "latent".

Arrays become PIL pictures on the way in: the pipeline's one image path (padding, resizing, guided upsampling back
to the input's size) then serves them as it serves photos, and an array made from a picture edits exactly as that
picture. Torch is never imported here unless the caller passed a tensor or asked for "pt".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sanaedit.core.arrays import is_torch
from sanaedit.core.extras import require
from sanaedit.image.io import upright_rgb
from sanaedit.image.pixels import WHITE

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> the PIL mode they are read as


def check_output_type(output_type: str) -> None:
    """One of OUTPUT_TYPES ("pt" only where torch is installed), else one line naming the choices."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}; got {output_type!r}")
    if output_type == "pt":
        require("torch", 'output_type="pt" (torch tensors)')


def is_array(image: Any) -> bool:
    """A NumPy array or a torch tensor (checked without importing torch)."""
    return isinstance(image, np.ndarray) or (is_torch(image) and hasattr(image, "ndim"))


def as_sources(image: Any) -> list[Any]:
    """The pipeline's inputs, one per picture: a list's items, an array's images (a 4-D array is a batch) as PIL
    pictures; PIL images, paths and None pass through."""
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    return [picture for item in items for picture in (array_pictures(item) if is_array(item) else [item])]


def array_pictures(image: Any, matte: tuple[int, int, int] = WHITE) -> list[Image.Image]:
    """A NumPy array (HW, HWC, NHWC) or a torch tensor (HW, CHW, NCHW) -> one RGB picture per image (an alpha
    channel composited over `matte`)."""
    torch_layout = is_torch(image)
    if torch_layout:
        image = image.detach().cpu()
        image = image.float() if image.is_floating_point() else image
    array = np.asarray(image)
    layout = "CHW or NCHW torch tensor" if torch_layout else "HWC or NHWC NumPy array"
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim in (3, 4):
        array = array[None] if array.ndim == 3 else array
        array = array.transpose(0, 2, 3, 1) if torch_layout else array
    channels = array.shape[-1] if array.ndim == 4 else 0
    if channels not in MODES or 0 in array.shape:
        raise ValueError(
            f"image of shape {tuple(image.shape)} is not a picture: pass a {layout} with 1, 3 or 4 channels"
        )
    return [upright_rgb(Image.fromarray(pixels[..., 0] if channels == 1 else pixels, MODES[channels]), matte)
            for pixels in as_uint8(array)]  # fmt: skip


def as_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as it is; floats in [0, 1] scaled to 0..255 (diffusers' range for arrays and tensors); booleans (a
    mask) as 0 and 255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"image values must be uint8, or floats in [0, 1]; got {array.dtype}")
    low, high = float(array.min()), float(array.max())
    if not (0.0 <= low and high <= 1.0):  # nan fails too
        hint = ": a [-1, 1] image is (x + 1) / 2 in [0, 1]" if low >= -1.0 and high <= 1.0 else ""
        raise ValueError(f"image values must be in [0, 1] (diffusers' convention), got [{low:g}, {high:g}]{hint}")
    return np.round(array * 255).astype(np.uint8)


def to_output(images: list[Image.Image], output_type: str) -> Any:
    """The pictures as `output_type` asks ("pil": as they are). "np" / "pt" hold them in [0, 1]: one NHWC / NCHW
    batch when they share a size (always so for one input), else a list of HWC / CHW images (each input's size)."""
    if output_type == "pil":
        return images
    arrays = [np.asarray(image.convert("RGB"), np.float32) / np.float32(255) for image in images]
    if output_type == "pt":
        import torch

        arrays = [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in arrays]
        same = len({tuple(a.shape) for a in arrays}) == 1
        return torch.stack(arrays) if same else arrays
    same = len({a.shape for a in arrays}) == 1
    return np.stack(arrays) if same else arrays
