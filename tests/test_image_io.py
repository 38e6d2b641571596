"""Hostile inputs: each gives a correct image or a one-line ImageLoadError naming the file and the problem."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sanaedit.image_io import ImageLoadError, load_image, save_image_atomic


def gradient(w=40, h=30):
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None, None]
    return Image.fromarray(
        np.concatenate(
            [np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 128, np.uint8)], axis=2
        )
    )


def png_header_only(path, width, height):
    """A PNG that declares width x height but holds almost no data (a decompression bomb's header)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


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
