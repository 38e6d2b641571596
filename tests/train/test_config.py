"""The training config: parsed and checked once into typed settings; bad keys and values named; inputs untouched."""

import copy
from pathlib import Path

import pytest

from sanaedit.train.config import (
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    StageConfig,
    TrainSettings,
    load_config,
)

RECIPE = Path(__file__).resolve().parents[2] / "sanaedit" / "configs" / "comic.yaml"


def test_defaults_and_types():
    (cfg,) = load_config({"model": {"variant": "tiny"}})
    assert isinstance(cfg, StageConfig)
    assert isinstance(cfg.model, ModelConfig) and cfg.model.variant == "tiny" and cfg.model.from_ is None
    assert isinstance(cfg.train, TrainSettings) and cfg.train.steps == 100 and cfg.train.lr == 1e-4
    assert isinstance(cfg.data, DataConfig) and cfg.data.skip_bad is False and cfg.data.manifest is None
    assert isinstance(cfg.checkpoint, CheckpointConfig) and cfg.checkpoint.keep == 2
    assert cfg.train.reconstruction.l1 == 1.0 and cfg.train.reconstruction.mse == 1.0
    assert cfg.stage.name == "stage3" and cfg.stage.data == "edit" and "transformer" in cfg.stage.trainable
    assert cfg.stage_dir == Path("runs/train") and (cfg.stage_index, cfg.num_stages) == (0, 1)
    assert cfg.export == {} and cfg.train.optimizer_args == {}


