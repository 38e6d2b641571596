"""Edges of a photo as the control image (image/edges.py): OpenCV's Canny, white on black, on the model's input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sanaedit.errors import MissingExtra
from sanaedit.image.edges import canny_edges, edge_picture


def test_a_step_has_an_edge_and_flat_areas_have_none():
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, 24:] = 255
    edges = canny_edges(rgb)
    assert edges.shape == rgb.shape and edges.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 255} and (edges[..., 0] == edges[..., 2]).all()
    columns = np.flatnonzero(edges[..., 0].any(axis=0))
    assert set(columns) <= {23, 24} and edges[:, :20].max() == 0 and edges[:, 28:].max() == 0


def test_the_edge_picture_is_found_at_the_pictures_own_resolution():
    rgb = np.zeros((30, 50, 3), np.uint8)
    rgb[10:20, 15:35] = 255  # a white box
    picture = edge_picture(Image.fromarray(rgb))
    assert picture.size == (50, 30) and picture.mode == "RGB"
    edges = np.asarray(picture)[..., 0] > 0
    assert edges[9:21, 14:36].sum() == edges.sum() > 0  # around the box, nowhere else


def test_without_opencv_the_error_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)  # absent, as on an install without it
    with pytest.raises(MissingExtra, match=r"need OpenCV, which is not installed: pip install 'sanaedit\[control\]'"):
        canny_edges(np.zeros((8, 8, 3), np.uint8))
