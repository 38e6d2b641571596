"""What diffusers' users type works with diffusers' meaning (SanaPipeline, VaeImageProcessor): output_type, a list of
generators, arrays and tensors as input images, callback_on_step_end_tensor_inputs, the LoRA methods' names,
`components`, `scheduler`, and `to(dtype)` / `to(device, dtype)`; on PyTorch networks and on an ONNX export."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.image.io import postprocess
from sanaedit.pipeline import SanaEditPipeline


def photo(w: int = 30, h: int = 20, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def one_line(raised: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(raised.value)
    return str(raised.value)


RUN = dict(num_inference_steps=2, guidance_scale=1.0)


# ------------------------------------------------------------------------------------------------- output_type
def test_np_and_pt_outputs_are_the_pil_pictures_in_0_1(tiny_pipe):
    pil = tiny_pipe(photo(), generator=seeded(), **RUN).images
    np_out = tiny_pipe(photo(), generator=seeded(), output_type="np", **RUN).images
    pt_out = tiny_pipe(photo(), generator=seeded(), output_type="pt", **RUN).images
    assert isinstance(np_out, np.ndarray) and np_out.dtype == np.float32 and np_out.shape == (1, 20, 30, 3)
    assert np.array_equal(np_out[0], np.asarray(pil[0], np.float32) / 255)
    assert isinstance(pt_out, torch.Tensor) and pt_out.shape == (1, 3, 20, 30) and pt_out.dtype == torch.float32
    assert torch.equal(pt_out, torch.from_numpy(np_out).permute(0, 3, 1, 2))
    # inputs of different sizes cannot share one batch array: one array each, in input order
    mixed = tiny_pipe([photo(), photo(17, 41)], generator=seeded(), output_type="np", **RUN).images
    assert [a.shape for a in mixed] == [(20, 30, 3), (41, 17, 3)]


def test_latent_output_is_the_undecoded_latents(tiny_pipe, monkeypatch):
    pil = tiny_pipe(None, generator=seeded(), num_images_per_prompt=2, **RUN).images
    monkeypatch.setattr(tiny_pipe, "decode_latents", lambda *a: pytest.fail("decoded"))
    latents = tiny_pipe(None, generator=seeded(), num_images_per_prompt=2, output_type="latent", **RUN).images
    monkeypatch.undo()
    size = tiny_pipe.config.resolution // tiny_pipe.vae_scale
    assert isinstance(latents, torch.Tensor) and latents.shape == (2, tiny_pipe.latent_channels, size, size)
    for i in range(2):
        decoded = postprocess(tiny_pipe.decode_latents(latents[i : i + 1]), None)
        assert np.array_equal(pixels(decoded), pixels(pil[i]))
    (tupled,) = tiny_pipe(None, generator=seeded(), output_type="latent", return_dict=False, **RUN)
    assert torch.allclose(tupled[0], latents[0], atol=1e-5)


def test_an_unknown_output_type_is_refused_in_one_line(tiny_pipe, monkeypatch):
    monkeypatch.setattr(tiny_pipe, "encode_image", lambda *a: pytest.fail("the encoder ran"))
    with pytest.raises(ValueError) as raised:
        tiny_pipe(photo(), output_type="numpy")
    assert one_line(raised) == "output_type must be one of 'pil', 'np', 'pt', 'latent'; got 'numpy'"


# -------------------------------------------------------------------------------------------------- generators
def test_a_list_of_generators_seeds_each_image(tiny_pipe):
    batch = tiny_pipe(photo(), generator=[seeded(3), seeded(7)], num_images_per_prompt=2, output_type="latent", **RUN)
    for i, seed in enumerate((3, 7)):
        alone = tiny_pipe(photo(), generator=seeded(seed), output_type="latent", **RUN).images
        assert torch.allclose(batch.images[i : i + 1], alone, atol=1e-4)  # batch-of-2 vs batch-of-1 rounding
    # two inputs: the list runs across them in order
    a, b = photo(seed=1), photo(seed=2)
    both = tiny_pipe([a, b], generator=[seeded(5), seeded(6)], **RUN).images
    assert np.array_equal(pixels(both[1]), pixels(tiny_pipe(b, generator=seeded(6), **RUN).images[0]))


def test_a_list_of_numpy_free_generators_works_too(tiny_pipe):
    from sanaedit.core.noise import Generator

    ours = tiny_pipe(None, generator=[Generator(3)], output_type="latent", **RUN).images
    theirs = tiny_pipe(None, generator=[seeded(3)], output_type="latent", **RUN).images
    assert torch.equal(ours, theirs)


def test_a_generator_list_of_the_wrong_length_is_refused_as_diffusers_does(tiny_pipe):
    with pytest.raises(ValueError) as raised:
        tiny_pipe(photo(), generator=[seeded(0)], num_images_per_prompt=2)
    assert one_line(raised).startswith("You have passed a list of generators of length 1, but requested an effective")


# ---------------------------------------------------------------------------------------------- array inputs
@pytest.mark.parametrize(
    "convert",
    [
        lambda im: np.asarray(im),  # HWC uint8
        lambda im: np.asarray(im, np.float32) / 255,  # HWC float in [0, 1]
        lambda im: np.asarray(im)[None],  # NHWC
        lambda im: torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1),  # CHW
        lambda im: torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)[None],  # NCHW
    ],
    ids=["np-hwc-uint8", "np-hwc-float", "np-nhwc", "pt-chw", "pt-nchw"],
)
def test_arrays_and_tensors_edit_as_the_picture_they_hold(tiny_pipe, convert):
    source = photo()
    want = tiny_pipe(source, generator=seeded(), **RUN).images[0]
    got = tiny_pipe(convert(source), generator=seeded(), **RUN).images
    assert len(got) == 1 and np.array_equal(pixels(got[0]), pixels(want))


def test_a_4d_array_is_a_batch_of_inputs(tiny_pipe):
    a, b = photo(seed=1), photo(seed=2)
    got = tiny_pipe(np.stack([np.asarray(a), np.asarray(b)]), generator=seeded(), **RUN).images
    want = tiny_pipe([a, b], generator=seeded(), **RUN).images
    assert [pixels(x).tolist() for x in got] == [pixels(x).tolist() for x in want]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((3, 20, 30), np.float32), "image of shape (3, 20, 30) is not a picture: pass a HWC or NHWC NumPy"),
        (torch.zeros(20, 30, 3), "image of shape (20, 30, 3) is not a picture: pass a CHW or NCHW torch tensor"),
        (np.full((8, 8, 3), 255.0, np.float32), "image values must be in [0, 1] (diffusers' convention), got [255"),
        (-torch.ones(3, 8, 8), "got [-1, -1]: a [-1, 1] image is (x + 1) / 2 in [0, 1]"),
        (np.zeros((8, 8, 3), np.int64), "image values must be uint8, or floats in [0, 1]; got int64"),
    ],
)
def test_a_bad_array_is_refused_in_one_line(tiny_pipe, image, message):
    with pytest.raises(ValueError) as raised:
        tiny_pipe(image)
    assert message in one_line(raised)


# ------------------------------------------------------------------------------------------------ callbacks
def test_callback_on_step_end_gets_the_tensors_it_asks_for_and_may_replace_latents(tiny_pipe):
    seen = []

    def zero_at_the_end(pipe, step, timestep, kwargs):
        seen.append(sorted(kwargs))
        return {"latents": torch.zeros_like(kwargs["latents"])} if "latents" in kwargs and step == 2 else None

    out = tiny_pipe(None, generator=seeded(), callback_on_step_end=zero_at_the_end, **RUN).images[0]
    zeros = torch.zeros(1, tiny_pipe.latent_channels, *(2 * [tiny_pipe.config.resolution // tiny_pipe.vae_scale]))
    assert seen == [["latents"], ["latents"]]
    assert np.array_equal(pixels(out), pixels(postprocess(tiny_pipe.decode_latents(zeros), None)))
    seen.clear()
    tiny_pipe(None, callback_on_step_end=zero_at_the_end, callback_on_step_end_tensor_inputs=[], **RUN)
    assert seen == [[], []]  # nothing asked for, nothing given (diffusers' default asks for the latents)


def test_a_pipeline_callback_object_brings_its_own_tensor_inputs(tiny_pipe):
    class Recorder:  # diffusers' PipelineCallback: a callable with `tensor_inputs`
        tensor_inputs = ["latents"]
        steps: list[int] = []

        def __call__(self, pipe, step, timestep, kwargs):
            self.steps.append(step)
            return kwargs

    recorder = Recorder()
    tiny_pipe(None, callback_on_step_end=recorder, callback_on_step_end_tensor_inputs=[], **RUN)
    assert recorder.steps == [1, 2]


def test_unknown_callback_tensor_inputs_are_refused_before_any_work(tiny_pipe, monkeypatch):
    monkeypatch.setattr(tiny_pipe, "encode_image", lambda *a: pytest.fail("the encoder ran"))
    with pytest.raises(ValueError) as raised:
        tiny_pipe(photo(), callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise_pred"])
    assert one_line(raised) == "callback_on_step_end_tensor_inputs has to be in ['latents'], got ['noise_pred']"


# ----------------------------------------------------------------------------------------------------- LoRA
def test_diffusers_lora_method_names(tiny_model_dir, lora_dir):
    from sanaedit.models.lora import LORA_FILE

    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    edit = lambda: pixels(pipe(photo(), generator=seeded(), **RUN).images[0])  # noqa: E731
    base = edit()
    pipe.load_lora_weights(lora_dir, weight_name=LORA_FILE, adapter_name="ink")
    styled = edit()
    assert not np.array_equal(styled, base)
    pipe.set_adapters(["ink"], [0.0])
    assert np.array_equal(edit(), base)  # scale 0: exactly the base model
    pipe.set_adapters("ink")
    assert np.array_equal(edit(), styled)
    with pytest.raises(ValueError, match="no LoRA named 'pencil' is loaded; loaded: \\['ink'\\]"):
        pipe.set_adapters("pencil")
    pipe.unload_lora_weights()
    assert np.array_equal(edit(), base)
    pipe.load_lora_weights(lora_dir)
    pipe.fuse_lora()
    assert np.abs(edit() - styled).max() <= 1  # fused weights: the same style up to float rounding


# ---------------------------------------------------------------------------------- components, scheduler, to
def test_components_and_scheduler(tiny_pipe):
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    parts = tiny_pipe.components
    assert parts["transformer"] is tiny_pipe.transformer and parts["vae"] is tiny_pipe.vae
    assert set(parts) == {"transformer", "vae", "vae_encoder", "vae_decoder", "text_encoder", "scheduler"}
    scheduler = tiny_pipe.scheduler
    assert scheduler.sampler == "euler" and scheduler.name == "FlowMatchEulerDiscreteScheduler"
    theirs = FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler.config))
    theirs.set_timesteps(sigmas=np.linspace(1, 1 / 1000, 6))
    assert np.allclose(theirs.sigmas.numpy(), scheduler.sigmas(6), atol=1e-6)
    with pytest.raises(AttributeError, match="pass sampler="):
        tiny_pipe.scheduler = theirs
    from dataclasses import replace

    from sanaedit.runtime.diffusers_api import sampler_info

    dpm = sampler_info(replace(tiny_pipe.config, sampler="dpm", schedule="linear"))
    theirs = DPMSolverMultistepScheduler.from_config(dict(dpm.config))
    theirs.set_timesteps(6)
    assert dpm.name == "DPMSolverMultistepScheduler" and np.allclose(theirs.sigmas.numpy(), dpm.sigmas(6), atol=1e-6)


def test_to_takes_diffusers_argument_forms(tiny_model_dir):
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir)
    assert pipe.to(torch.bfloat16).dtype == torch.bfloat16
    assert pipe.to("cpu", torch.float32).dtype == torch.float32
    assert pipe.to(torch_dtype=torch.float16).dtype == torch.float16
    assert pipe.to(dtype=torch.float32).dtype == torch.float32
    assert pipe.to(torch.device("cpu")).device == torch.device("cpu")
    with pytest.raises(ValueError, match="a device then a dtype"):
        pipe.to(torch.float32, "cpu")
    with pytest.raises(ValueError, match="both as an argument and as a keyword"):
        pipe.to(torch.float32, dtype=torch.float32)


# ------------------------------------------------------------------------------------------- an ONNX export
@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_model_dir):
    from sanaedit.export import export_model

    return export_model(tiny_model_dir, tmp_path_factory.mktemp("onnx") / "tiny", fmt="onnx", progress=False)


TORCH_FREE = """
import json, sys
for name in ("torch", "diffusers", "transformers", "accelerate", "peft"):
    sys.modules[name] = None  # absent, as on the base install
