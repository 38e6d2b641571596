"""The learned refiner as an exported graph: the torch-free tiling (refine_tiles.py) equals the module's refine,
the ONNX and MNN graphs (any height and width) refine a non-square photo in tiles to within one uint8 level of
PyTorch, their manifest entry, and the runner (formats/refiner.py load_refiner_graph) without torch."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.errors import ModelFolderError
from sanaedit.formats.refiner import load_refiner_graph
from sanaedit.models.refine_tiles import REFINER_GRAPH, RefinerGraph, refine_in_tiles
from sanaedit.models.refiner import Refiner

SIZE, TILE = (203, 150), 64  # non-square, not a multiple of 2 or 3: edge tiles of several shapes
BACKEND = {"onnx": "onnxruntime", "mnn": "mnn"}


def _noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _trained_looking(unshuffle: int, seed: int = 0) -> Refiner:
    """A tiny refiner whose output conv is not zero (not the identity, as after training)."""
    torch.manual_seed(seed)
    refiner = Refiner(width=8, dilations=(1, 2), unshuffle=unshuffle)
    torch.nn.init.normal_(refiner.out.weight, std=0.05)
    torch.nn.init.normal_(refiner.out.bias, std=0.02)
    return refiner.eval().requires_grad_(False)


@pytest.mark.parametrize("unshuffle", [1, 2, 3])
def test_tiles_without_torch_equal_one_pass_and_the_modules_refine(unshuffle):
    refiner = _trained_looking(unshuffle)
    photo, edit = _noise_image(0, SIZE), _noise_image(1, SIZE)
    whole = np.asarray(refine_in_tiles(refiner.forward_numpy, photo, edit, refiner.factor, refiner.margin, 4096))
    assert whole.shape == (SIZE[1], SIZE[0], 3) and not np.array_equal(whole, np.asarray(edit))
    tiled = np.asarray(refine_in_tiles(refiner.forward_numpy, photo, edit, refiner.factor, refiner.margin, TILE))
    # Each output pixel sees its whole receptive field in its tile: the same function. A convolution over another
    # size may sum in another order, so a value on a rounding boundary can land one level away (1 pixel in 30k here).
    off = np.abs(tiled.astype(np.int16) - whole)
    assert off.max() <= 1 and np.count_nonzero(off) <= 3
    assert np.array_equal(np.asarray(refiner.refine(photo, edit, tile=TILE)), tiled)  # the module's own tiling
    graph = RefinerGraph(lambda p, e: refiner.forward_numpy(p, e), refiner.factor, refiner.margin)
    assert np.array_equal(np.asarray(graph.refine(photo, edit, tile=TILE)), tiled)
    with pytest.raises(ValueError, match="differ in size"):
        graph.refine(photo, edit.resize((10, 10)))


@pytest.fixture(scope="module", params=["onnx", "mnn"])
def exported_refiner(request, tmp_path_factory):
    """(format, folder, manifest, refiner): a factor-2 refiner exported alone, as `sanaedit export` exports it."""
    from sanaedit.export.folder import export_refiner

    fmt = request.param
    if fmt == "mnn":
        pytest.importorskip("MNN")
    refiner = _trained_looking(2, seed=1)
    folder = tmp_path_factory.mktemp(f"refiner-{fmt}")
    entry = export_refiner(refiner, folder, fmt)
    return fmt, folder, {"graphs": {REFINER_GRAPH: entry}}, refiner


def test_the_exported_graph_refines_a_photo_as_pytorch(exported_refiner):
    fmt, folder, manifest, refiner = exported_refiner
    entry = manifest["graphs"][REFINER_GRAPH]
    assert entry["file"] == f"refiner.{fmt}" and (folder / entry["file"]).is_file()
    assert entry["inputs"] == ["photo", "edit"] and entry["outputs"] == ["refined"]
    assert entry["bits"] is None and entry["factor"] == 2 and entry["margin"] == refiner.margin
    assert entry["max_rel_error"] < 1e-5 and entry["max_level_error"] <= 1 and entry["bytes"] > 0
    json.dumps(entry)  # it goes into model_index.json as it is
    graph = load_refiner_graph(folder, manifest, BACKEND[fmt], threads=2)
    photo, edit = _noise_image(2, SIZE), _noise_image(3, SIZE)
    want = np.asarray(refiner.refine(photo, edit, tile=TILE), np.int16)
    got = np.asarray(graph.refine(photo, edit, tile=TILE), np.int16)
    assert got.shape == want.shape and not np.array_equal(want, np.asarray(edit))
    assert np.abs(got - want).max() <= 1
    # any height and width the factor divides, one pass over the picture included
    tile = graph.forward(*(np.random.default_rng(4).random((1, 3, 38, 94), np.float32) for _ in range(2)))
    assert tile.shape == (1, 3, 38, 94) and tile.dtype == np.float32


def test_the_runner_needs_no_torch(exported_refiner, tmp_path):
    fmt, folder, manifest, refiner = exported_refiner
    photo, edit = _noise_image(5, SIZE), _noise_image(6, SIZE)
    photo.save(tmp_path / "photo.png")
    edit.save(tmp_path / "edit.png")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    script = f"""
import json, sys
from pathlib import Path
sys.modules["torch"] = None  # importing torch anywhere below fails
from PIL import Image
from sanaedit.formats.refiner import load_refiner_graph
tmp = Path({str(tmp_path)!r})
graph = load_refiner_graph(Path({str(folder)!r}), json.loads((tmp / "manifest.json").read_text()), {BACKEND[fmt]!r}, 1)
graph.refine(Image.open(tmp / "photo.png"), Image.open(tmp / "edit.png"), tile={TILE}).save(tmp / "out.png")
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    want = np.asarray(refiner.refine(photo, edit, tile=TILE), np.int16)
    assert np.abs(np.asarray(Image.open(tmp_path / "out.png"), np.int16) - want).max() <= 1


def test_a_manifest_without_a_refiner_graph_or_with_a_broken_one(exported_refiner, tmp_path):
    fmt, folder, manifest, _ = exported_refiner
    assert load_refiner_graph(folder, {"graphs": {}}, BACKEND[fmt], 1) is None
    assert load_refiner_graph(folder, {}, BACKEND[fmt], 1) is None
    with pytest.raises(ModelFolderError, match="refiner graph .* is missing"):
        load_refiner_graph(tmp_path, manifest, BACKEND[fmt], 1)
    entry = dict(manifest["graphs"][REFINER_GRAPH])
    del entry["margin"]
    with pytest.raises(ModelFolderError, match="refiner graph entry is broken"):
        load_refiner_graph(folder, {"graphs": {REFINER_GRAPH: entry}}, BACKEND[fmt], 1)
    entry["margin"] = 3  # not a multiple of the factor 2
    with pytest.raises(ModelFolderError, match="do not fit"):
        load_refiner_graph(folder, {"graphs": {REFINER_GRAPH: entry}}, BACKEND[fmt], 1)
