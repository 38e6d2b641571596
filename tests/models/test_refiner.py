"""The learned full-resolution refiner (models/refiner.py): identity when fresh, tiles = one pass, the `refine`
upsampling in every runtime, its folder file checked, and the `refiner` training stage."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sanaedit.errors import ModelFolderError
from sanaedit.formats.refiner import folder_refiner
from sanaedit.image.upsample import restore_photo
from sanaedit.models.refiner import REFINER_FILE, Refiner, load_refiner, save_refiner


def _noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _trained_looking(seed: int = 0, unshuffle: int = 1) -> Refiner:
    """A refiner whose output layer is not zero (as after training)."""
    refiner = Refiner(width=8, dilations=(1, 2), unshuffle=unshuffle)
    torch.manual_seed(seed)
    torch.nn.init.normal_(refiner.out.weight, std=0.05)
    return refiner.eval()


@pytest.mark.parametrize("unshuffle", [1, 2, 3])
def test_a_fresh_refiner_returns_the_edit_and_tiles_equal_one_pass(unshuffle):
    photo, edit = _noise_image(0, (70, 45)), _noise_image(1, (70, 45))  # not multiples of 2 or 3
    assert np.array_equal(np.asarray(Refiner(unshuffle=unshuffle).refine(photo, edit)), np.asarray(edit))
    refiner = _trained_looking(unshuffle=unshuffle)
    whole = np.asarray(refiner.refine(photo, edit, tile=1024))
    assert whole.shape == (45, 70, 3) and not np.array_equal(whole, np.asarray(edit))
    tiled = np.asarray(refiner.refine(photo, edit, tile=16))  # several tiles, each with its margin of context
    assert np.array_equal(tiled, whole)
    with pytest.raises(ValueError, match="differ in size"):
        refiner.refine(photo, edit.resize((10, 10)))


def test_saved_refiner_loads_the_same_and_broken_files_are_named(tmp_path):
    refiner = _trained_looking(unshuffle=2)
    save_refiner(refiner, tmp_path)
    loaded = load_refiner(tmp_path)
    assert loaded.config == refiner.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), refiner.state_dict().values()))
    assert load_refiner(tmp_path / "nowhere") is None
    (tmp_path / REFINER_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFolderError, match="cannot load the refiner"):
        folder_refiner(tmp_path)
    bad = _trained_looking()
    with torch.no_grad():
        bad.out.bias.fill_(float("nan"))
    save_refiner(bad, tmp_path)
    with pytest.raises(ModelFolderError, match="NaN"):
        folder_refiner(tmp_path)


def test_refine_is_guided_then_the_refiner_and_needs_one():
    from sanaedit.image.io import preprocess

    photo = _noise_image(2, (96, 60))
    pixels, restore = preprocess(photo, 32, "reflect")
    output = torch.rand(1, 3, 32, 32) * 2 - 1
    refiner = _trained_looking(1)
    guided = restore_photo(output, restore, photo, "guided")
    refined = restore_photo(output, restore, photo, "refine", refiner)
    assert refined.size == photo.size
    assert np.array_equal(np.asarray(refined), np.asarray(refiner.refine(photo, guided)))
    with pytest.raises(ValueError, match="needs the model folder's learned refiner"):
        restore_photo(output, restore, photo, "refine")


@pytest.fixture
def refined_model_dir(tmp_path, tiny_model_dir):
    folder = tmp_path / "refined"
    shutil.copytree(tiny_model_dir, folder)
    save_refiner(_trained_looking(2), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["pipeline"]["upsample"] = "refine"
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_a_folder_with_a_refiner_edits_with_it_saves_it_and_exports_it(refined_model_dir, tmp_path):
    from sanaedit.export import export_model
    from sanaedit.load import load_pipeline

    photo = _noise_image(3, (90, 60))
    pipe = load_pipeline(refined_model_dir)
    assert pipe.flow.refiner is not None
    refined = pipe(photo, generator=torch.Generator().manual_seed(0)).images[0]
    pipe.config.upsample = "guided"
    guided = pipe(photo, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(np.asarray(refined), np.asarray(pipe.flow.refiner.refine(photo, guided)))
    pipe.config.upsample = "refine"
    saved = pipe.save_pretrained(tmp_path / "saved")
    assert (saved / REFINER_FILE).is_file()
    exported = export_model(refined_model_dir, tmp_path / "onnx", fmt="onnx", progress=False)
    assert (exported / REFINER_FILE).is_file()  # for PyTorch readers; the exported runtime runs the graph
    entry = json.loads((exported / "model_index.json").read_text())["graphs"]["refiner"]
    assert entry["file"] == "refiner.onnx" and (exported / "refiner.onnx").is_file()
    assert entry["inputs"] == ["photo", "edit"] and entry["outputs"] == ["refined"] and entry["bits"] is None
    assert entry["factor"] == 1 and entry["margin"] == pipe.flow.refiner.margin
    assert entry["max_rel_error"] < 1e-5 and entry["max_level_error"] <= 1
    onnx_pipe = load_pipeline(exported)
    assert onnx_pipe.config.upsample == "refine" and onnx_pipe.flow.refiner is not None
    onnx_out = onnx_pipe(photo, generator=torch.Generator().manual_seed(0)).images[0]
    assert onnx_out.size == photo.size


def test_a_folder_asking_for_refine_without_a_refiner_fails_at_load(refined_model_dir):
    from sanaedit.apps.cli import main
    from sanaedit.load import load_pipeline

    (refined_model_dir / REFINER_FILE).unlink()
    with pytest.raises(ModelFolderError, match="no refiner.safetensors"):
        load_pipeline(refined_model_dir)
    assert main(["info", str(refined_model_dir)]) != 0


def test_the_refiner_stage_trains_on_the_editors_own_outputs(tiny_model_dir, tmp_path):
    from sanaedit.train.loop import train

    data = tmp_path / "pairs"
    data.mkdir()
    for i in range(2):  # full-resolution pairs, larger than the tiny model's 32 px
        photo = _noise_image(10 + i, (80, 72)).filter(__import__("PIL.ImageFilter").ImageFilter.GaussianBlur(2))
        photo.save(data / f"s{i}.png")
        Image.fromarray(255 - np.asarray(photo)).save(data / f"t{i}.png")  # an edit the tiny model cannot know
    (data / "manifest.jsonl").write_text(
        "\n".join(json.dumps({"source": f"s{i}.png", "target": f"t{i}.png", "prompt": ""}) for i in range(2))
    )
    config = {
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
        "model": {"from": str(tiny_model_dir)},
        "data": {"manifest": str(data)},
        "train": {
            "stage": "refiner",
            "steps": 30,
            "batch_size": 4,
            "optimizer": "adamw",
            "lr": 1e-2,
            "refiner": {"width": 8, "crop": 32, "crops_per_picture": 4, "unshuffle": 2},
        },  # fmt: skip
        "export": {"upsample": "refine"},
        "log": {"progress": False, "every": 1},
        "checkpoint": {"every": 0},
    }
    out = train(config)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").open()]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])
    assert json.loads((out / "model_index.json").read_text())["pipeline"]["upsample"] == "refine"
    refiner = load_refiner(out)
    assert refiner is not None and refiner.out.weight.abs().sum() > 0
    base = "transformer/diffusion_pytorch_model.safetensors"
    assert (out / base).read_bytes() == (tiny_model_dir / base).read_bytes()  # nothing else trained
    from sanaedit.load import load_pipeline

    assert load_pipeline(out)(_noise_image(5, (80, 72))).images[0].size == (80, 72)


def test_a_lora_style_comes_back_guided_not_through_the_base_models_refiner(refined_model_dir, tmp_path):
    """The refiner learned the base model's outputs; a style (adapters, merged, or merged at export) is upsampled
    guided, unless asked for again."""
    from sanaedit.export import export_model
    from sanaedit.load import load_pipeline
    from sanaedit.models.lora import add_lora, save_lora
    from sanaedit.tools.random_model import build_tiny_pipeline

    style = build_tiny_pipeline()
    add_lora(style.transformer, rank=2)
    lora = save_lora(style.transformer, tmp_path / "style")
    pipe = load_pipeline(refined_model_dir)
    pipe.load_lora(lora, 1.0)
    assert pipe.config.upsample == "guided"
    pipe.config.upsample = "refine"  # still available on request
    assert pipe(_noise_image(6, (40, 40))).images[0].size == (40, 40)
    assert load_pipeline(refined_model_dir, loras=[(lora, 1.0)]).config.upsample == "guided"
    assert load_pipeline(refined_model_dir).config.upsample == "refine"
    exported = export_model(refined_model_dir, tmp_path / "onnx", fmt="onnx", progress=False, loras=[(lora, 1.0)])
    assert json.loads((exported / "model_index.json").read_text())["pipeline"]["upsample"] == "guided"


def test_a_photo_over_the_refiners_budget_comes_back_guided(monkeypatch):
    import sanaedit.image.upsample as up
    from sanaedit.image.io import preprocess

    photo = _noise_image(7, (96, 60))
    _, restore = preprocess(photo, 32, "reflect")
    output = torch.rand(1, 3, 32, 32) * 2 - 1
    refiner = _trained_looking(3)
    guided = np.asarray(restore_photo(output, restore, photo, "guided"))
    assert not np.array_equal(np.asarray(restore_photo(output, restore, photo, "refine", refiner)), guided)
    monkeypatch.setattr(up, "REFINE_MAX_PIXELS", 96 * 60 - 1)
    assert np.array_equal(np.asarray(restore_photo(output, restore, photo, "refine", refiner)), guided)


def test_info_lists_the_refiner_and_refuses_a_broken_one(refined_model_dir, capsys):
    from sanaedit.apps.cli import main

    assert main(["info", str(refined_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "refiner.safetensors" in out and "--upsample refine" in out
    (refined_model_dir / REFINER_FILE).write_bytes(b"\0" * 64)
    assert main(["info", str(refined_model_dir)]) != 0
    assert "cannot load the refiner" in capsys.readouterr().err
