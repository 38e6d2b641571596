import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from sanaedit.errors import ModelFolderError
from sanaedit.pipeline import SanaEditPipeline


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        SanaEditPipeline.from_pretrained(tmp_path / "nope")
    with pytest.raises(ModelFolderError, match="no model_index.json"):
        SanaEditPipeline.from_pretrained(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFolderError, match="not a folder"):
        SanaEditPipeline.from_pretrained(tmp_path / "file")


def test_broken_index(model_copy):
    (model_copy / "model_index.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        SanaEditPipeline.from_pretrained(model_copy)
    (model_copy / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelFolderError, match="expected 'SanaEditPipeline'"):
        SanaEditPipeline.from_pretrained(model_copy)


@pytest.mark.parametrize(
    "component", ["transformer", "vae", "llm", "connector", "projector", "meta_queries.safetensors"]
)
def test_missing_component_is_named(model_copy, component):
    path = model_copy / component
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(ModelFolderError, match=f"missing component.*{component}"):
        SanaEditPipeline.from_pretrained(model_copy)


def test_corrupt_weights_are_named(model_copy):
    (model_copy / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelFolderError, match=r"transformer: cannot load transformer"):
        SanaEditPipeline.from_pretrained(model_copy)


def test_mismatched_tensor_shapes_are_named(model_copy):
    # connector weights of another width than its config
    path = model_copy / "connector" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    tensors = {k: torch.zeros(*(d + 1 for d in v.shape)) for k, v in load_file(path).items()}
    save_file(tensors, path)
    (model_copy / "prompt_cache.safetensors").unlink()  # so the text path is checked at load time
    with pytest.raises(ModelFolderError, match="connector: cannot load connector"):
        SanaEditPipeline.from_pretrained(model_copy)


def test_meta_queries_of_the_wrong_width(model_copy):
    save_file({"meta_queries": torch.zeros(8, 5)}, model_copy / "meta_queries.safetensors")
    (model_copy / "prompt_cache.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="does not match the LLM width"):
        SanaEditPipeline.from_pretrained(model_copy)


def test_projector_that_does_not_fit_the_transformer(model_copy):
    from sanaedit.models.projector import Projector

    Projector(in_features=32, out_features=17).save_pretrained(model_copy / "projector")
    (model_copy / "prompt_cache.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="projector out_features 17 != transformer caption_channels 24"):
        SanaEditPipeline.from_pretrained(model_copy)


def test_failed_save_keeps_the_existing_folder(tiny_pipe, model_copy, monkeypatch):
    before = sorted(p.relative_to(model_copy) for p in model_copy.rglob("*"))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tiny_pipe.vae, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        tiny_pipe.save_pretrained(model_copy)
    assert sorted(p.relative_to(model_copy) for p in model_copy.rglob("*")) == before
    assert [p.name for p in model_copy.parent.iterdir()] == ["model"]  # no temp folder left behind
    SanaEditPipeline.from_pretrained(model_copy)  # still loads
