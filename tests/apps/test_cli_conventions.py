"""The command line's conventions (issue 13): help and --version, one spelling of each option, everything the user
typed checked before the model loads (seconds), one-line errors, prompts a model cannot follow said so, `info` on
every folder kind, ordinary file permissions, and the README's and docs' commands parsing as written."""

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import sanaedit.load
from sanaedit import __version__
from sanaedit.apps.cli import build_parser, main, normalize_argv
from sanaedit.apps.cli.train import normalize_overrides
from sanaedit.load import BUNDLED_MODEL, SAMPLE_PHOTO

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading the model takes seconds: these checks must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(sanaedit.load, "load_pipeline", refuse)


def parse(argv):
    return build_parser().parse_args(normalize_argv(argv))


def subparsers():
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


# ----------------------------------------------------------------------------------------------- 2. help, version
def test_help_describes_the_program_not_its_code(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "add_parser" not in out and "module" not in out
    assert "comic" in out and "sanaedit edit photo.jpg -o comic.png" in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"sanaedit {__version__}"


@pytest.mark.parametrize("command", ["edit", "info", "assemble", "export", "train", "serve"])
def test_every_command_has_a_description_examples_and_help_for_each_option(command):
    parser = subparsers()[command]
    assert parser.description and parser.epilog and parser.epilog.startswith("examples:")
    assert f"sanaedit {command}" in parser.epilog
    for action in parser._actions:
        if action.help is not argparse.SUPPRESS:
            assert action.help, f"{command} {action.option_strings or action.dest} has no help text"


def test_options_show_their_defaults():
    edit, serve, export = (subparsers()[c].format_help() for c in ("edit", "serve", "export"))
    flat = {name: " ".join(text.split()) for name, text in (("edit", edit), ("serve", serve), ("export", export))}
    for flag, default in (("--seed", "(default: 0)"), ("--device", "(default: cpu")):
        assert re.search(re.escape(flag) + r" [A-Z]+ .*?" + re.escape(default), flat["edit"]), flag
    for flag, default in (("--port", "(default: 7860"), ("--max-upload-mb", "(default: 25)"), ("--queue", "8)")):
        assert re.search(re.escape(flag) + r" [A-Z]+ .*?" + re.escape(default), flat["serve"]), flag
    assert "-q, --quiet no progress messages" in flat["export"]
    assert "--negative-prompt TEXT what guidance steers away from" in flat["edit"]


# ------------------------------------------------------------------------------------- 3. one spelling of each option
@pytest.mark.parametrize(
    "argv",
    [
        ["export", "M", "-o", "X"],
        ["export", "M", "--output", "X"],
        ["export", "M", "--out", "X"],  # the old spelling, still accepted
        ["export", "M", "--out=X"],
        ["assemble", "--transformer", "t", "--vae", "v", "--llm", "l", "--out", "X"],
        ["assemble", "--transformer", "t", "--vae", "v", "--llm", "l", "-o", "X"],
        ["serve", "-o", "X"],
        ["serve", "--out", "X"],
        ["edit", "in.jpg", "--output", "X"],
    ],
)
def test_output_is_o_or_output_everywhere_and_out_still_works(argv):
    assert parse(argv).output == "X"


def test_out_is_hidden_and_long_options_are_hyphenated():
    for name, parser in subparsers().items():
        text = parser.format_help()
        assert "--out " not in text and "--out," not in text, name
        for action in parser._actions:
            for flag in action.option_strings:
                assert "_" not in flag, f"{name} {flag}"
    assert parse(["serve"]).output == "sanaedit-results"


# -------------------------------------------------------------------------------- 1. train: --key value, hyphens
def test_train_overrides_take_both_forms_and_either_separator():
    given = ["--output_dir", "runs/x", "--train.steps=5", "--output-dir=y", "-o", "z", "--train.lr", "-1e-4"]
    assert normalize_overrides(given) == [
        "--output_dir=runs/x",
        "--train.steps=5",
        "--output_dir=y",
        "--output_dir=z",
        "--train.lr=-1e-4",
    ]
    assert normalize_overrides(["data.skip_bad=true", "--data.pre-encode", "true"]) == [
        "data.skip_bad=true",
        "--data.pre_encode=true",
    ]
    for bad in (["--output_dir"], ["--output_dir", "--train.steps=5"], ["runs/x"]):
        with pytest.raises(ValueError, match="override|unexpected"):
            normalize_overrides(bad)


def test_readme_train_command_reaches_the_trainer(monkeypatch):
    import sanaedit.train.loop

    seen = {}
    monkeypatch.setattr(sanaedit.train.loop, "train", lambda config, overrides, resume: seen.update(
        config=Path(config).name, overrides=overrides, resume=resume) or Path("runs/comic/model"))  # fmt: skip
    assert main(["train", "comic", "--output_dir", "runs/comic"]) == 0
    assert seen == {"config": "comic.yaml", "overrides": ["--output_dir=runs/comic"], "resume": False}
    assert main(["train", "comic", "--output-dir", "runs/comic", "--resume"]) == 0
    assert seen["overrides"] == ["--output_dir=runs/comic"] and seen["resume"] is True


def test_train_override_without_a_value_is_a_one_line_error(capsys):
    assert main(["train", "comic", "--output_dir"]) == 1
    assert "--output_dir=VALUE or --output_dir VALUE" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- 4. checked before the model loads
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--guidance", "-1"], "argument --guidance: must be a number from 1 to 100"),
        (["--guidance", "nan"], "argument --guidance: must be a number from 1 to 100"),
        (["--guidance", "inf"], "argument --guidance: must be a number from 1 to 100"),
        (["--guidance", "lots"], "argument --guidance: expected a number"),
        (["--seed", "-5"], "argument --seed: must be an integer from 0 to"),
        (["--seed", str(2**64)], "argument --seed: must be an integer from 0 to"),
        (["--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
        (["--steps", "2.5"], "argument --steps: expected an integer"),
    ],
)
def test_bad_sampling_values_are_refused_while_parsing(flags, message, no_model_load, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["edit", str(SAMPLE_PHOTO), "-o", str(tmp_path / "o.png"), *flags])
    assert done.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "--port", "70000"], "argument --port: must be an integer from 0 to 65535"),
        (["serve", "--queue", "0"], "argument --queue: must be an integer >= 1"),
        (["serve", "--max-upload-mb", "-3"], "argument --max-upload-mb: must be a number >= 0.01"),
        (["assemble", "--transformer", "t", "--vae", "v", "--llm", "l", "-o", "x", "--seed", "-1"], "argument --seed"),
    ],
)
def test_bad_server_and_assemble_values_are_refused_while_parsing(argv, message, no_model_load, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2 and message in capsys.readouterr().err


def test_bad_outputs_are_refused_before_loading(no_model_load, tmp_path, capsys):
    assert main(["edit", str(SAMPLE_PHOTO), "-o", ""]) == 1
    assert "-o/--output is empty" in capsys.readouterr().err
    assert main(["edit", str(SAMPLE_PHOTO), "-o", "  "]) == 1
    assert main(["edit", str(SAMPLE_PHOTO), "-o", str(tmp_path / "x.xyz")]) == 1
    assert "unknown image extension '.xyz'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [] and not Path("x.xyz").exists()


def test_tiff_output_is_written_as_tiff(tiny_model_dir, tmp_path):
    out = tmp_path / "x.tiff"
    assert main(["edit", str(SAMPLE_PHOTO), "-o", str(out), "--model", str(tiny_model_dir), "--steps", "1", "-q"]) == 0
    assert Image.open(out).format == "TIFF"


# ------------------------------------------------------------------------------------- 5. a device that is not there
def test_a_missing_device_is_one_line_before_loading(no_model_load, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["edit", str(SAMPLE_PHOTO), "-o", str(tmp_path / "o.png")]
    assert main([*args, "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda: no cuda device available" in err and "--device cpu" in err
    assert main([*args, "--device", "gpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device 'gpu'" in err
    assert main(["serve", "--device", "cuda:0"]) == 1
    assert "no cuda device" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- 6. info on any folder
def test_info_without_a_folder_describes_the_bundled_model(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "bundled" in out and str(BUNDLED_MODEL) in out and "transformer" in out
    assert "prompts: its own only" in out  # item 7: said where the model is described


# ----------------------------------------------------------------------------------- 7. prompts the model cannot follow
def test_a_prompt_the_model_cannot_follow_is_warned_about_once(tiny_model_dir, tmp_path, capsys):
    base = ["edit", str(SAMPLE_PHOTO), "-o", str(tmp_path / "o.png"), "--model", str(tiny_model_dir), "--steps", "1"]
    assert main([*base, "-q", "--prompt", "a watercolour"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "--prompt will not do what it says" in err and "32-wide" in err
    assert main([*base, "-q"]) == 0
    assert "warning" not in capsys.readouterr().err
    from sanaedit.pipeline import COMIC_PROMPT

    assert main([*base, "-q", "--prompt", COMIC_PROMPT]) == 0  # the model's own prompt: nothing to warn about
    assert "warning" not in capsys.readouterr().err


def test_prompt_support_comes_from_the_llm_width(tmp_path):
    from safetensors.torch import save_file

    from sanaedit.formats.index import META_QUERIES_FILE, follows_prompts, llm_width

    assert llm_width(BUNDLED_MODEL) == 32 and not follows_prompts(BUNDLED_MODEL)
    save_file({"meta_queries": torch.zeros(256, 1024)}, tmp_path / META_QUERIES_FILE)  # Qwen3-0.6B's width
    assert llm_width(tmp_path) == 1024 and follows_prompts(tmp_path)
    assert follows_prompts(tmp_path / "nowhere")  # unknown: no warning rather than a wrong one


# -------------------------------------------------------------------------- 6 + 9. exported folders: info, permissions
def test_info_reads_an_exported_folder_and_every_file_is_world_readable(tiny_pipe, tmp_path, capsys):
    from sanaedit.export import export_model

    old = os.umask(0o022)
    try:
        model = tiny_pipe.save_pretrained(tmp_path / "model")
        out = export_model(model, tmp_path / "model-onnx", fmt="onnx", quant="llm=4,rest=8", progress=False)
    finally:
        os.umask(old)
    for folder in (model, out):  # safetensors >= 0.8 writes 0600 files; a model folder is shared as 0644
        modes = {p.relative_to(folder).as_posix(): p.stat().st_mode & 0o777 for p in folder.rglob("*")}
        assert {m for p, m in modes.items() if (folder / p).is_file()} == {0o644}, modes
        assert {m for p, m in modes.items() if (folder / p).is_dir()} <= {0o755}, modes
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exported folder" in text and "onnxruntime" in text and "_class_name" not in text
    for name in ("transformer.onnx", "vae_decoder.onnx", "llm/llm.onnx", "4-bit", "8-bit", "embeddings", "prompt"):
        assert name in text, name


# --------------------------------------------------------------------------- README and docs: commands parse as written
def documented_commands():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        in_code = False
        for line in doc.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
                continue
            line = line.split("  #")[0].strip()
            if in_code and line.startswith("sanaedit ") and "[" not in line and "..." not in line:
                yield doc.name, line


@pytest.mark.parametrize("doc, line", list(documented_commands()))
def test_documented_commands_parse(doc, line):
    argv = shlex.split(line)[1:]
    if "--help" in argv or "--version" in argv:
        with pytest.raises(SystemExit) as done:
            parse(argv)
        assert done.value.code == 0
        return
    args = parse(argv)
    if args.command == "train":
        normalize_overrides([o for o in args.overrides if o != "--resume"])


def test_module_entry_point_version():
    done = subprocess.run([sys.executable, "-m", "sanaedit.apps.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"sanaedit {__version__}"
