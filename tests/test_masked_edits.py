"""Issue 28: masked edits (`mask_image=`, white = edit) and `strength`, through the pipeline on the tiny model, with
every sampler (the few-step `scm` student included), with and without CFG, on PyTorch and on an ONNX export.

Outside the mask the output is the photo's own pixels away from the feathered border (asserted equal, and so far
above 50 dB); inside it the edit changes the photo; the latent outside the mask ends as the photo's own latent."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.image.io import preprocess
from sanaedit.image.masks import FEATHER_REACH, feather_radius, latent_mask
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.train.evaluate import psnr

PHOTO_SIZE = (160, 120)
EDIT_BOX = (16, 20, 72, 100)  # the mask's white rectangle, in photo pixels (left, top, right, bottom)


def _photo() -> Image.Image:
    """Smooth colours plus texture: every pixel differs from its neighbours, so a wrong one cannot hide."""
    w, h = PHOTO_SIZE
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 64], axis=-1)
    noise = np.random.default_rng(0).integers(-20, 20, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _mask() -> Image.Image:
    mask = Image.new("L", PHOTO_SIZE, 0)
    mask.paste(255, EDIT_BOX)
    return mask


def _regions(pipe: SanaEditPipeline) -> tuple[np.ndarray, np.ndarray]:
    """(kept, edited): pixels farther than the feather reaches outside / inside the mask's rectangle."""
    _, restore = preprocess(_photo(), pipe.config.resolution, pipe.config.padding)
    reach = int(np.ceil(FEATHER_REACH * feather_radius(restore))) + 1
    w, h = PHOTO_SIZE
    y, x = np.mgrid[0:h, 0:w]
    left, top, right, bottom = EDIT_BOX
    near = (x >= left - reach) & (x < right + reach) & (y >= top - reach) & (y < bottom + reach)
    inside = (x >= left + reach) & (x < right - reach) & (y >= top + reach) & (y < bottom - reach)
    assert inside.sum() > 100 and (~near).sum() > 1000  # both regions are there to judge
    return ~near, inside


def _edit(pipe, sampler=None, steps=4, guidance=1.0, seed=0, **kwargs):
    generator = pipe.flow.arrays.generator(seed)
    return pipe(_photo(), sampler=sampler, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                **kwargs).images[0]  # fmt: skip


def _check_masked(pipe, **kwargs) -> None:
    out = np.asarray(_edit(pipe, mask_image=_mask(), **kwargs)).astype(np.float64)
    photo = np.asarray(_photo()).astype(np.float64)
    kept, inside = _regions(pipe)
    assert np.array_equal(out[kept], photo[kept])  # the photo's own pixels, not a VAE round trip
    with np.errstate(divide="ignore"):
        assert psnr(out[kept], photo[kept]) >= 50
    assert np.abs(out[inside] - photo[inside]).mean() > 5  # the edit changed what was painted


