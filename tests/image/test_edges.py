"""Edges of a photo as the control image (image/edges.py): OpenCV's Canny, white on black, on the model's input."""

from __future__ import annotations

import numpy as np
import pytest

from sanaedit.errors import MissingExtra
from sanaedit.image.edges import canny_edges, edge_pixels


def test_a_step_has_an_edge_and_flat_areas_have_none():
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, 24:] = 255
    edges = canny_edges(rgb)
    assert edges.shape == rgb.shape and edges.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 255} and (edges[..., 0] == edges[..., 2]).all()
    columns = np.flatnonzero(edges[..., 0].any(axis=0))
    assert set(columns) <= {23, 24} and edges[:, :20].max() == 0 and edges[:, 28:].max() == 0


def test_edges_of_the_model_input_are_model_input_too():
    pixels = np.full((2, 3, 16, 16), -1.0, np.float32)
    pixels[1, :, 4:12, 4:12] = 1.0  # a white square on the second picture
    edges = edge_pixels(pixels)
    assert edges.shape == pixels.shape and edges.dtype == np.float32
    assert (edges[0] == -1).all() and (edges[1] == 1).any() and set(np.unique(edges)) <= {-1.0, 1.0}


def test_without_opencv_the_error_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)  # absent, as on an install without it
    with pytest.raises(MissingExtra, match=r"need OpenCV, which is not installed: pip install 'sanaedit\[control\]'"):
        canny_edges(np.zeros((8, 8, 3), np.uint8))
