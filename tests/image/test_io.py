"""Hostile inputs: each gives a correct image or a one-line ImageLoadError naming the file and the problem."""

import numpy as np
import pytest
from PIL import Image

from sanaedit.errors import ImageLoadError
from sanaedit.image.io import load_image, save_image_atomic
from tests.conftest import gradient, png_header_only


def expect_error(path, *words):
    with pytest.raises(ImageLoadError) as err:
        load_image(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message
    return message


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    gradient(200, 200).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:600])
    expect_error(path, "truncated")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    expect_error(tmp_path / "empty.png", "0 bytes")


def test_one_pixel(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "p.png")
    img = load_image(tmp_path / "p.png")
    assert img.size == (1, 1) and img.getpixel((0, 0)) == (10, 20, 30)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    png_header_only(tmp_path / "bomb.png", 12000, 12000)
    expect_error(tmp_path / "bomb.png", "12000x12000", "decompression")
    png_header_only(tmp_path / "big.png", 9000, 9000)  # under PIL's own limit, over ours
    expect_error(tmp_path / "big.png", "over the limit")


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    img = load_image(tmp_path / "cmyk.jpg")
    r, g, b = img.getpixel((8, 4))
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16_bit_png(tmp_path):
    array = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    img = load_image(tmp_path / "deep.png")
    assert img.mode == "RGB" and abs(img.getpixel((0, 0))[0] - 128) <= 1  # scaled, not clipped to white


def test_palette_png_with_transparency(tmp_path):
    img = Image.new("P", (10, 10), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((5, 5), 1)
    img.save(tmp_path / "pal.png", transparency=0)
    out = load_image(tmp_path / "pal.png")
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((5, 5)) == (0, 0, 255)


def test_rgba_and_grayscale(tmp_path):
    Image.new("RGBA", (6, 6), (0, 255, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((1, 1)) == (255, 255, 255)
    Image.new("RGBA", (6, 6), (0, 255, 0, 255)).save(tmp_path / "solid.png")
    assert load_image(tmp_path / "solid.png").getpixel((1, 1)) == (0, 255, 0)
    Image.new("L", (6, 6), 77).save(tmp_path / "gray.jpg")
    img = load_image(tmp_path / "gray.jpg")
    assert img.mode == "RGB" and abs(img.getpixel((1, 1))[0] - 77) <= 2


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # red on the left half as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to view
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    assert out.getpixel((10, 5))[0] > 200  # the stored left half is on top once upright


def test_animated_gif_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = load_image(tmp_path / "anim.gif")
    assert out.getpixel((4, 4))[0] > 200 and out.getpixel((4, 4))[1] < 50


def test_webp_and_wrong_extension(tmp_path):
    gradient().save(tmp_path / "photo.webp")
    assert load_image(tmp_path / "photo.webp").size == (40, 30)
    gradient().save(tmp_path / "actually_png.jpg", format="PNG")
    assert load_image(tmp_path / "actually_png.jpg").size == (40, 30)  # decoded by content


def test_text_file_named_jpg_and_directory_named_png(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    expect_error(tmp_path / "notes.jpg", "not an image")
    (tmp_path / "folder.png").mkdir()
    expect_error(tmp_path / "folder.png", "directory")
    expect_error(tmp_path / "missing.png", "not found")


def test_save_atomic_replaces_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "r.png"
    save_image_atomic(gradient(), target)
    assert Image.open(target).size == (40, 30)

    class Broken:
        def save(self, *a, **k):
            raise OSError("disk full")

    with pytest.raises(OSError):
        save_image_atomic(Broken(), target)
    assert Image.open(target).size == (40, 30)  # the old file survives
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.png"]
    with pytest.raises(ValueError, match="unknown image extension"):
        save_image_atomic(gradient(), tmp_path / "r.xyz")


def test_embedded_colour_profiles(tmp_path):
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    gradient().save(tmp_path / "tagged.png", icc_profile=srgb)
    tagged = np.asarray(load_image(tmp_path / "tagged.png"), dtype=int)
    assert np.abs(tagged - np.asarray(gradient(), dtype=int)).max() <= 2  # sRGB -> sRGB changes nothing
    gradient().save(tmp_path / "bad_profile.png", icc_profile=b"not a profile")
    assert load_image(tmp_path / "bad_profile.png").size == (40, 30)  # a broken profile is ignored, not fatal


def test_damaged_exif_still_gives_an_upright_image(tmp_path):
    # orientation 6 next to a damaged tag: PIL's exif_transpose raises on it (struct.error), we still rotate
    exif = bytearray(b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x04")
    exif += b"\x01\x07\x00\x02\x00\x00\x00\x07\x00\x00\x00>"  # tag 0x0107 as ASCII pointing at text
    exif += b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"  # orientation = 6
    exif += b"\x01\x1a\x00\x05\x00\x00\x00\x01\x00\x00\x00F\x012\x00\x02\x00\x00\x00\x14\x00\x00\x00N\x00\x00\x00\x00"
    exif += b"Camera\x00\x00\x00\x00\x00H\x00\x00\x00\x012020:01:01 00:00:00\x00"
    gradient().save(tmp_path / "odd_exif.jpg", exif=bytes(exif))
    assert load_image(tmp_path / "odd_exif.jpg").size == (30, 40)
    exif_garbage = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\xff\xff\xff\xff"
    gradient().save(tmp_path / "garbage_exif.jpg", exif=exif_garbage)
    assert load_image(tmp_path / "garbage_exif.jpg").size == (40, 30)


def test_unreadable_and_special_files(tmp_path, monkeypatch):
    import os

    os.mkfifo(tmp_path / "pipe.png")
    expect_error(tmp_path / "pipe.png", "not a regular file")  # and does not block reading it
    gradient().save(tmp_path / "locked.png")

    def denied(*args, **kwargs):  # chmod 000 does not stop root, so simulate the OS refusing
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", denied)
    expect_error(tmp_path / "locked.png", "permission denied")


def test_random_corruption_never_escapes_as_a_raw_exception():
    """Seeded fuzz: damaged bytes of every format give an RGB image or an ImageLoadError, nothing else."""
    import io
    import random

    from sanaedit.image.io import decode_image

    rng = random.Random(0)
    pixels = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    sources = []
    for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"):
        buf = io.BytesIO()
        pixels.save(buf, format=fmt)
        sources.append(buf.getvalue())
    outcomes = {"image": 0, "error": 0}
    for _ in range(600):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        try:
            assert decode_image(bytes(data), "fuzz").mode == "RGB"
            outcomes["image"] += 1
        except ImageLoadError as err:
            assert str(err).startswith("fuzz: ") and "\n" not in str(err)
            outcomes["error"] += 1
    assert outcomes["image"] > 50 and outcomes["error"] > 50  # both paths really exercised


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(tmp_path, orientation):
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    gradient().save(tmp_path / "o.png", exif=exif)  # PNG: lossless, so pixels compare exactly
    expected = ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB")
    assert np.array_equal(np.asarray(load_image(tmp_path / "o.png")), np.asarray(expected))


def test_heic_gets_a_message_of_its_own(tmp_path):
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    expect_error(tmp_path / "IMG_0001.HEIC", "HEIC", "export it as JPEG")
