"""`sanaedit edit --controlnet DIR --control-image IMG|DIR|edges --control-scale S`, one photo and a batch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sanaedit.apps.cli import main
from tests.conftest import boxed


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), np.int16)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    boxed(72, 48).save(path)
    return path


def edit(model, photo, out, *extra) -> int:
    return main(["edit", str(photo), "-o", str(out), "--model", str(model), "--steps", "2", "-q", *extra])


def test_the_folders_controlnet_steers_with_edges_and_scale_0_is_the_plain_edit(tiny_controlnet_model, photo, tmp_path):
    assert edit(tiny_controlnet_model, photo, tmp_path / "plain.png") == 0
    assert edit(tiny_controlnet_model, photo, tmp_path / "edges.png", "--control-image", "edges") == 0
    assert edit(tiny_controlnet_model, photo, tmp_path / "zero.png", "--control-image", "edges",
                "--control-scale", "0") == 0  # fmt: skip
    plain = pixels(tmp_path / "plain.png")
    assert np.array_equal(pixels(tmp_path / "zero.png"), plain)
    assert np.abs(pixels(tmp_path / "edges.png") - plain).max() > 2


def test_controlnet_from_another_folder_and_a_control_image(tiny_model_dir, tiny_controlnet_model, photo, tmp_path):
    control = tmp_path / "control.png"
    Image.new("RGB", (72, 48), "white").save(control)
    args = ["--controlnet", str(tiny_controlnet_model / "controlnet"), "--control-image", str(control)]
    assert edit(tiny_model_dir, photo, tmp_path / "a.png", *args) == 0
    assert edit(tiny_controlnet_model, photo, tmp_path / "b.png", "--control-image", str(control)) == 0
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))


def test_a_batch_takes_each_photos_control_image_by_name(tiny_controlnet_model, tmp_path):
    photos, controls, out = tmp_path / "photos", tmp_path / "controls", tmp_path / "out"
    (photos / "trip").mkdir(parents=True)
    (controls / "trip").mkdir(parents=True)
    boxed(40, 30).save(photos / "a.jpg")
    boxed(30, 40).save(photos / "trip" / "b.png")
    boxed(40, 30).save(photos / "c.png")  # no control image for it: that file fails, the others go on
    Image.new("RGB", (40, 30), "white").save(controls / "a.png")
    Image.new("RGB", (30, 40), "black").save(controls / "trip" / "b.webp")
    args = ["edit", str(photos), "-o", str(out), "-r", "--model", str(tiny_controlnet_model), "--steps", "2", "-q"]
    assert main([*args, "--control-image", str(controls)]) == 1
    assert (out / "a.png").is_file() and (out / "trip" / "b.png").is_file() and not (out / "c.png").exists()
    single = tmp_path / "single.png"
    assert edit(tiny_controlnet_model, photos / "a.jpg", single, "--control-image", str(controls / "a.png")) == 0
    assert np.array_equal(pixels(single), pixels(out / "a.png"))


def test_control_errors_are_one_line_before_any_edit(tiny_model_dir, photo, tmp_path, capsys):
    assert edit(tiny_model_dir, photo, tmp_path / "o.png", "--control-image", "edges") == 1
    err = capsys.readouterr().err
    assert "this model has none: give one with --controlnet DIR" in err and len(err.strip().splitlines()) == 1
    assert edit(tiny_model_dir, photo, tmp_path / "o.png", "--control-image", str(tmp_path / "nope.png")) == 1
    assert "nope.png: not found" in capsys.readouterr().err
    assert edit(tiny_model_dir, photo, tmp_path / "o.png", "--controlnet", str(tmp_path)) == 1
    assert "not a ControlNet folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        edit(tiny_model_dir, photo, tmp_path / "o.png", "--control-scale", "-1")
    assert not (tmp_path / "o.png").exists()
