"""Library noise (issue 13, item 8): library code logs and never prints; `sanaedit -v / -q` (before or after the
command) sets how much reaches stderr; diffusers / transformers warnings and their loading / writing bars only
with -v."""

import ast
import logging
from pathlib import Path

import pytest

import sanaedit.core.log
from sanaedit.apps.cli import build_parser, main, normalize_argv, verbosity

PACKAGE = Path(__file__).resolve().parents[2] / "sanaedit"
LIBRARY_BARS = ("Loading weights", "Writing model shards")


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield node


def test_no_module_outside_the_cli_prints():
    """Progress and warnings go through `logging.getLogger(__name__)`; only the CLI writes a command's output."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[:2] == ("apps", "cli"):
            continue
        for call in _calls(path):
            func = call.func
            printed = isinstance(func, ast.Name) and func.id == "print"
            # sys.stderr.write(...): a print by another name
            to_stderr = (
                isinstance(func, ast.Attribute) and func.attr == "write" and ast.unparse(func.value) == "sys.stderr"
            )
            if printed or to_stderr:
                offenders.append(f"{path.relative_to(PACKAGE)}:{call.lineno}")
    assert not offenders, f"log instead (logger = logging.getLogger(__name__)): {offenders}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["edit", "a.jpg", "-o", "b.png"], 0),
        (["-v", "edit", "a.jpg", "-o", "b.png"], 1),
        (["edit", "a.jpg", "-o", "b.png", "-v"], 1),
        (["edit", "a.jpg", "--verbose", "-o", "b.png"], 1),
        (["-q", "export", "M", "-o", "X"], -1),
        (["export", "M", "-o", "X", "--quiet"], -1),
        (["-v", "info", "-q"], 0),  # they cancel
        (["train", "comic", "--output-dir", "x", "-q"], -1),  # not a config override
        (["-qq", "serve"], -1),
    ],
)
def test_verbosity_flags_are_global(argv, expected):
    args = build_parser().parse_args(normalize_argv(argv))
    assert verbosity(args) == expected


def test_verbosity_flags_leave_the_rest_of_the_line_alone():
    assert normalize_argv(["train", "comic", "-q", "--output-dir", "x"]) == [
        "-q",
        "train",
        "comic",
        "--output-dir",
        "x",
    ]
    assert normalize_argv(["-v", "export", "M", "--out", "X"]) == ["-v", "export", "M", "--output", "X"]
    assert normalize_argv(["edit", "a.jpg", "-o", "b.png", "--", "-v"]) == ["edit", "a.jpg", "-o", "b.png", "--", "-v"]
    for name in ("edit", "export", "train", "serve"):  # and each command's --help lists them
        text = build_parser()._subparsers._group_actions[0].choices[name].format_help()
        assert "-v, --verbose" in text and "-q, --quiet" in text, name


def test_train_quiet_turns_the_progress_bars_off(monkeypatch):
    import sanaedit.train.loop

    seen = {}
    monkeypatch.setattr(sanaedit.train.loop, "train", lambda config, overrides, resume: seen.update(
        overrides=overrides) or Path("runs/x/model"))  # fmt: skip
    assert main(["train", "comic", "-q", "--output-dir", "runs/x"]) == 0
    assert seen["overrides"] == ["--log.progress=false", "--output_dir=runs/x"]
    assert main(["train", "comic", "--output-dir", "runs/x"]) == 0
    assert seen["overrides"] == ["--output_dir=runs/x"]


@pytest.fixture(scope="module")
def published_parts(tiny_pipe, tmp_path_factory):
    """A diffusers T2I transformer, a DC-AE and an HF LLM folder: what `sanaedit assemble` reads."""
    from diffusers import SanaTransformer2DModel

    root = tmp_path_factory.mktemp("parts")
    cfg = {k: v for k, v in tiny_pipe.transformer.config.items() if not k.startswith("_")}
    cfg.update(in_channels=4, out_channels=4)
    SanaTransformer2DModel(**cfg).save_pretrained(root / "sana")
    tiny_pipe.vae.save_pretrained(root / "dcae")
    tiny_pipe.text_encoder.llm.save_pretrained(root / "qwen")
    tiny_pipe.text_encoder.tokenizer.save_pretrained(root / "qwen")
    return ["--transformer", str(root / "sana"), "--vae", str(root / "dcae"), "--llm", str(root / "qwen")]


def _assemble(parts, out: Path, *flags: str) -> int:
    return main(["assemble", *parts, "-o", str(out), "--variant", "tiny", *flags])


def test_assemble_hides_the_libraries_bars_by_default_and_shows_them_with_v(published_parts, tmp_path, capsys):
    """assemble loads an LLM ("Loading weights") and writes one ("Writing model shards")."""
    assert _assemble(published_parts, tmp_path / "a") == 0
    out, err = capsys.readouterr()
    assert not [bar for bar in LIBRARY_BARS if bar in err], err
    assert out.startswith(f"wrote {tmp_path / 'a'}")  # the result, on stdout

    assert _assemble(published_parts, tmp_path / "b", "-v") == 0
    err = capsys.readouterr().err
    assert all(bar in err for bar in LIBRARY_BARS), err

    assert main(["-q", "assemble", *published_parts, "-o", str(tmp_path / "c"), "--variant", "tiny"]) == 0
    assert capsys.readouterr() == ("", "")  # quiet: nothing at all for a successful run
    assert (tmp_path / "c" / "model_index.json").is_file()


def test_edit_shows_sanaedits_messages_by_default_and_nothing_with_q(tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    photo = tmp_path / "p.png"
    Image.new("RGB", (24, 16), "red").save(photo)
    base = ["edit", str(photo), "-o", str(tmp_path / "o.png"), "--model", str(tiny_model_dir), "--steps", "1"]
    assert main([*base, "--prompt", "something new"]) == 0  # a new prompt: the LLM is loaded
    out, err = capsys.readouterr()
    assert "Loading weights" not in err and "denoising" in err and err.count("warning:") == 1
    assert out.startswith("wrote ")
    assert main([*base, "--prompt", "something else", "-v"]) == 0
    assert "Loading weights" in capsys.readouterr().err
    assert main([*base, "-q"]) == 0
    assert capsys.readouterr() == ("", "")


def test_library_messages_are_plain_lines_and_warnings_say_so(capsys):
    sanaedit.core.log.configure(0)
    log = logging.getLogger("sanaedit.some.module")
    log.debug("hidden")
    log.info("[1/7] connector: exporting ...")
    log.warning("careful")
    assert capsys.readouterr().err == "[1/7] connector: exporting ...\nwarning: careful\n"
    sanaedit.core.log.configure(1)
    log.debug("shown")
    sanaedit.core.log.configure(-1)
    log.info("hidden")
    assert capsys.readouterr().err == "shown\n"
    ours = [h for h in logging.getLogger("sanaedit").handlers if type(h).__module__ == "sanaedit.core.log"]
    assert len(ours) == 1  # configured three times, one handler


def test_without_configure_the_libraries_settings_are_left_alone(monkeypatch):
    """A Python API user's own logging setup decides: nothing is silenced behind their back."""
    import transformers.utils.logging as tf_logging

    monkeypatch.setattr(sanaedit.core.log, "_verbosity", None)
    tf_logging.enable_progress_bar()
    sanaedit.core.log.quiet_libraries()
    assert tf_logging.is_progress_bar_enabled()
    monkeypatch.setattr(sanaedit.core.log, "_verbosity", 0)
    sanaedit.core.log.quiet_libraries()
    assert not tf_logging.is_progress_bar_enabled()


@pytest.mark.parametrize("verbosity, level", [(-1, "error"), (0, "warning"), (1, "info")])
def test_the_servers_log_follows_the_verbosity_and_q_silences_python_warnings(monkeypatch, verbosity, level):
    import warnings

    from sanaedit.apps.serve import server

    seen = {}
    monkeypatch.setattr(server.DrainingServer, "run", lambda self: seen.setdefault("level", self.config.log_level))
    sanaedit.core.log.configure(verbosity)
    app = type("App", (), {"state": type("State", (), {"jobs": None})()})()
    server.serve(app, host="127.0.0.1", port=1)
    assert seen["level"] == level  # uvicorn's access log only with -v
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("noise from a library", UserWarning, stacklevel=1)
    assert bool(caught) == (verbosity > -1)
