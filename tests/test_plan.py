"""The run plan (plan.py): every choice of a run made once, typed, from the folder's index and the user's options,
and the one assembly every source goes through (SanaEditPipeline.from_plan)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from sanaedit.core.choices import Backend, Format, Upsample, Vae
from sanaedit.core.config import PipelineConfig
from sanaedit.errors import ModelFolderError
from sanaedit.plan import FolderInfo, RunPlan, make_plan, styled


def info(**fields) -> FolderInfo:
    return FolderInfo(**{"folder": Path("/m"), "format": Format.TORCH, "config": PipelineConfig(), **fields})


def test_choices_are_enums_that_read_and_write_as_plain_strings():
    config = PipelineConfig.from_dict(
        {"vae": "tiny", "upsample": "guided-grey", "sampler": "dpm", "padding": "reflect"}
    )
    assert config.vae is Vae.TINY and config.upsample is Upsample.GUIDED_GREY
    assert config.vae == "tiny"  # a member is its text: JSON files and command lines keep plain strings
    assert json.loads(json.dumps(dataclasses.asdict(config)))["upsample"] == "guided-grey"
    assert PipelineConfig.from_dict({"vae": "huge"}).vae == "huge"  # kept as written, for the plan to name


def test_the_plan_takes_the_folders_defaults_and_the_users_options():
    folder = info(config=PipelineConfig(vae=Vae.FULL, upsample=Upsample.REFINE), has_tiny_vae=True, has_refiner=True)
    plan = make_plan(folder, dtype="float32")
    assert (plan.backend, plan.vae, plan.upsample) == (Backend.TORCH, Vae.FULL, Upsample.REFINE)
    assert plan.config == folder.config
    plan = make_plan(folder, vae="tiny", upsample="plain", dtype="float32")
    assert (plan.vae, plan.upsample) == (Vae.TINY, Upsample.PLAIN)
    assert (plan.config.vae, plan.config.upsample) == (Vae.TINY, Upsample.PLAIN)  # the pipeline's defaults follow
    assert folder.config.vae == Vae.FULL and folder.config.upsample == Upsample.REFINE  # the folder's left as it was
    exported = make_plan(info(format=Format.ONNX))
    assert (exported.backend, exported.dtype, exported.int8) == (Backend.ONNXRUNTIME, "float32", False)
    assert make_plan(info(format=Format.MNN, release_layout=True)).backend == Backend.MNN


def test_a_lora_plans_guided_upsampling_and_never_changes_a_config():
    config = PipelineConfig(upsample=Upsample.REFINE)
    folder = info(config=config, has_refiner=True)
    lora = [("style.safetensors", 1.0)]
    assert make_plan(folder, loras=lora, dtype="float32").upsample == Upsample.GUIDED
    assert make_plan(folder, loras=lora, upsample="refine", dtype="float32").upsample == Upsample.REFINE  # asked
    styled_config = styled(config)
    assert styled_config.upsample == Upsample.GUIDED and config.upsample == Upsample.REFINE
    plain = PipelineConfig(upsample=Upsample.PLAIN)
    assert styled(plain) is plain


@pytest.mark.parametrize(
    ("fields", "options", "message"),
    [
        ({}, {"vae": "tiny"}, "no tiny autoencoder in this folder"),
        ({"config": PipelineConfig(vae="huge")}, {}, "unknown autoencoder 'huge' /m's default"),
        ({}, {"upsample": "refine"}, "needs the model folder's learned refiner"),
        ({"config": PipelineConfig(upsample=Upsample.REFINE)}, {}, "asks for upsample 'refine' but the folder has no"),
        ({}, {"upsample": "sharp"}, "unknown upsampling method 'sharp'"),
        ({}, {"backend": "onnxruntime"}, "is a PyTorch model folder; backend 'onnxruntime' needs an exported folder"),
        ({}, {"backend": "tensorrt"}, "unknown backend 'tensorrt'"),
        ({}, {"dtype": "int4"}, "unknown dtype 'int4'"),
        ({}, {"dtype": "int8", "device": "cuda"}, "CPU path"),
        ({"stored_int8": True}, {"loras": [("x", 1.0)]}, "stores its DiT in int8"),
        ({"folder": None}, {"staged": True}, "needs a model folder to load from"),
        ({"format": Format.ONNX}, {"device": "cuda"}, "run on the CPU in float32"),
        ({"format": Format.ONNX}, {"backend": "mnn"}, "holds onnx graphs; backend 'mnn' cannot run them"),
        ({"format": Format.MNN, "release_layout": True}, {"backend": "onnxruntime"}, "the published release's layout"),
        ({"format": Format.ONNX}, {"loras": [("x", 1.0)]}, "merge a LoRA at export"),
        ({"format": Format.ONNX}, {"staged": True}, "staged residency"),
    ],
)
def test_what_does_not_fit_the_source_is_refused_before_anything_loads(fields, options, message):
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        make_plan(info(**fields), **options)
    assert "\n" not in str(raised.value)  # one line


def test_an_emulated_dtype_asked_for_is_honoured_and_said_once(emulated_cpu):
    for _ in range(2):
        assert make_plan(info(), dtype="bfloat16").dtype == "bfloat16"  # the user's choice stands
    [said] = emulated_cpu
    assert said.startswith("bfloat16 is emulated on this CPU (no AVX512-BF16/AMX)") and "\n" not in said
    assert "13x" in said and "dtype='auto'" in said and "float32" in said  # how much slower, and the way out
    assert make_plan(info(), dtype="float16").dtype == "float16"  # accepted too: emulated on such a CPU, said once
    assert len(emulated_cpu) == 2 and emulated_cpu[1].startswith("float16 is emulated")


@pytest.mark.parametrize(
    "options", [{}, {"dtype": "auto"}, {"dtype": "float32"}, {"dtype": "int8"}, {"dtype": "bfloat16", "device": "cuda"}]
)
def test_no_word_where_nothing_is_emulated(emulated_cpu, options):
    plan = make_plan(info(), **options)
    assert plan.dtype == ("bfloat16" if "device" in options else "float32")  # 'auto' picks what this CPU runs fast
    assert emulated_cpu == []


def test_auto_takes_bf16_where_the_cpu_has_it_and_asked_bf16_is_not_warned(emulated_cpu, monkeypatch):
    import sanaedit.plan as plan

    monkeypatch.setattr(plan, "has_fast_bf16", lambda: True)
    assert make_plan(info()).dtype == "bfloat16" and make_plan(info(), dtype="bfloat16").dtype == "bfloat16"
    assert emulated_cpu == []


def test_the_dtypes_the_api_takes():
    import torch

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert make_plan(info(), dtype=dtype).dtype == str(dtype).split(".")[-1]
    for dtype in (torch.float64, torch.int8):
        with pytest.raises(ValueError, match=re.escape(f"torch.float16, not {dtype}")):
            make_plan(info(), dtype=dtype)


def test_the_cli_says_an_emulated_dtype_once(tiny_model_dir, tmp_path, emulated_cpu):
    from PIL import Image

    from sanaedit.apps.cli import main

    Image.new("RGB", (24, 16), "green").save(tmp_path / "photo.png")
    argv = ["edit", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out.png"), "--model", str(tiny_model_dir)]
    assert main([*argv, "--steps", "1", "--dtype", "bfloat16"]) == 0
    assert len(emulated_cpu) == 1 and emulated_cpu[0].startswith("bfloat16 is emulated")


def test_the_plan_describes_itself():
    lines = make_plan(info(), dtype="float32", threads=3, loras=[("a.safetensors", 0.5)]).describe()
    text = "\n".join(lines)
    assert "runs on: torch (float32, cpu, threads: 3)" in text and "autoencoder: full" in text
    assert "LoRA: a.safetensors x0.5" in text
    assert "euler, schedule default, 10 steps" in text


def test_every_source_is_assembled_in_one_place(tiny_model_dir, tiny_mnn_release, tmp_path, monkeypatch):
    """A PyTorch folder, an ONNX export, MNN graphs in the release's layout and random weights: each through its
    reader's networks and the one `from_plan`, with the plan's config as the pipeline's defaults."""
    from sanaedit.export import export_model
    from sanaedit.load import load_pipeline
    from sanaedit.pipeline import SanaEditPipeline
    from sanaedit.tools.random_model import build_tiny_pipeline

    onnx = export_model(tiny_model_dir, tmp_path / "onnx", fmt="onnx", quant=None, progress=False)
    seen: list[tuple[str, RunPlan]] = []
    assemble = SanaEditPipeline.from_plan.__func__

    def spy(cls, source, plan):
        seen.append((type(source).__name__, plan))
        return assemble(cls, source, plan)

    monkeypatch.setattr(SanaEditPipeline, "from_plan", classmethod(spy))
    pipes = [
        load_pipeline(tiny_model_dir, dtype="float32"),
        SanaEditPipeline.from_pretrained(tiny_model_dir),
        load_pipeline(onnx),
        SanaEditPipeline.from_pretrained(tiny_mnn_release),
        build_tiny_pipeline(),
    ]
    assert [name for name, _ in seen] == [
        "TorchFolder",
        "TorchFolder",
        "ExportedFolder",
        "ReleaseFolder",
        "RandomWeights",
    ]
    for pipe, (_, plan) in zip(pipes, seen):
        assert pipe.config == plan.config and pipe.backend == plan.backend


def test_info_prints_the_plan_edit_runs(tiny_model_dir, capsys):
    from sanaedit.apps.cli import main

    assert main(["info", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "runs by default" in out and "runs on: torch" in out and "autoencoder: full" in out


def test_a_broken_pipeline_entry_is_named_with_its_folder(tiny_model_dir, tmp_path):
    import shutil

    from sanaedit.load import load_pipeline

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["pipeline"]["vae"] = "huge"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match=re.escape(f"unknown autoencoder 'huge' {folder}'s default")):
        load_pipeline(folder)
