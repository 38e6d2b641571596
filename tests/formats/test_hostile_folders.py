"""Hostile model folders (issue 11): damaged pieces fail at load in one line, and killed writers leave nothing behind.

Numbered as the issue: 8 raw tracebacks (a corrupt graph file, a damaged export: one-line errors from `edit` and
`info`), 9 temporaries of killed writers (removed by the next writer, a live one's kept; a model folder moved aside
put back), 10 every piece of a model folder checked at load (`info` agrees with `edit`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sanaedit.apps.batch import edit_folder
from sanaedit.apps.cli import main
from sanaedit.errors import ModelFolderError


# -------------------------------------------------------------------------------------------- 8. raw tracebacks
def test_8_a_corrupt_graph_file_is_a_one_line_error(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("MNN")
    from sanaedit.backends.mnn_graph import MnnGraph
    from sanaedit.backends.ort_graph import OrtGraph
    from sanaedit.formats.exported import check_graph_file

    garbage = np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "transformer.onnx").write_bytes(garbage)
    (tmp_path / "transformer.mnn").write_bytes(garbage)
    with pytest.raises(ModelFolderError, match=r"transformer.onnx: not a valid ONNX graph \(.*\); export"):
        OrtGraph(tmp_path / "transformer.onnx", threads=1)
    with pytest.raises(ModelFolderError, match="transformer.mnn: not a valid MNN graph"):
        MnnGraph(tmp_path / "transformer.mnn", ["x"], ["y"], threads=1)
    (tmp_path / "transformer.mnn.weight").write_bytes(b"w" * 10)  # a truncated side file: MNN would run it
    with pytest.raises(ModelFolderError, match="5,010 bytes with its side files, the export wrote 9,000"):
        check_graph_file(tmp_path, {"file": "transformer.mnn", "bytes": 9000})


@pytest.mark.slow  # an ONNX export of the tiny model: ~60 s
def test_8_a_damaged_export_fails_edit_and_info_in_one_line(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from sanaedit.export import export_model
    from sanaedit.load import SAMPLE_PHOTO

    folder = export_model(tiny_model_dir, tmp_path / "onnx", fmt="onnx", progress=False)
    graph = folder / "transformer.onnx"
    good = graph.read_bytes()
    capsys.readouterr()  # the export's own progress output
    for damage, words in ((good[: len(good) // 2], "truncated or changed"), (bytes(len(good)), "not a valid ONNX")):
        graph.write_bytes(damage)
        for args in (["edit", str(SAMPLE_PHOTO), "-o", str(tmp_path / "o.png"), "--model", str(folder)],
                     ["info", str(folder)]):  # fmt: skip
            assert main(args) == 1
            err = capsys.readouterr().err
            assert words in err and err.count("\n") == 1 and "Traceback" not in err, err


# -------------------------------------------------------------------------------- 9. temporaries of killed writers
KILLED_WRITER = """
import os, sys, time
from pathlib import Path
from sanaedit.core.tempfiles import temp_file, temp_folder
fd, tmp = temp_file(Path(sys.argv[1]) / "a.png")
os.write(fd, b"half a png")
folder = temp_folder(Path(sys.argv[1]) / "model-onnx")
print(tmp.name, folder.name, flush=True)
time.sleep(60)
"""


def test_9_what_a_killed_writer_leaves_is_removed_by_the_next_but_a_live_ones_is_not(tmp_path, tiny_pipe):
    out = tmp_path / "out"
    out.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(out)], stdout=subprocess.PIPE, text=True
    )  # a live writer: its files stay
    names = writer.stdout.readline().split()
    from sanaedit.core.atomic import atomic_folder
    from sanaedit.image.io import remove_stale_temps

    assert remove_stale_temps(out) == [] and sorted(p.name for p in out.iterdir()) == sorted(names)
    writer.kill()  # kill -9
    writer.wait(30)
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (8, 8)).save(src / "a.png")
    summary = edit_folder(lambda im: im, src, out, progress=False)  # a batch into the same folder cleans up
    assert summary.done and (out / "a.png").is_file()
    assert names[0] not in {p.name for p in out.iterdir()}
    with atomic_folder(out / "model-onnx") as tmp:  # so does the next export / save of that folder
        (tmp / "x").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "model-onnx"]


def test_9_a_model_folder_moved_aside_by_a_killed_writer_is_put_back(tmp_path):
    from sanaedit.core.atomic import atomic_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".model.old-{pid}").mkdir()  # killed between moving the old folder aside and the new one in
    (tmp_path / f".model.old-{pid}" / "weights").write_text("the previous model")
    with atomic_folder(tmp_path / "other"):
        pass
    with atomic_folder(tmp_path / "model") as tmp:  # its next writer finds it first
        assert (tmp_path / "model" / "weights").read_text() == "the previous model"
        (tmp / "weights").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "other"]


# ---------------------------------------------------------------------------- 10. every piece checked at load time
def broken_copy(tiny_model_dir, tmp_path, name, damage) -> Path:
    folder = tmp_path / name
    shutil.copytree(tiny_model_dir, folder)
    damage(folder)
    return folder


def corrupt(path: Path):
    path.write_bytes(b"\x00garbage" * 10)


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def no_weights(component: str, file: str = "diffusion_pytorch_model.safetensors"):
    """A component folder without its weights file (each loader would otherwise look for a .bin, or not at all)."""
    message = f"{component}: cannot load {component}: no weights file (expected {file}"
    return lambda f: (f / component / file).unlink(), message


def reshaped_connector(folder: Path):
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "connector" / "diffusion_pytorch_model.safetensors"
    save_file({k: torch.zeros(*(d + 1 for d in v.shape)) for k, v in load_file(path).items()}, path)


def wrong_queries(folder: Path):
    import torch
    from safetensors.torch import save_file

    save_file({"meta_queries": torch.zeros(8, 5)}, folder / "meta_queries.safetensors")


def unfit_projector(folder: Path):
    from sanaedit.models.projector import Projector

    Projector(in_features=32, out_features=17).save_pretrained(folder / "projector")


BROKEN = {  # what `edit` refuses, and so must `info`; the prompt cache stays (the LLM is never needed to edit)
    "index not JSON": (lambda f: (f / "model_index.json").write_text("{"), "not valid JSON"),
    "no vae": (lambda f: shutil.rmtree(f / "vae"), "missing component"),
    "corrupt transformer": (lambda f: corrupt(f / "transformer/diffusion_pytorch_model.safetensors"), "transformer"),
    "truncated vae": (lambda f: truncate(f / "vae/diffusion_pytorch_model.safetensors"), "vae"),
    "corrupt connector": (lambda f: corrupt(f / "connector/diffusion_pytorch_model.safetensors"), "connector"),
    "connector shapes": (reshaped_connector, "connector"),
    "0-byte meta_queries": (lambda f: (f / "meta_queries.safetensors").write_bytes(b""), "0 bytes"),
    "meta_queries width": (wrong_queries, "does not match the LLM width"),
    "projector unfit": (unfit_projector, "projector out_features 17 != transformer caption_channels 24"),
    "truncated llm": (lambda f: truncate(f / "llm/model.safetensors"), "llm"),
    "no tokenizer": (
        lambda f: [(f / "llm" / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
        "token",
    ),
    "corrupt prompt cache": (lambda f: corrupt(f / "prompt_cache.safetensors"), "prompt cache"),
    **{f"no {c} weights": no_weights(c) for c in ("transformer", "vae", "connector", "projector")},
    "no llm weights": no_weights("llm", "model.safetensors"),
    "transformer config []": (  # valid JSON, not an object: diffusers took it for a hub name
        lambda f: (f / "transformer/config.json").write_text("[]"),
        "transformer: cannot load transformer: config.json is not a JSON object",
    ),
    "connector config []": (
        lambda f: (f / "connector/config.json").write_text("[]"),
        "connector: cannot load connector: config.json is not a JSON object",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_10_a_broken_piece_fails_at_load_and_info_agrees(tiny_model_dir, tmp_path, case, capfd):
    from sanaedit.pipeline import SanaEditPipeline

    damage, words = BROKEN[case]
    folder = broken_copy(tiny_model_dir, tmp_path, "m", damage)
    with pytest.raises(ModelFolderError, match=re.escape(words)):
        SanaEditPipeline.from_pretrained(folder)  # at load, not when a --prompt first needs the text path
    capfd.readouterr()
    photo, out = tmp_path / "in.png", tmp_path / "out.png"
    Image.new("RGB", (32, 24)).save(photo)
    for command in (["info", str(folder)], ["edit", str(photo), "-o", str(out), "--model", str(folder)]):
        assert main(command) == 1, command
        err = capfd.readouterr().err  # the file descriptor's: library loggers write there too
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, (command, err)
    assert not out.exists()
