"""Full-resolution output: the guided upsampler (sanaedit/image/upsample.py), the padding policy of preprocessing
and the pipeline's use of both (every runtime shares that pipeline code)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.image import upsample as up
from sanaedit.image.io import postprocess, preprocess
from sanaedit.image.upsample import METHODS, restore_photo, upsample


def photo(width=240, height=160, seed=0) -> Image.Image:
    """A photo-like picture: smooth shading, sharp-edged shapes, fine noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([120 + 80 * x, 90 + 60 * y, 160 - 50 * x * y], -1)
    base[(x - 0.3) ** 2 + (y - 0.3) ** 2 < 0.02] = (230, 40, 30)  # a red disc
    base[int(height * 0.6) :, int(width * 0.55) :] = (20, 60, 200)  # a blue block: straight edges
    return Image.fromarray(np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8))


def small(image: Image.Image, factor: int = 4) -> Image.Image:
    return image.resize((image.width // factor, image.height // factor), Image.Resampling.BILINEAR)


def test_plain_is_bilinear_resizing():
    big = photo()
    edit = small(big)
    assert np.array_equal(
        np.asarray(upsample(edit, big, "plain")), np.asarray(edit.resize(big.size, Image.Resampling.BILINEAR))
    )


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="guided"):
        upsample(small(photo()), photo(), "bicubic")


@pytest.mark.parametrize("method", ["guided", "guided-grey"])
def test_guided_recovers_an_edit_that_is_a_colour_map_of_the_photo(method):
    """An edit that is an affine function of the photo's colour is reproduced at full resolution, edges and all
    (plain upsampling blurs it)."""
    big = photo()
    a = np.asarray(big, np.float64)
    if method == "guided-grey":  # luminance guide: the edit must be a function of luminance
        a = (a @ [0.299, 0.587, 0.114])[..., None].repeat(3, -1)
    truth = np.clip(255 - 0.8 * a + 20, 0, 255)  # an inverted, darker picture
    edit = small(Image.fromarray(truth.round().astype(np.uint8)))
    guided = np.asarray(upsample(edit, big, method, eps=1e-5), np.float64)
    plain = np.asarray(upsample(edit, big, "plain"), np.float64)
    err_guided, err_plain = np.abs(guided - truth).mean(), np.abs(plain - truth).mean()
    assert err_guided < 0.5 * err_plain
    assert err_guided < 4


def test_guided_output_has_the_photos_sharp_edges():
    big = photo()
    edit = small(Image.fromarray(255 - np.asarray(big)))
    grey = lambda im: np.asarray(im.convert("L"), np.float64)  # noqa: E731
    sharpness = lambda im: np.abs(np.diff(grey(im), axis=1)).max()  # noqa: E731
    assert sharpness(upsample(edit, big, "guided")) > 1.5 * sharpness(upsample(edit, big, "plain"))


def test_strips_give_the_same_picture(monkeypatch):
    big = photo(200, 150)
    edit = small(Image.fromarray(255 - np.asarray(big)))
    whole = np.asarray(upsample(edit, big, "guided"))
    monkeypatch.setattr(up, "STRIP_PIXELS", 200 * 7)  # 7 rows a strip
    assert np.array_equal(np.asarray(upsample(edit, big, "guided")), whole)


def test_upsample_imports_and_runs_without_torch():
    """The exported runtimes (ONNX Runtime, MNN) are torch-free: upsample.py and what it imports need numpy and PIL
    only. A fresh interpreter where `import torch` fails imports it and runs the guided filter."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from PIL import Image\n"
        "from sanaedit.image.upsample import upsample\n"
        "assert upsample(Image.new('RGB', (9, 7), 'red'), Image.new('RGB', (37, 23)), 'guided').size == (37, 23)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr


def test_box_mean_cuts_windows_at_the_border():
    """Each pixel's mean is over the part of its window inside the picture (avg_pool2d's count_include_pad=False)."""
    x = np.random.default_rng(0).random((2, 7, 5))
    for radius in (1, 2):
        expected = [
            [
                [p[max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1].mean() for j in range(5)]
                for i in range(7)
            ]
            for p in x
        ]
        assert np.allclose(up._box(x, radius), expected, rtol=0, atol=1e-12)


def test_same_size_and_tiny_edits_are_returned_plainly():
    big = photo(64, 48)
    assert upsample(big, big, "guided").size == big.size
    tiny = big.resize((1, 1))
    assert upsample(tiny, big, "guided").size == big.size


@pytest.mark.slow
def test_twelve_megapixel_photo_in_bounded_memory():
    import tracemalloc

    big = Image.new("RGB", (4000, 3000), (120, 90, 60))
    edit = Image.new("RGB", (512, 384), (30, 30, 30))
    tracemalloc.start()
    out = upsample(edit, big, "guided")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.size == big.size
    assert peak < 120 * 2**20  # the 12 MP output itself is 36 MB; a float copy of the photo would be 144 MB


def test_reflect_padding_mirrors_the_picture_and_black_is_the_engine_default():
    image = photo(90, 30)
    (black, restore), (reflect, same) = preprocess(image, 48), preprocess(image, 48, "reflect")
    black, reflect = np.asarray(black), np.asarray(reflect)  # NumPy (or a CPU tensor)
    assert restore == same
    x0, y0, x1, y1 = restore.box
    assert np.array_equal(black[..., y0:y1, x0:x1], reflect[..., y0:y1, x0:x1])
    assert (black[..., :y0, :] == -1).all()  # zeros in [0, 255] -> -1
    # the rows above the picture mirror its first rows (numpy's "reflect": the edge row is not repeated)
    assert np.array_equal(reflect[..., y0 - 1, :], reflect[..., y0 + 1, :])
    with pytest.raises(ValueError, match="reflect"):
        preprocess(image, 48, "grey")


def test_postprocess_at_the_box_size_is_the_model_resolution_crop():
    image = photo(90, 30)
    pixels, restore = preprocess(image, 48, "reflect")
    x0, y0, x1, y1 = restore.box
    low = postprocess(pixels, restore, size=(x1 - x0, y1 - y0))
    expected = ((np.asarray(pixels)[0, :, y0:y1, x0:x1] + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(low), expected)


@pytest.mark.parametrize("method", ["plain", "guided"])
def test_restore_photo_takes_numpy_and_torch_pixels_alike(method):
    """The exported runtimes hand NumPy arrays, the PyTorch one tensors: the same picture either way."""
    image = photo(90, 30)
    pixels, restore = preprocess(image, 48, "reflect")
    pixels = np.asarray(pixels)
    as_numpy = restore_photo(pixels, restore, image, method)
    assert np.array_equal(
        np.asarray(as_numpy), np.asarray(restore_photo(torch.from_numpy(pixels), restore, image, method))
    )


def test_restore_photo_plain_is_the_old_postprocess_and_guided_keeps_the_size():
    image = photo(90, 30)
    pixels, restore = preprocess(image, 48, "reflect")
    assert np.array_equal(
        np.asarray(restore_photo(pixels, restore, image, "plain")), np.asarray(postprocess(pixels, restore))
    )
    guided = restore_photo(pixels, restore, image, "guided")
    assert guided.size == image.size
    # the input through an identity 'model' comes back closer to the photo than plain upsampling brings it
    err = lambda im: np.abs(np.asarray(im, np.float64) - np.asarray(image, np.float64)).mean()  # noqa: E731
    assert err(guided) < 0.7 * err(restore_photo(pixels, restore, image, "plain"))
    assert restore_photo(pixels, None, None, "guided").size == (48, 48)  # text-to-image: the square itself


def test_pipeline_uses_its_padding_and_upsampling(monkeypatch, tiny_pipe):
    pipe = tiny_pipe
    monkeypatch.setattr(pipe.config, "padding", pipe.config.padding)  # restored after the test
    monkeypatch.setattr(pipe.config, "upsample", pipe.config.upsample)
    seen = []
    encode = pipe.encode_image
    monkeypatch.setattr(pipe, "encode_image", lambda pixels: seen.append(pixels) or encode(pixels))
    image = photo(96, 40)
    outputs = {}
    for padding, method in [("black", "plain"), ("reflect", "plain"), ("reflect", "guided")]:
        pipe.config.padding, pipe.config.upsample = padding, method
        outputs[padding, method] = pipe(image, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
        outputs[padding, method] = outputs[padding, method].images[0]
        assert outputs[padding, method].size == image.size
    assert (seen[0][..., 0, :] == -1).all()  # black padding: the engine's zeros
    assert (seen[-1][..., 0, :] > -1).any()  # reflect: picture above the picture
    assert not np.array_equal(np.asarray(outputs["reflect", "plain"]), np.asarray(outputs["reflect", "guided"]))


def test_cli_upsample_choices_are_the_methods():
    import argparse

    from sanaedit.apps.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    (option,) = [a for a in commands["edit"]._actions if "--upsample" in a.option_strings]
    assert tuple(option.choices) == tuple(m.value for m in METHODS)
    assert up.DEFAULT_METHOD in METHODS
