import shutil
import subprocess
import sys

import pytest
from PIL import Image

from sanaedit.apps.cli import main
from sanaedit.load import SAMPLE_PHOTO


def test_edit_one_photo(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "comic.png"
    assert main(["edit", str(SAMPLE_PHOTO), "-o", str(out), "--model", str(tiny_model_dir), "--steps", "2"]) == 0
    assert Image.open(out).size == Image.open(SAMPLE_PHOTO).size
    assert "wrote" in capsys.readouterr().out


def test_edit_many_into_a_folder(tiny_model_dir, tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.png"
    Image.new("RGB", (30, 20), "red").save(a)
    Image.new("RGB", (17, 41), "blue").save(b)
    out = tmp_path / "out"
    assert main(["edit", str(a), str(b), "-o", str(out), "--model", str(tiny_model_dir), "--steps", "1", "-q"]) == 0
    assert Image.open(out / "a.png").size == (30, 20) and Image.open(out / "b.png").size == (17, 41)


def test_several_inputs_and_an_image_file_name_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """`-o single.png` with two inputs used to make a folder called single.png: one line, nothing written."""
    import sanaedit.load

    monkeypatch.setattr(sanaedit.load, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    Image.new("RGB", (8, 8)).save(a)
    Image.new("RGB", (8, 8)).save(b)
    assert main(["edit", str(a), str(b), "-o", str(tmp_path / "single.png")]) == 1
    err = capsys.readouterr().err
    assert "2 inputs need an output folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "single.png").exists()


def test_bad_prompt_guidance_and_index_fail_in_one_line_before_any_edit(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import json

    import sanaedit.load

    out = tmp_path / "o.png"
    args = ["edit", str(SAMPLE_PHOTO), "-o", str(out), "--model", str(tiny_model_dir)]
    with pytest.raises(SystemExit):
        main([*args, "--guidance", "1e308"])
    assert "--guidance: must be a number from 1 to 100" in capsys.readouterr().err
    loads = []
    monkeypatch.setattr(sanaedit.load, "load_pipeline", lambda *a, **k: loads.append(1))
    assert main([*args, "--prompt", b"bad \xff bytes".decode("utf-8", "surrogateescape")]) == 1
    assert "--prompt is not valid text: character 5 is not Unicode" in capsys.readouterr().err and loads == []
    monkeypatch.undo()
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model_index.json").write_text(json.dumps([]))
    assert main([*args[:-1], str(broken)]) == 1
    err = capsys.readouterr().err
    assert "holds [], not the JSON object a model folder's index is" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_corrupt_input_is_reported_and_leaves_no_output(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(Image.new("RGB", (8, 8)).tobytes()[:50])
    out = tmp_path / "x.png"
    assert main(["edit", str(bad), "-o", str(out), "--model", str(tiny_model_dir)]) == 1
    assert "broken.jpg" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["broken.jpg"]


def test_missing_input_and_bad_model_fail_before_work(tiny_model_dir, tmp_path, capsys):
    assert main(["edit", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "o.png")]) == 1
    assert "input not found" in capsys.readouterr().err
    assert main(["edit", str(SAMPLE_PHOTO), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path)]) == 1
    assert "no model_index.json" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_files_follow_the_folder_modes_naming_and_failure_rules(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """One code path (batch.edit_files): colliding names keep the whole name, a true collision and a failed edit
    are per-file failures, the other photos are still written."""
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
    a, b, c = tmp_path / "a.jpg", tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"
    for path in (a, b, c):
        Image.new("RGB", (8, 8)).save(path)
    out = tmp_path / "out"
    assert main(["edit", str(a), str(b), "-o", str(out), "--model", str(tiny_model_dir), "--steps", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg.png", "a.png.png"]
    capsys.readouterr()
    assert main(["edit", str(b), str(c), "-o", str(tmp_path / "o2"), "--model", str(tiny_model_dir)]) == 1
    assert "collides" in capsys.readouterr().err and len(list((tmp_path / "o2").iterdir())) == 1

    import sanaedit.core.sampling as sampling

    def nan_sample(velocity, x, sigmas, **kwargs):
        return x * float("nan")

    monkeypatch.setitem(sampling.SAMPLE_FUNCTIONS, "euler", nan_sample)  # a NaN result fails that file, not the run
    assert main(["edit", str(a), str(b), "-o", str(tmp_path / "o3"), "--model", str(tiny_model_dir)]) == 1
    err = capsys.readouterr().err
    assert "2 failed" in err and "NaN" in err


def test_edit_never_overwrites_its_input(tiny_model_dir, tmp_path, capsys):
    photo = tmp_path / "same.png"
    Image.new("RGB", (8, 8), "red").save(photo)
    before = photo.read_bytes()
    assert main(["edit", str(photo), "-o", str(photo), "--model", str(tiny_model_dir), "--steps", "1"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err and photo.read_bytes() == before
    assert main(["edit", str(photo), "-o", str(tmp_path), "--model", str(tiny_model_dir), "--steps", "1"]) == 1
    assert photo.read_bytes() == before


def test_info(tiny_model_dir, capsys):
    assert main(["info", str(tiny_model_dir)]) == 0
    text = capsys.readouterr().out
    for name in ("transformer", "vae", "llm", "connector", "projector", "meta_queries", "prompt cache", "F32"):
        assert name in text


def test_assemble_from_published_style_parts(tiny_pipe, tmp_path):
    """A diffusers T2I transformer folder + a diffusers DC-AE folder + an HF LLM folder -> a working model."""
    from diffusers import SanaTransformer2DModel

    from sanaedit.pipeline import SanaEditPipeline

    cfg = {k: v for k, v in tiny_pipe.transformer.config.items() if not k.startswith("_")}
    cfg.update(in_channels=4, out_channels=4)
    SanaTransformer2DModel(**cfg).save_pretrained(tmp_path / "sana" / "transformer")  # a pipeline-root layout
    tiny_pipe.vae.save_pretrained(tmp_path / "dcae")
    tiny_pipe.text_encoder.llm.save_pretrained(tmp_path / "qwen")
    tiny_pipe.text_encoder.tokenizer.save_pretrained(tmp_path / "qwen")
    out = tmp_path / "assembled"
    args = ["assemble", "--transformer", str(tmp_path / "sana"), "--vae", str(tmp_path / "dcae")]
    assert main([*args, "--llm", str(tmp_path / "qwen"), "--out", str(out), "--variant", "tiny"]) == 0
    pipe = SanaEditPipeline.from_pretrained(out)
    assert pipe.transformer.config.in_channels == 8 and pipe.transformer.patch_embed.proj.weight[:, 4:].eq(0).all()
    assert pipe(Image.new("RGB", (20, 10)), num_inference_steps=1).images[0].size == (20, 10)


@pytest.mark.slow
def test_console_script_runs_the_readme_job(tmp_path):
    """The installed `sanaedit` command edits the bundled photo with the default model."""
    exe = shutil.which("sanaedit") or pytest.skip("console script not installed")
    out = tmp_path / "comic.png"
    done = subprocess.run(
        [exe, "edit", str(SAMPLE_PHOTO), "-o", str(out), "--steps", "2"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == Image.open(SAMPLE_PHOTO).size


def test_module_entry_point_help():
    done = subprocess.run([sys.executable, "-m", "sanaedit.apps.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "edit" in done.stdout and "assemble" in done.stdout
