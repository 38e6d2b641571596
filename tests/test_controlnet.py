"""A ControlNet through the Python API: a model folder's own `controlnet/` (used by default), one given by folder
or as a module, one saved by diffusers itself; the call's `control_image=` / `controlnet_conditioning_scale=`."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import SanaControlNetModel
from PIL import Image

from sanaedit.core.noise import Generator
from sanaedit.errors import ModelFolderError
from sanaedit.pipeline import SanaEditPipeline
from tests.conftest import boxed, trained_looking


def photo() -> Image.Image:
    return boxed(80, 56)


def edit(pipe, **kwargs) -> np.ndarray:
    return pipe(photo(), generator=Generator(0), output_type="np", num_inference_steps=3, **kwargs).images[0]


@pytest.fixture(scope="module")
def steered(tiny_controlnet_model):
    return SanaEditPipeline.from_pretrained(tiny_controlnet_model)


def test_the_folders_controlnet_is_used_by_default_and_scale_0_is_the_plain_edit(steered, tiny_controlnet_model):
    assert steered.controlnet is not None and steered.flow.controlnet is not None
    plain = edit(steered)
    assert np.array_equal(edit(steered, control_image="edges", controlnet_conditioning_scale=0.0), plain)
    assert np.array_equal(edit(steered, control_image="none"), plain)
    edges = edit(steered, control_image="edges")
    assert np.abs(edges - plain).max() > 0.01  # at scale 1 it changes the edit
    black = edit(steered, control_image=Image.new("RGB", (80, 56)))
    assert not np.array_equal(black, edges)


def test_a_controlnet_given_by_folder_or_module_steers_a_model_without_one(
    steered, tiny_controlnet_model, tiny_model_dir, tmp_path
):
    want = edit(steered, control_image="edges")
    by_folder = SanaEditPipeline.from_pretrained(tiny_model_dir, controlnet=tiny_controlnet_model / "controlnet")
    assert np.array_equal(edit(by_folder, control_image="edges"), want)
    module = SanaControlNetModel.from_pretrained(tiny_controlnet_model / "controlnet")
    by_module = SanaEditPipeline.from_pretrained(tiny_model_dir, controlnet=module)
    assert np.array_equal(edit(by_module, control_image="edges"), want)
    # saved with the pipeline, registered in its index: the copy uses it by default
    copy = by_module.save_pretrained(tmp_path / "copy")
    assert (copy / "controlnet" / "config.json").is_file()
    assert '"controlnet"' in (copy / "model_index.json").read_text()
    assert np.array_equal(edit(SanaEditPipeline.from_pretrained(copy), control_image="edges"), want)


def test_a_controlnet_saved_by_diffusers_loads_as_it_is(tiny_model_dir, tmp_path):
    """diffusers' own constructor and writer, our reader: the same residuals as diffusers computes."""
    plain = SanaEditPipeline.from_pretrained(tiny_model_dir)
    c = plain.transformer.config
    theirs = SanaControlNetModel(
        in_channels=c.in_channels, out_channels=c.out_channels, num_attention_heads=c.num_attention_heads,
        attention_head_dim=c.attention_head_dim, num_layers=1, num_cross_attention_heads=c.num_cross_attention_heads,
        cross_attention_head_dim=c.cross_attention_head_dim, cross_attention_dim=c.cross_attention_dim,
        caption_channels=c.caption_channels, sample_size=c.sample_size, patch_size=c.patch_size,
    )  # fmt: skip
    trained_looking(theirs, seed=3).save_pretrained(tmp_path / "theirs")
    pipe = SanaEditPipeline.from_pretrained(tiny_model_dir, controlnet=tmp_path / "theirs")
    state = theirs.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in pipe.controlnet.state_dict().items())
    assert np.abs(edit(pipe, control_image="edges") - edit(plain)).max() > 0.01


def test_control_images_are_checked_before_any_work(tiny_model_dir, steered, tmp_path):
    plain = SanaEditPipeline.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="no ControlNet"):
        plain(photo(), control_image="edges")
    with pytest.raises(ValueError, match="edges of the input photo"):
        steered(None, control_image="edges")
    with pytest.raises(ValueError, match="one per input image"):
        steered([photo()] * 3, control_image=[photo(), photo()])
    with pytest.raises(ValueError, match="finite"):
        steered(photo(), control_image="edges", controlnet_conditioning_scale=float("nan"))
    # one control picture per input, in order
    pics = [photo(), photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    generators = [Generator(0), Generator(0)]
    both = steered(pics, control_image=pics, generator=generators, output_type="np", num_inference_steps=2).images
    alone = steered(pics[1], control_image=pics[1], generator=Generator(0), output_type="np", num_inference_steps=2)
    assert np.array_equal(both[1], alone.images[0])


def test_a_controlnet_that_does_not_fit_or_is_no_folder_is_refused_by_name(tiny_controlnet_model, tmp_path):
    from sanaedit.tools.random_model import RandomWeights

    with pytest.raises(ModelFolderError, match="not a ControlNet folder"):
        SanaEditPipeline.from_pretrained(tiny_controlnet_model, controlnet=tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_controlnet_model / "controlnet", bad)
    config = (bad / "config.json").read_text().replace('"caption_channels": 24', '"caption_channels": 7')
    (bad / "config.json").write_text(config)
    with pytest.raises(ModelFolderError, match="bad: cannot load bad"):
        SanaEditPipeline.from_pretrained(tiny_controlnet_model, controlnet=bad)
    assert RandomWeights().info.controlnet is None


def test_the_plan_says_which_controlnet_and_exports_take_none_from_outside(tiny_controlnet_model, tmp_path):
    from sanaedit.core.choices import Format
    from sanaedit.plan import FolderInfo, make_plan
    from sanaedit.runtime.sources import open_source

    plan = make_plan(open_source(tiny_controlnet_model).info)
    assert plan.controlnet == tiny_controlnet_model / "controlnet"
    assert any(line.startswith("ControlNet:") for line in plan.describe())
    exported = FolderInfo(folder=tmp_path, format=Format.ONNX, config=plan.config)
    with pytest.raises(ValueError, match="is exported: its ControlNet is a graph"):
        make_plan(exported, controlnet=tiny_controlnet_model / "controlnet")
