"""A model folder's `controlnet/` carried into its ONNX and MNN exports (the DiT with its ControlNet as one more
graph, stored as the DiT is), and the exported runtimes steering with it."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from sanaedit.apps.cli.export import DEFAULT_QUANT
from sanaedit.core.noise import Generator
from sanaedit.export import export_model
from sanaedit.formats.index import CONTROLLED_GRAPH
from sanaedit.pipeline import SanaEditPipeline
from tests.conftest import boxed

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow  # an export of the tiny model each: ~40 s


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    from sanaedit.train.evaluate import psnr as skimage_psnr

    return skimage_psnr((a * 255).round().astype(np.uint8), (b * 255).round().astype(np.uint8))


def edit(pipe, **kwargs) -> np.ndarray:
    photo = boxed(80, 56)
    return pipe(photo, generator=Generator(0), output_type="np", num_inference_steps=3, **kwargs).images[0]


@pytest.fixture(scope="module", params=["onnx", "mnn"])
def exported(request, tiny_controlnet_model, tmp_path_factory):
    if request.param == "mnn":
        pytest.importorskip("MNN")
        if importlib.util.find_spec("llmexport") is None:  # (importing it needs its folder on sys.path)
            pytest.skip("llmexport is not installed")
    out = tmp_path_factory.mktemp("exports") / request.param
    quant = DEFAULT_QUANT[request.param]  # what `sanaedit export` writes: the DiT and its twin in int8
    return export_model(tiny_controlnet_model, out, fmt=request.param, quant=quant, progress=False)


def test_the_export_carries_the_controlnet_and_its_edit_matches_torch(exported, tiny_controlnet_model):
    manifest = json.loads((exported / "model_index.json").read_text())
    entry = manifest["graphs"][CONTROLLED_GRAPH]
    assert entry["inputs"][-2:] == ["control_latents", "conditioning_scale"]
    assert entry["bits"] == manifest["graphs"]["transformer"]["bits"]  # stored as the DiT is
    torch_pipe = SanaEditPipeline.from_pretrained(tiny_controlnet_model)
    graphs = SanaEditPipeline.from_pretrained(exported)
    assert graphs.flow.controlnet is not None and graphs.flow.controlnet.graph is None  # loaded on first use
    plain = edit(graphs)
    assert graphs.flow.controlnet.graph is None  # an edit without a control image never loads it
    steered, want = edit(graphs, control_image="edges"), edit(torch_pipe, control_image="edges")
    assert psnr(steered, want) >= 30
    assert psnr(steered, plain) < psnr(steered, want) - 3  # the graph's ControlNet does change the edit
    assert np.array_equal(edit(graphs, control_image="edges", controlnet_conditioning_scale=0.0), plain)


def test_an_export_without_a_controlnet_refuses_a_control_image(tiny_model_dir, tmp_path):
    out = export_model(tiny_model_dir, tmp_path / "plain", fmt="onnx", quant=None, progress=False)
    pipe = SanaEditPipeline.from_pretrained(out)
    assert pipe.flow.controlnet is None
    with pytest.raises(ValueError, match="no ControlNet"):
        edit(pipe, control_image="edges")
