"""The comic recipe's data (sanaedit/train/comic_data.py) and its evaluation at full resolution
(sanaedit/train/evaluate.py): held-out photos stay out of training, pictures come through the inference loader,
targets are the filter at the picture's own resolution; the scores (outline strength, edge band) mean what they
say."""

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("cv2")
pytest.importorskip("skimage")

from sanaedit.train import comic_data  # noqa: E402
from sanaedit.train import evaluate as ev  # noqa: E402
from sanaedit.train.filters.comic import comic  # noqa: E402


def scene(width, height, seed=0) -> Image.Image:
    return comic_data.synthetic_scene(np.random.default_rng(seed), max(width, height)).crop((0, 0, width, height))


def test_edge_band_sees_dark_borders_but_not_a_darker_picture():
    photo = np.asarray(scene(120, 80))
    assert ev.edge_band(photo, photo) == pytest.approx(1.0)
    darker = (photo * 0.8).astype(np.uint8)
    assert ev.edge_band(darker, photo) == pytest.approx(1.0, abs=0.02)
    banded = photo.copy()
    banded[:, :4] = banded[:, :4] // 2  # the black-padding bug: the outer 4 px at half the luminance
    assert ev.edge_band(banded, photo) == pytest.approx(0.5, abs=0.05)


def test_outline_strength():
    flat = np.full((40, 40, 3), 128, np.uint8)
    assert ev.outline_strength(flat) == 0.0
    photo = scene(160, 120)
    blurred = photo.resize((40, 30)).resize(photo.size, Image.Resampling.BILINEAR)
    assert ev.outline_strength(np.asarray(comic(photo))) > ev.outline_strength(np.asarray(blurred))


def test_score_is_against_the_filter_at_the_photos_own_size():
    photo = scene(120, 90)
    edit = photo.resize((60, 45))
    s = ev.score(edit, photo)
    assert s == ev.compare(
        edit.resize(photo.size, Image.Resampling.BILINEAR), np.asarray(comic(photo)), np.asarray(photo)
    )
    assert set(s) == {"psnr", "ssim", "edge_f1", "outline", "band", "specks", "smooth_specks"}
    with pytest.raises(ValueError, match="size"):
        ev.compare(edit, np.asarray(comic(photo)))


def test_specks_are_short_dark_blobs_and_on_smooth_areas_those_far_from_the_photos_edges():
    photo = np.full((200, 300, 3), 200, np.uint8)
    photo[:, 150:] = 60  # one edge, down the middle
    out = photo.copy()
    for x in (30, 60, 90):  # three dots on the flat left half, far from the edge
        out[100:103, x : x + 3] = 10
    out[150:153, 146:149] = 10  # a dot on the edge
    out[20:22, 20:120] = 10  # a line: not a speck
    megapixels = 200 * 300 / 1e6
    anywhere, smooth = ev.specks(out, photo)
    assert anywhere == pytest.approx(4 / megapixels) and smooth == pytest.approx(3 / megapixels)
    assert ev.specks(photo, photo) == (0.0, 0.0)  # the dark right half is one large blob


def test_full_resolution_reference_rows():
    photos = [("a", scene(200, 120, 1)), ("b", scene(90, 160, 2))]
    editors = {
        "photo": None,
        "filter at 64 px": ev.filter_at_model_resolution(64),
        "filter seen at 64 px, guided": ev.filter_seen_at_model_resolution(64, "guided"),
    }
    results, per_photo, outputs = ev.evaluate_full_resolution(editors, photos)
    assert [o.size for o in outputs["filter at 64 px"]] == [p.size for _, p in photos]
    assert results["photo"]["band"] == pytest.approx(1.0)
    assert set(per_photo["photo"]) == {"a", "b"}
    assert results["filter seen at 64 px, guided"]["psnr"] > results["photo"]["psnr"]


@pytest.fixture
def fake_photos(tmp_path, monkeypatch):
    """Two 'package photos': one held out (chelsea.png), one for training saved as an EXIF-rotated JPEG."""
    held = tmp_path / "chelsea.png"
    scene(150, 100, 3).save(held)
    rotated = tmp_path / "astronaut.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright it is 100 wide, 140 high
    scene(140, 100, 4).save(rotated, exif=exif, quality=95)
    monkeypatch.setattr(comic_data, "package_photos", lambda: {"astronaut.jpg": rotated, "chelsea.png": held})
    return held, rotated


def test_comic_dataset_holds_out_photos_and_reads_through_the_inference_loader(tmp_path, fake_photos, monkeypatch):
    from sanaedit.image.io import load_image

    held, rotated = fake_photos
    loaded = []
    monkeypatch.setattr(comic_data, "load_image", lambda p: loaded.append(p) or load_image(p))
    out = tmp_path / "data"
    args = dict(resolution=64, crops_per_photo=4, synthetic=2, eval_crops=1, nonsquare=0.5, whole=1)
    counts = comic_data.build_comic_dataset(out, **args)
    assert counts == {"train": 4 + 1 + 2, "eval": 2, "photos": 1}
    assert sorted(loaded) == sorted([held, rotated])
    train = [json.loads(x) for x in (out / "train" / "manifest.jsonl").read_text().splitlines()]
    assert not any("chelsea" in r["source"] for r in train)  # held out: never in training
    assert {r["source"].split("/")[1].split("-")[0] for r in train} == {"astronaut", "synthetic"}
    for r in train:
        for key in ("source", "target"):
            with Image.open(out / "train" / r[key]) as im:
                assert im.size == (64, 64)
    # the whole training photo, upright (EXIF applied), and its target: the filter at the photo's own size
    upright = load_image(rotated)
    assert upright.size == (100, 140)
    source, target = comic_data.pair(upright, 64)
    assert np.array_equal(np.asarray(Image.open(out / "train" / "source" / "astronaut-whole0.png")), np.asarray(source))
    assert np.array_equal(np.asarray(Image.open(out / "train" / "target" / "astronaut-whole0.png")), np.asarray(target))
    assert np.array_equal(np.asarray(target), np.asarray(comic_data.model_view(comic(upright), 64)))
    # the held-out photo at its own resolution, for the full-resolution scores
    assert [(n, p.size) for n, p in ev.load_full_photos(out / "eval")] == [("chelsea", (150, 100))]
    # a finished build is reused
    loaded.clear()
    assert comic_data.build_comic_dataset(out, **args) == counts
    assert loaded == []


def test_model_view_pads_by_reflection():
    picture = scene(80, 40)
    view = np.asarray(comic_data.model_view(picture, 64))
    assert view.shape == (64, 64, 3)
    assert view[:16].mean() > 10  # no black band above the picture
    assert np.array_equal(view[15], view[17])  # row 16 is the picture's first: mirrored around it
