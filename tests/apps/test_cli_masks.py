"""`sanaedit edit --mask M.png`, `--mask-dir DIR` and `--strength S` (issue 28): what they edit, and their one-line
errors before the model loads."""

import numpy as np
import pytest
from PIL import Image

import sanaedit.load
from sanaedit.apps.cli import main


def _photo(path, size=(96, 64)):
    w, h = size
    pixels = np.random.default_rng(len(str(path))).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _left_mask(path, size=(96, 64)):
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 3, size[1]))
    mask.save(path)
    return path


def _kept(out, photo) -> bool:
    """The right half (far from the mask's edge, past the feather) is the photo's, pixel for pixel."""
    a, b = np.asarray(Image.open(out)), np.asarray(Image.open(photo).convert("RGB"))
    return np.array_equal(a[:, 60:], b[:, 60:])


def test_mask_and_strength_edit_only_the_white_part(tiny_model_dir, tmp_path):
    photo, mask = _photo(tmp_path / "p.png"), _left_mask(tmp_path / "m.png", (48, 32))  # half size: resized
    out = tmp_path / "o.png"
    base = ["edit", str(photo), "-o", str(out), "--model", str(tiny_model_dir), "-q", "--steps", "4"]
    assert main([*base, "--mask", str(mask)]) == 0
    assert _kept(out, photo)
    left = np.asarray(Image.open(out)).astype(int)[:, :20] - np.asarray(Image.open(photo)).astype(int)[:, :20]
    assert np.abs(left).mean() > 5
    full = tmp_path / "full.png"
    assert main([*base[:3], str(full), *base[4:], "--strength", "0.5"]) == 0
    assert not _kept(full, photo)  # no mask: everything is edited
    assert main([*base, "--mask", str(mask), "--strength", "0.5", "--sampler", "scm"]) == 0
    assert _kept(out, photo)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strength", "0"], "--strength must be in (0, 1] (1 = a full edit), got 0.0"),
        (["--strength", "1.5"], "--strength must be in (0, 1]"),
        (["--strength", "nan"], "--strength must be in (0, 1]"),
        (["--strength", "0.1", "--steps", "4"], "--strength 0.1 x 4 steps leaves no step to run: raise --strength"),
        (["--mask", "MISSING"], "--mask MISSING: file not found"),
        (["--mask", "BAD"], "--mask BAD: not an image"),
        (["--mask", "SQUARE"], "--mask SQUARE is 50x50 but the photo is 96x64"),
        (["--mask-dir", "MISSING"], "--mask-dir MISSING: folder not found"),
        (["--mask-dir", "EMPTY"], "--mask-dir EMPTY: no mask for any of the 1 photo(s) (p.png's would be EMPTY/p.png"),
    ],
)
def test_bad_strength_and_masks_fail_in_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr(sanaedit.load, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "p.png")
    (tmp_path / "BAD").write_bytes(b"not a png")
    Image.new("L", (50, 50)).save(tmp_path / "SQUARE", format="PNG")
    (tmp_path / "EMPTY").mkdir()
    assert main(["edit", "p.png", "-o", "o.png", *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.png").exists()


def test_a_mask_dir_pairs_masks_by_name_in_a_folder_batch(tiny_model_dir, tmp_path, capsys):
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    (photos / "trip").mkdir(parents=True)
    (masks / "trip").mkdir(parents=True)
    a, b, c = _photo(photos / "a.jpg"), _photo(photos / "trip" / "b.png"), _photo(photos / "c.png")
    _left_mask(masks / "a.png")
    _left_mask(masks / "trip" / "b.png")
    Image.new("L", (50, 50)).save(masks / "c.png")  # does not fit c: that photo fails, with its reason
    out = tmp_path / "out"
    args = ["edit", str(photos), "-o", str(out), "-r", "--mask-dir", str(masks), "--model", str(tiny_model_dir)]
    assert main([*args, "--steps", "3", "-q"]) == 1
    assert _kept(out / "trip" / "b.png", b)
    a_out = np.asarray(Image.open(out / "a.png")).astype(int)
    assert np.abs(a_out[:, 60:] - np.asarray(Image.open(a)).astype(int)[:, 60:]).max() == 0  # a JPEG: as decoded
    assert not (out / "c.png").exists()
    err = capsys.readouterr().err
    assert f"{masks / 'c.png'} is 50x50 but the photo is 96x64" in err
    (masks / "c.png").unlink()  # now c has no mask: edited whole, with a warning
    assert main([*args, "--steps", "3", "--resume"]) == 0
    assert "c.png: no mask for it in" in capsys.readouterr().err
    assert not _kept(out / "c.png", c)
