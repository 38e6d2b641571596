import numpy as np
import pytest
from PIL import Image

from sanaedit.load import SAMPLE_PHOTO
from sanaedit.train.filters.comic import ComicStyle, comic, comic_array, ink_mask


@pytest.fixture(scope="module")
def photo():
    return Image.open(SAMPLE_PHOTO).convert("RGB")


def test_deterministic_and_same_size(photo):
    a, b = comic(photo), comic(photo.copy())
    assert a.size == photo.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_flat_colours_and_ink(photo):
    src, out = np.asarray(photo), np.asarray(comic(photo))
    # colour quantisation: far fewer distinct colours than the photo
    n_src = len(np.unique(src.reshape(-1, 3), axis=0))
    n_out = len(np.unique(out.reshape(-1, 3), axis=0))
    assert n_out < n_src / 10
    # ink outlines: a few percent of pixels are painted with the ink colour, and they sit on the photo's edges
    ink = ink_mask(src)
    assert 0.01 < ink.mean() < 0.3
    assert (out[ink] == ComicStyle().ink_dark).all()


def test_smoothing_removes_texture(photo):
    src = np.asarray(photo).astype(float)
    out = np.asarray(comic(photo)).astype(float)
    not_ink = ~ink_mask(np.asarray(photo))

    # high-frequency energy (Laplacian-like) off the outlines drops
    def hf(x):
        return np.abs(np.diff(x, axis=1))[:, :, :][not_ink[:, 1:]].mean()

    assert hf(out) < hf(src)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8 RGB"):
        comic_array(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="too small"):
        comic_array(np.zeros((4, 4, 3), dtype=np.uint8))
