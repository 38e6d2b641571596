"""Masks for masked edits, in diffusers' inpainting convention: white = edit, black = keep.

A mask is given as the photo is (a path, a PIL image, a NumPy array or a torch tensor; a list, one per photo) and
read as greyscale: pixels of 50% grey or more are edited (diffusers' `binarize`), transparency counts as black.
It has the photo's size, or the photo's aspect ratio (then it is resized to the photo, as diffusers resizes masks;
within a pixel of rounding, so a mask painted on a reduced copy fits); any other shape is refused in one line.

Two uses, around the sampler (`core/inpaint.py` keeps the source latent outside the mask at every step):

- `latent_mask`: the mask in the model's latent grid, through the same geometry as the photo (`io.preprocess`'s box
  in the padded square; the padding is kept). A latent cell is edited when any of its pixels is white. diffusers
  samples the mask at the latent size (nearest), which loses a brush stroke thinner than a cell (32 model pixels
  on the DC-AE): what is painted must be edited.
- `paste_outside`: the photo's own pixels back outside the mask through a feathered border (diffusers'
  `apply_overlay` over a mask blurred by `blur_factor`): the kept pixels are the photo's exactly, never a VAE
  round trip of them.

PIL and NumPy only: the exported runtimes use this without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from sanaedit.image.arrays import array_pictures, is_array
from sanaedit.image.io import Restore, load_mask
from sanaedit.image.pixels import BLACK, to_rgb

EDIT_LEVEL = 128  # grey from which a pixel is edited (diffusers binarises at 0.5)
FEATHER = 4.0  # the pixel composite's Gaussian radius, in the model's pixels (diffusers' blur_factor default)
FEATHER_REACH = 2.5  # PIL's Gaussian blur changes pixels up to ~2.5 radii from an edge (farther ones stay exact)
ASPECT_TOLERANCE = 0.01  # a mask this close to the photo's aspect ratio (plus a pixel of rounding) is resized

MaskInput = Image.Image | str | Path | np.ndarray  # or a torch tensor, as the pipeline's `image`


def as_masks(mask_image: Any, sources: list[Any]) -> list[Any]:
    """One mask (or None) per source: None for all, one mask for all (diffusers repeats it), or one each. Arrays
    are read like images (a 4-D array is a batch of masks); files are read when the photo's turn comes."""
    if mask_image is None:
        return [None] * len(sources)
    if None in sources:
        raise ValueError("mask_image needs an image to edit (with image=None there is no photo to keep)")
    items = list(mask_image) if isinstance(mask_image, (list, tuple)) else [mask_image]
    masks = [mask for item in items for mask in (array_pictures(item, BLACK) if is_array(item) else [item])]
    if len(masks) == 1:
        return masks * len(sources)
    if len(masks) != len(sources):
        raise ValueError(f"mask_image holds {len(masks)} masks for {len(sources)} images: give one, or one per image")
    return masks


def mask_picture(mask: MaskInput) -> Image.Image:
    """A mask as a greyscale ("L") picture: a file read as a mask (`io.load_mask`), a PIL image's luminance."""
    if isinstance(mask, (str, Path)):
        return load_mask(mask)
    if not isinstance(mask, Image.Image):
        raise TypeError(f"mask_image must be a picture, a path or an array, got {type(mask).__name__}")
    return mask if mask.mode == "L" else to_rgb(mask, matte=BLACK).convert("L")


def check_mask_size(mask_size: tuple[int, int], photo_size: tuple[int, int], what: str = "mask_image") -> None:
    """The photo's size, or its aspect ratio (then `fit_mask` resizes it); else a one-line ValueError."""
    (mw, mh), (pw, ph) = mask_size, photo_size
    if (mw, mh) == (pw, ph):
        return
    if abs(mw * ph / (mh * pw) - 1) > ASPECT_TOLERANCE + 1 / min(mw, mh, pw, ph):
        raise ValueError(
            f"{what} is {mw}x{mh} but the photo is {pw}x{ph}: a mask must have the photo's size or at least its "
            "aspect ratio (white = edit, black = keep)"
        )


def fit_mask(mask: Image.Image, size: tuple[int, int], what: str = "mask_image") -> Image.Image:
    """`mask` (greyscale) at the photo's `size`: as it is, or resized when only its aspect ratio matches."""
    check_mask_size(mask.size, size, what)
    return mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)


def edited(mask: Image.Image) -> Image.Image:
    """The pixels that are edited, as a 0 / 255 picture."""
    return mask.point(lambda v: 255 if v >= EDIT_LEVEL else 0)


def latent_mask(mask: Image.Image, restore: Restore, vae_scale: int) -> np.ndarray:
    """[1, 1, h, w] float32, 1 where a latent cell is edited: `mask` (at the photo's size) placed as `preprocess`
    placed the photo, each cell edited if any of its pixels is (a box reduction: any white in a model pixel's
    footprint counts)."""
    x0, y0, x1, y1 = restore.box
    inner = edited(mask).resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    square = np.zeros((restore.resolution, restore.resolution), bool)
    square[y0:y1, x0:x1] = np.asarray(inner) > 0
    cells = restore.resolution // vae_scale
    grid = square.reshape(cells, vae_scale, cells, vae_scale).any(axis=(1, 3))
    return grid.astype(np.float32)[None, None]


def feather_radius(restore: Restore) -> float:
    """`FEATHER` model pixels in the photo's pixels."""
    return FEATHER * restore.side / restore.resolution


def paste_outside(edit: Image.Image, photo: Image.Image, mask: Image.Image, radius: float) -> Image.Image:
    """`edit` inside the mask, `photo`'s own pixels outside, blended over a Gaussian border of `radius` pixels
    (diffusers' `apply_overlay` on a blurred mask). Pixels farther than `FEATHER_REACH` radii from the mask's edge
    are the photo's, exactly."""
    soft = edited(mask).filter(ImageFilter.GaussianBlur(radius))
    return Image.composite(edit.convert("RGB"), photo.convert("RGB"), soft)