import numpy as np
from PIL import Image
from sanaedit.core.noise import Generator
from sanaedit.errors import MissingExtra
from sanaedit.image.io import postprocess
from sanaedit.pipeline import SanaEditPipeline

pipe = SanaEditPipeline.from_pretrained(sys.argv[1])
photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
run = dict(num_inference_steps=2, guidance_scale=1.0)
pil = pipe(photo, generator=Generator(0), **run).images[0]
arr = pipe(np.asarray(photo, np.float32) / 255, generator=[Generator(0)], output_type="np", **run).images
lat = pipe(None, generator=Generator(1), output_type="latent", **run).images
t2i = pipe(None, generator=Generator(1), **run).images[0]
try:
    pipe(photo, output_type="pt")
    refused = ""
except MissingExtra as err:
    refused = str(err)
print(json.dumps({
    "np_is_pil": bool(np.array_equal(arr[0], np.asarray(pil, np.float32) / 255)),
    "latent_kind": type(lat).__module__,
    "latent_decodes": bool(np.array_equal(np.asarray(postprocess(pipe.decode_latents(lat), None)), np.asarray(t2i))),
    "pt_refused": refused,
    "torch_loaded": any(m.split(".")[0] == "torch" and v is not None for m, v in sys.modules.items()),
}))
"""


def test_the_exported_pipeline_takes_the_same_habits_without_torch(tiny_onnx):
    done = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(tiny_onnx)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["np_is_pil"] and result["latent_decodes"] and result["latent_kind"] == "numpy"
    assert result["pt_refused"].startswith('output_type="pt" (torch tensors) needs torch, which is not installed')
    assert not result["torch_loaded"]


def test_the_exported_pipeline_edits_a_tensor_as_its_picture(tiny_onnx):
    pipe = SanaEditPipeline.from_pretrained(tiny_onnx)
    want = pipe(photo(), generator=seeded(), **RUN).images[0]
    tensor = torch.from_numpy(np.asarray(photo(), np.float32) / 255).permute(2, 0, 1)
    got = pipe(tensor, generator=[seeded()], output_type="pt", **RUN).images
    assert torch.equal(got[0], torch.from_numpy(np.asarray(want, np.float32) / 255).permute(2, 0, 1))
