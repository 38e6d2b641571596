"""The Ghibli-style filter (the bundled LoRA's targets) and the data builder's style choice."""

import cv2
import numpy as np
import pytest
from PIL import Image

from sanaedit.train.comic_data import build_comic_dataset, model_view, pair
from sanaedit.train.filters.ghibli import ghibli, ghibli_array, line_mask

SAMPLE = "sanaedit/assets/sample.jpg"


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def test_ghibli_is_deterministic_softer_and_warmer_with_thin_lines():
    photo = np.asarray(Image.open(SAMPLE).convert("RGB"))
    out = ghibli_array(photo)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.array_equal(out, ghibli_array(photo.copy()))  # bit for bit
    before, after = _lab(photo), _lab(out)
    assert after[..., 0].std() < 0.9 * before[..., 0].std()  # soft contrast
    assert after[..., 2].mean() > before[..., 2].mean() + 4  # warm: more yellow
    lines = line_mask(photo)
    assert 0.005 < lines.mean() < 0.15  # slight linework: some, not a drawing
    assert out[lines].mean() < out[~lines].mean()  # and darker than the rest


def test_ghibli_refuses_what_it_cannot_filter():
    with pytest.raises(ValueError, match="uint8 RGB"):
        ghibli_array(np.zeros((16, 16), np.uint8))
    with pytest.raises(ValueError, match="too small"):
        ghibli_array(np.zeros((4, 16, 3), np.uint8))


def test_the_data_builder_makes_the_styles_targets(tmp_path):
    photo = Image.open(SAMPLE).convert("RGB")
    source, target = pair(photo, 64, style="ghibli")
    assert np.array_equal(np.asarray(target), np.asarray(model_view(ghibli(photo), 64)))
    assert np.array_equal(np.asarray(source), np.asarray(model_view(photo, 64)))
    with pytest.raises(ValueError, match="unknown style 'noir'"):
        build_comic_dataset(tmp_path, style="noir")