@pytest.fixture(scope="module")
def pipe128(tiny_pipe):
    """The tiny model at 128 px: a 4x4 latent grid, so a mask covers some cells and not others."""
    config = dataclasses.replace(tiny_pipe.config, resolution=128)
    pipe = SanaEditPipeline.from_modules(tiny_pipe.transformer, tiny_pipe.vae, tiny_pipe.text_encoder, config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def student128(pipe128):
    """A guidance-embedding student (SANA-Sprint's) on the same networks: what the `scm` sampler is for."""
    student = pipe128.transformer.with_guidance_embedding().eval()
    pipe = SanaEditPipeline.from_modules(student, pipe128.vae, pipe128.text_encoder, pipe128.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("sampler", ["euler", "dpm"])
@pytest.mark.parametrize("guidance", [1.0, 4.5])
def test_a_masked_edit_keeps_the_photo_outside_the_mask(pipe128, sampler, guidance):
    _check_masked(pipe128, sampler=sampler, guidance=guidance)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_a_masked_edit_with_the_scm_student(student128, steps):
    _check_masked(student128, sampler="scm", steps=steps, guidance=4.5)


@pytest.mark.parametrize(("sampler", "steps"), [("euler", 4), ("dpm", 4), ("scm", 2), ("scm", 4)])
def test_the_latent_outside_the_mask_ends_as_the_photos_and_follows_its_noise_level(pipe128, sampler, steps):
    """diffusers' flow inpainting: after each step the kept cells are the source noised to the next level with the
    starting noise; after the last, the source itself. For scm the next level is the one it re-noised to."""
    from sanaedit.core.sampling import flow_sigmas

    seen = []

    def spy(pipe, step, timestep, kwargs):
        seen.append(kwargs["latents"].clone())
        return {}

    pixels, restore = preprocess(_photo(), 128, pipe128.config.padding)
    source = pipe128.encode_image(pixels).float()
    noise = pipe128.flow.arrays.randn(source.shape, pipe128.flow.arrays.generator(3))
    latents = _edit(pipe128, sampler, steps, seed=3, mask_image=_mask(), output_type="latent",
                    callback_on_step_end=spy)[None]  # fmt: skip

    cells = torch.from_numpy(latent_mask(_mask(), restore, pipe128.vae_scale))
    keep = (cells == 0).expand_as(source)
    assert 0 < keep[0, 0].sum() < keep[0, 0].numel()
    assert torch.equal(latents[keep], source[keep])
    schedule = "scm" if sampler == "scm" else "linear" if sampler == "dpm" else "default"
    sigmas = flow_sigmas(steps, pipe128.config.shift, schedule)
    for step, x in enumerate(seen, start=1):
        level = float(sigmas[step])
        want = (1 - level) * source + level * noise
        torch.testing.assert_close(x[keep], want[keep], rtol=0, atol=1e-6)
    assert not torch.equal(latents[~keep], source[~keep])


def test_a_thin_stroke_is_edited_and_masks_come_in_every_form(pipe128):
    """A 2-pixel stroke (far thinner than a 32-pixel latent cell) still changes the photo; a mask given as a path,
    a NumPy array, a bool array, a torch tensor or a half-size picture edits exactly as the picture does."""
    stroke = Image.new("L", PHOTO_SIZE, 0)
    stroke.paste(255, (40, 0, 42, 120))
    out = np.asarray(_edit(pipe128, mask_image=stroke)).astype(int)
    photo = np.asarray(_photo()).astype(int)
    assert np.abs(out[:, 40:42] - photo[:, 40:42]).mean() > 5
    assert np.array_equal(out[:, 80:], photo[:, 80:])
    want = np.asarray(_edit(pipe128, mask_image=_mask()))
    as_array = np.asarray(_mask())
    for given in (as_array, as_array > 127, torch.from_numpy(as_array / 255.0)[None], _mask().resize((80, 60))):
        assert np.array_equal(np.asarray(_edit(pipe128, mask_image=given)), want), type(given)


def test_mask_errors_are_one_line_and_come_before_the_model_runs(pipe128, monkeypatch, tmp_path):
    def never(*args, **kwargs):
        raise AssertionError("a network ran")

    monkeypatch.setattr(pipe128, "encode_image", never)
    with pytest.raises(ValueError, match="mask_image is 50x50 but the photo is 160x120: .* aspect ratio"):
        _edit(pipe128, mask_image=Image.new("L", (50, 50)))
    with pytest.raises(ValueError, match="mask_image holds 2 masks for 1 images"):
        _edit(pipe128, mask_image=[_mask(), _mask()])
    with pytest.raises(ValueError, match="needs an image to edit"):
        pipe128(None, mask_image=_mask())
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png: not an image"):
        _edit(pipe128, mask_image=tmp_path / "bad.png")


@pytest.mark.parametrize(("sampler", "steps"), [("euler", 10), ("dpm", 10), ("scm", 4)])
def test_strength_03_stays_closer_to_the_photo_than_a_full_edit(pipe128, student128, sampler, steps):
    """Against the photo as the model holds it: its latent, and that latent decoded (the random tiny autoencoder
    does not give the photo itself back, so the photo's pixels would judge the autoencoder, not `strength`)."""
    pipe = student128 if sampler == "scm" else pipe128
    source = pipe.encode_image(preprocess(_photo(), 128, pipe.config.padding)[0]).float()
    decoded = pipe.decode_latents(source)

    def distances(strength):
        out = _edit(pipe, sampler, steps, strength=strength, output_type="latent")[None].float()
        return float((out - source).abs().mean()), float((pipe.decode_latents(out) - decoded).abs().mean())

    (latent_03, pixels_03), (latent_10, pixels_10) = distances(0.3), distances(1.0)
    assert latent_03 < latent_10 and pixels_03 < pixels_10


def test_masked_strength_edit_keeps_the_photo(pipe128):
    _check_masked(pipe128, steps=10, strength=0.5, guidance=4.5)


@pytest.fixture(scope="module")
def onnx_export(tiny_model_dir, tmp_path_factory):
    from sanaedit.export import export_model

    pytest.importorskip("onnxruntime")
    return export_model(tiny_model_dir, tmp_path_factory.mktemp("masks") / "onnx", fmt="onnx", progress=False)


def test_masked_edits_and_strength_on_an_onnx_export(onnx_export, tiny_model_dir):
    """The exported runtime (NumPy arrays, no torch tensors) runs the same masking: the same kept pixels, an edit
    inside, and the same pictures as PyTorch within float32 tolerance."""
    onnx = SanaEditPipeline.from_pretrained(onnx_export)
    torch_pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    for pipe in (onnx, torch_pipe):
        pipe.set_progress_bar_config(disable=True)
    assert onnx.flow.modules == []  # graphs, not PyTorch modules
    _check_masked(onnx, steps=3, guidance=4.5)
    _check_masked(onnx, steps=4, strength=0.5)
    _check_masked(onnx, sampler="scm", steps=4, strength=0.5)  # its fresh noise drawn as NumPy
    ours = np.asarray(_edit(onnx, steps=3, mask_image=_mask(), strength=0.7)).astype(float)
    reference = np.asarray(_edit(torch_pipe, steps=3, mask_image=_mask(), strength=0.7)).astype(float)
    with np.errstate(divide="ignore"):
        assert psnr(ours, reference) > 30


def test_masked_edits_and_strength_on_mnn(tiny_mnn_release):
    mnn = SanaEditPipeline.from_pretrained(tiny_mnn_release)
    mnn.set_progress_bar_config(disable=True)
    _check_masked(mnn, steps=3, guidance=4.5)
    _check_masked(mnn, sampler="scm", steps=4, strength=0.5)