def test_numbers_yaml_strings_and_merges(tmp_path):
    # PyYAML reads 1e-4 (no dot) as a string; ints are fine where a number is expected; `no` reads as false
    (tmp_path / "c.yaml").write_text(
        "train: {lr: 1e-4, shift: 2, mixed_precision: no, reconstruction: {l1: 2}}\n"
        "model: {from: some/folder}\nexport: {guidance_scale: 1}\n"
    )
    (cfg,) = load_config(tmp_path / "c.yaml", ["--train.ema=9e-1", "--export.num_inference_steps=5"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.shift == 2.0 and isinstance(cfg.train.shift, float)
    assert cfg.train.ema == 0.9 and cfg.train.mixed_precision == "no"
    assert (cfg.train.reconstruction.l1, cfg.train.reconstruction.mse) == (2.0, 1.0)  # the other weight's default
    assert cfg.model.from_ == "some/folder"
    assert cfg.export == {"guidance_scale": 1, "num_inference_steps": 5}


@pytest.mark.parametrize(
    "config, overrides, message",
    [
        ({"train": {"stepz": 1}}, [], r"unknown config key 'train\.stepz'"),
        ({"trian": {}}, [], r"unknown config key 'trian'"),
        ({"train": {"reconstruction": {"l2": 1}}}, [], r"unknown config key 'train\.reconstruction\.l2'"),
        ({"model": {"variant": {"layers": 3}}}, [], r"unknown config key 'model\.variant\.layers'"),
        ({"export": {"guidance": 2}}, [], r"unknown config key 'export\.guidance'"),
        ({}, ["--data.skipbad=true"], r"unknown config key 'data\.skipbad'"),
        ({"train": {"steps": "ten"}}, [], r"config key 'train\.steps' must be an integer, got 'ten'"),
        ({"train": {"steps": 2.5}}, [], r"config key 'train\.steps' must be an integer"),
        ({"train": {"lr": [1]}}, [], r"config key 'train\.lr' must be a number, got \[1\]"),
        ({}, ["--train.lr=abc"], r"config key 'train\.lr' must be a number, got 'abc'"),
        ({"data": {"skip_bad": 3}}, [], r"config key 'data\.skip_bad' must be true or false, got 3"),
        ({"data": {"manifest": 5}}, [], r"config key 'data\.manifest' must be a string or null"),
        ({"train": {"trainable": "vae"}}, [], r"config key 'train\.trainable' must be a list of strings"),
        ({"train": {"optimizer_args": [1]}}, [], r"config key 'train\.optimizer_args' must be a mapping"),
        ({"log": 3}, [], r"config key 'log' must be a mapping"),
        ({"train": {"optimizer": "sgd"}}, [], r"config key 'train\.optimizer' is 'sgd'; choose one of came, adamw"),
        ({"train": {"stage": "stage9"}}, [], r"config key 'train\.stage' is 'stage9'"),
        ({"data": {"build": "cats"}}, [], r"config key 'data\.build' is 'cats'; choose one of comic"),
        ({"train": {"batch_size": 0}}, [], r"config key 'train\.batch_size' must be >= 1"),
        ({"train": {"ema": 1.5}}, [], r"'train\.ema' is an EMA decay"),
        ({"train": {"trainable": ["llm"]}}, [], r"'train\.trainable'.*the LLM is always frozen"),
        ({"train": {"stage": "autoencoder"}, "data": {"pre_encode": True}}, [], r"'data\.pre_encode' needs a frozen"),
        ({"stages": [{"train": {"steps": "x"}}, {}]}, [], r"'train\.steps' must be an integer.*\(stage 0\)"),
        ({"stages": [{}]}, ["--stages.3.train.steps=1"], r"override stages\.3: the config has 1 stage"),
        ({}, ["--train.steps"], "not of the form"),
    ],
)
def test_bad_keys_and_values_are_named(config, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(config, overrides)


def test_given_mapping_is_left_unchanged():
    raw = {
        "output_dir": "runs/x",
        "data": {"build": "comic", "build_args": {"synthetic": 2}},
        "train": {"steps": 3, "trainable": ["connector"]},
        "stages": [{"name": "a", "train": {"stage": "autoencoder", "trainable": ["vae"]}}, {"name": "b"}],
    }
    before = copy.deepcopy(raw)
    stages = load_config(raw, ["--stages.1.train.steps=7", "--train.lr=0.5"])
    assert raw == before
    assert [s.train.steps for s in stages] == [3, 7] and [s.name for s in stages] == ["a", "b"]
    stages[0].data.build_args["synthetic"] = 99  # the parsed copy is its own
    assert raw["data"]["build_args"]["synthetic"] == 2
    moved = stages[1].starting_from("runs/x/0-a/model")
    assert moved.model.from_ == "runs/x/0-a/model" and moved.model.variant is None
    assert stages[1].model.from_ is None  # a new object; the original stays as it was


def test_the_comic_recipe_parses_with_the_cli_override():
    stages = load_config(RECIPE, ["--output_dir=runs/x"])
    assert [s.name for s in stages] == ["autoencoder", "comic"]
    assert [s.stage_dir for s in stages] == [Path("runs/x/0-autoencoder"), Path("runs/x/1-comic")]
    ae, comic = stages
    assert ae.stage.data == "images" and ae.train.lr == 1e-3 and ae.train.optimizer == "adamw"
    assert comic.stage.trainable == ("connector", "projector", "transformer") and comic.data.pre_encode
    assert comic.train.ema == 0.999 and comic.sample.count == 2 and comic.checkpoint.keep == 1
    assert isinstance(ae.model.variant, dict) and ae.model.variant["resolution"] == 256
    assert ae.data.resolution == 128 and comic.data.resolution == 256  # the autoencoder on 128 px views
    assert ae.export == {
        "guidance_scale": 1.0, "num_inference_steps": 10, "padding": "reflect", "upsample": "guided"
    }  # fmt: skip


def test_build_dataset_does_not_change_the_config(tmp_path, monkeypatch):
    """The comic builder's manifest paths come back from build_dataset; the config keeps data.manifest unset."""
    import sanaedit.train.comic_data as comic_data
    from sanaedit.train.sources import build_dataset

    def fake_build(root, resolution, **kw):  # the real builder takes minutes' worth of photos: write two samples
        from PIL import Image

        for split in ("train", "eval"):
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(root / split / "a.png")
            (root / split / "manifest.jsonl").write_text('{"source": "a.png", "target": "a.png", "prompt": "p"}\n')

    monkeypatch.setattr(comic_data, "build_comic_dataset", fake_build)
    raw = {"output_dir": str(tmp_path), "data": {"build": "comic", "build_args": {}}}
    before = copy.deepcopy(raw)
    (cfg,) = load_config(raw)
    dataset, sources = build_dataset(cfg, cfg.stage, 16)
    assert raw == before and cfg.data.manifest is None and cfg.data.eval_manifest is None
    assert sources.manifest == str(tmp_path / "data" / "train") and len(dataset) == 1
    assert sources.preview_manifest == str(tmp_path / "data" / "eval")
