"""image/masks.py: reading masks (white = edit, transparency = keep), their size rule, their place in the latent
grid (the photo's own geometry, padding included) and the pixel composite."""

import io

import numpy as np
import pytest
from PIL import Image

from sanaedit.image.io import decode_mask, load_mask, preprocess, upright_size
from sanaedit.image.masks import (
    FEATHER_REACH,
    as_masks,
    check_mask_size,
    fit_mask,
    latent_mask,
    mask_picture,
    paste_outside,
)


def test_a_mask_file_reads_as_greyscale_with_transparency_kept(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :3] = (255, 255, 255, 255)  # opaque white: edit
    rgba[:, 3:] = (255, 255, 255, 0)  # transparent (whatever its colour): keep
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    for mask in (load_mask(tmp_path / "m.png"), mask_picture(Image.fromarray(rgba, "RGBA"))):
        assert mask.mode == "L" and np.array_equal(np.asarray(mask)[0], [255, 255, 255, 0, 0, 0])
    data = (tmp_path / "m.png").read_bytes()
    assert np.array_equal(np.asarray(decode_mask(data)), np.asarray(load_mask(tmp_path / "m.png")))
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.png: not an image"):
        load_mask(tmp_path / "bad.png")


def test_upright_size_reads_the_header_with_its_rotation(tmp_path):
    image = Image.new("RGB", (40, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: shown 30 wide, 40 tall
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif)
    (tmp_path / "turned.jpg").write_bytes(buf.getvalue())
    assert upright_size(tmp_path / "turned.jpg") == (30, 40)


def test_masks_come_one_for_all_or_one_each():
    photos = ["a", "b", "c"]
    assert as_masks(None, photos) == [None] * 3
    mask = Image.new("L", (4, 4))
    assert as_masks(mask, photos) == [mask] * 3
    batch = np.zeros((3, 4, 4, 1), np.uint8)
    assert [m.size for m in as_masks(batch, photos)] == [(4, 4)] * 3  # a 4-D array is one mask per image
    with pytest.raises(ValueError, match="holds 2 masks for 3 images"):
        as_masks([mask, mask], photos)


def test_a_mask_fits_the_photo_or_its_aspect_ratio():
    check_mask_size((400, 300), (400, 300))
    check_mask_size((2048, 1536), (504, 378))  # painted on a copy: resized
    check_mask_size((1001, 667), (126, 84))  # a reduced decode's rounding
    assert fit_mask(Image.new("L", (200, 150), 255), (400, 300)).size == (400, 300)
    with pytest.raises(ValueError, match=r"^mask_image is 300x300 but the photo is 400x300: .*aspect ratio"):
        check_mask_size((300, 300), (400, 300))
    with pytest.raises(ValueError, match=r"^--mask m.png is 410x300"):
        check_mask_size((410, 300), (400, 300), "--mask m.png")


def test_the_latent_mask_follows_the_photos_padding_and_keeps_thin_strokes():
    photo = Image.new("RGB", (200, 100))  # padded to a square: the photo fills the middle half, rows 16..48 of 64
    _, restore = preprocess(photo, 64, "black")
    assert restore.box == (0, 16, 64, 48)
    whole = latent_mask(Image.new("L", (200, 100), 255), restore, 8)
    assert whole.shape == (1, 1, 8, 8) and whole.dtype == np.float32
    assert np.array_equal(whole[0, 0].any(axis=1), [False, False, True, True, True, True, False, False])
    stroke = Image.new("L", (200, 100), 0)
    stroke.paste(255, (150, 0, 151, 100))  # one pixel wide, far thinner than a cell
    cells = latent_mask(stroke, restore, 8)[0, 0]
    assert cells[2:6, 6].all() and cells.sum() == 4  # the column of cells holding it, nothing else
    grey = Image.new("L", (200, 100), 127)  # under half: kept (diffusers binarises at 0.5)
    assert latent_mask(grey, restore, 8).sum() == 0


def test_the_composite_is_the_photo_outside_and_the_edit_inside():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    edit = Image.new("RGB", (80, 60), (255, 0, 0))
    mask = Image.new("L", (80, 60), 0)
    mask.paste(255, (40, 0, 80, 60))
    radius = 3.0
    out = np.asarray(paste_outside(edit, photo, mask, radius)).astype(int)
    reach = int(np.ceil(FEATHER_REACH * radius))
    assert np.array_equal(out[:, : 40 - reach], np.asarray(photo)[:, : 40 - reach])
    assert (out[:, 40 + reach :] == (255, 0, 0)).all()
    border = out[:, 40 - reach : 40 + reach]
    assert not np.array_equal(border, np.asarray(photo)[:, 40 - reach : 40 + reach])  # feathered, not a hard cut
