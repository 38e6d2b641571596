"""Staged residency (`enable_staged_residency`, `sanaedit edit --low-memory`): each network in memory only for its
stage, the same pictures as with everything resident."""

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.load import load_pipeline
from sanaedit.pipeline import SanaEditPipeline
from sanaedit.runtime.residency import OnDisk


def _photo(tmp_path):
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def _edit(pipe, photo, **kw):
    return np.asarray(pipe(photo, generator=torch.Generator().manual_seed(3), num_inference_steps=3, **kw).images[0])


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_staged_edit_is_the_resident_edit_and_frees_every_network(tiny_model_dir, tmp_path, dtype):
    photo = _photo(tmp_path)
    resident = load_pipeline(tiny_model_dir, dtype=dtype, threads=1)
    staged = load_pipeline(tiny_model_dir, dtype=dtype, threads=1, staged=True)
    assert staged.staged and staged.flow.vae is None
    assert all(isinstance(getattr(staged.flow, n), OnDisk) for n in ("encoder", "transformer", "decoder"))

    seen = []

    def look(pipe, step, timestep, kwargs):  # inside the DiT's stage: it is there, prepared as the resident one
        seen.append([type(m).__name__ for m in pipe.transformer.modules()])
        return {}

    np.testing.assert_array_equal(_edit(staged, photo, callback_on_step_end=look), _edit(resident, photo))
    assert seen and seen[0] == [type(m).__name__ for m in resident.transformer.modules()]
    assert ("Int8Linear" in seen[0]) == (dtype == "int8")
    assert all(isinstance(getattr(staged.flow, n), OnDisk) for n in ("encoder", "transformer", "decoder"))
    np.testing.assert_array_equal(_edit(staged, photo), _edit(resident, photo))  # and again: reloaded each time


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_staged_networks_load_in_the_pipelines_dtype_whichever_came_first(tiny_model_dir, tmp_path, dtype):
    """.to(dtype) before or after enable_staged_residency, or the dtype given at load: each stage's network is loaded
    in it, and the edit is the resident pipeline's in that dtype."""
    photo = _photo(tmp_path)
    resident = SanaEditPipeline.from_pretrained(tiny_model_dir).to(dtype=dtype)
    pipes = [
        SanaEditPipeline.from_pretrained(tiny_model_dir).to(dtype=dtype).enable_staged_residency(),
        SanaEditPipeline.from_pretrained(tiny_model_dir).enable_staged_residency().to(dtype=dtype),
        SanaEditPipeline.from_pretrained(tiny_model_dir, torch_dtype=dtype, staged=True),
    ]
    expected = _edit(resident, photo)
    seen = []

    def look(pipe, step, timestep, kwargs):  # inside the DiT's stage: the network as loaded for it
        seen.append(next(pipe.transformer.parameters()).dtype)
        return {}

    for staged in pipes:
        assert staged.staged and staged.dtype == dtype
        np.testing.assert_array_equal(_edit(staged, photo, callback_on_step_end=look), expected)
    assert len(seen) == 3 * 3 and set(seen) == {dtype}  # 3 steps each


def test_stages_load_in_order_and_the_autoencoder_by_halves(tiny_model_dir, tmp_path):
    staged = load_pipeline(tiny_model_dir, threads=1, staged=True)
    loaded = []
    load = staged._network_loader

    def spy(name, device, dtype):
        network = load(name, device, dtype)
        held = [n for n, p in network.named_parameters() if p.device.type != "meta"]
        loaded.append((name, held))
        return network

    staged._network_loader = spy
    _edit(staged, _photo(tmp_path))
    assert [name for name, _ in loaded] == ["encoder", "transformer", "decoder"]
    encoder, decoder = dict(loaded)["encoder"], dict(loaded)["decoder"]
    assert encoder and all(n.startswith("vae.encoder.") for n in encoder)  # the decoder's weights never read
    assert decoder and all(n.startswith("vae.decoder.") for n in decoder)


def test_a_folder_with_only_half_an_autoencoder_fails_naming_the_tensor(tiny_model_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from sanaedit.errors import ModelFolderError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    lost = sorted(k for k in tensors if k.startswith("decoder."))[0]
    del tensors[lost]
    save_file(tensors, weights)
    with pytest.raises(ModelFolderError, match=lost.replace(".", r"\.")):  # at load time, not mid-edit
        load_pipeline(broken, threads=1, staged=True)


def test_staged_pipeline_refuses_what_needs_networks_in_memory(tiny_model_dir, tmp_path, tiny_pipe):
    staged = load_pipeline(tiny_model_dir, threads=1, staged=True)
    with pytest.raises(RuntimeError, match="not in memory"):
        staged.flow.transformer(None)
    with pytest.raises(ValueError, match="staged residency"):
        staged.save_pretrained(tmp_path / "copy")
    with pytest.raises(ValueError, match="staged residency"):
        staged.load_lora(tmp_path / "style.safetensors")
    assert staged.to("cpu") is staged  # where it already is: nothing to do
    with pytest.raises(NotImplementedError, match="enable_staged_residency"):
        staged.enable_model_cpu_offload()
    with pytest.raises(ValueError, match="model folder"):
        tiny_pipe.enable_staged_residency()  # built in memory: nothing to reload from


def test_cli_low_memory_writes_the_same_picture(tiny_model_dir, tmp_path):
    from sanaedit.apps.cli import main

    photo = _photo(tmp_path)
    for name, extra in (("plain.png", []), ("staged.png", ["--low-memory"])):
        argv = ["edit", str(photo), "-o", str(tmp_path / name), "--model", str(tiny_model_dir), "--steps", "2"]
        assert main(argv + extra) == 0
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "plain.png")), np.asarray(Image.open(tmp_path / "staged.png"))
    )
