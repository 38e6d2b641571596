"""The base install runs without PyTorch: every check runs the real CLI (or API) in a fresh interpreter where the
[torch] extra's packages cannot be imported (`sys.modules[name] = None` is how Python itself marks a module as
absent: `import` fails and `importlib.util.find_spec` answers None, as on an install without them). Answers that
need no model at all (help, version, argument errors, missing files) must not import any heavy package, even where
they are installed. CI also edits in a real base-only venv (.ci/run)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sanaedit.core.extras import EXTRA_OF
from sanaedit.load import BUNDLED_EXPORT, BUNDLED_MODEL, SAMPLE_PHOTO

TORCH_EXTRA = sorted(module for module, extra in EXTRA_OF.items() if extra == "torch")
HEAVY = [*TORCH_EXTRA, "onnxruntime", "MNN", "onnx", "cv2", "skimage", "fastapi", "uvicorn", "tokenizers"]

RUNNER = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None  # absent, as on an install without it
code, report = 0, sys.argv[1]
try:
{body}
except SystemExit as done:
    code = done.code if isinstance(done.code, int) else 1
finally:
    loaded = sorted({{m.split(".")[0] for m, mod in list(sys.modules.items()) if mod is not None}})
    with open(report, "w") as f:
        json.dump({{"code": code, "loaded": loaded}}, f)
"""


def run(tmp_path, body: str, blocked=TORCH_EXTRA) -> tuple[int, str, set[str]]:
    """Run `body` (Python, indented by 4) in a fresh interpreter: (exit code, stderr, top-level modules loaded)."""
    report = tmp_path / "report.json"
    script = RUNNER.format(blocked=list(blocked), body=body)
    done = subprocess.run([sys.executable, "-c", script, str(report)], capture_output=True, text=True, timeout=300)
    result = json.loads(report.read_text())
    return result["code"], done.stderr, set(result["loaded"])


def cli(tmp_path, *argv: str, blocked=TORCH_EXTRA) -> tuple[int, str, set[str]]:
    return run(tmp_path, f"    from sanaedit.apps.cli import main\n    code = main({list(argv)!r})", blocked)


def test_the_bundled_edit_runs_without_torch(tmp_path):
    out = tmp_path / "comic.png"
    code, err, loaded = cli(tmp_path, "edit", str(SAMPLE_PHOTO), "-o", str(out), "--seed", "0", "-q")
    assert code == 0, err
    assert Image.open(out).size == Image.open(SAMPLE_PHOTO).size
    assert not loaded & set(TORCH_EXTRA)
    assert "onnxruntime" in loaded  # the export ran


def test_a_new_prompt_runs_through_the_exported_llm_without_torch(tmp_path):
    """A prompt outside the prompt cache: the export's tokenizer (read by `tokenizers`) and its LLM graph."""
    out = tmp_path / "cat.png"
    code, err, loaded = cli(tmp_path, "edit", str(SAMPLE_PHOTO), "-o", str(out), "--prompt", "a cat, in ink", "-q")
    assert code == 0, err
    assert out.is_file() and "tokenizers" in loaded and not loaded & set(TORCH_EXTRA)


def test_info_api_and_batch_run_without_torch(tmp_path):
    code, err, loaded = cli(tmp_path, "info")
    assert code == 0, err
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(SAMPLE_PHOTO).resize((96, 64)).save(photos / "a.png")
    code, err, _ = cli(tmp_path, "edit", str(photos), "-o", str(tmp_path / "comics"), "-q", "--steps", "2")
    assert code == 0, err
    assert (tmp_path / "comics" / "a.png").is_file()
    body = f"""    from PIL import Image
    from sanaedit import SanaEditPipeline, load_pipeline
    pipe = SanaEditPipeline.from_pretrained({str(BUNDLED_EXPORT)!r})
    assert pipe(Image.open({str(SAMPLE_PHOTO)!r}), num_inference_steps=2).images[0].size == (451, 300)
    assert load_pipeline().model_dir.name == {BUNDLED_EXPORT.name!r}"""
    code, err, loaded = run(tmp_path, body)
    assert code == 0, err
    assert not loaded & set(TORCH_EXTRA)


def test_a_masked_partial_edit_runs_on_the_bundled_export_without_torch(tmp_path):
    """--mask and --strength on the shipped ONNX export, torch absent: the photo's own pixels outside the mask."""
    photo = Image.open(SAMPLE_PHOTO).convert("RGB")
    mask = Image.new("L", (photo.width // 2, photo.height // 2), 0)  # half size: resized to the photo
    mask.paste(255, (0, 0, mask.width // 3, mask.height))
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "masked.png"
    argv = ["edit", str(SAMPLE_PHOTO), "-o", str(out), "--mask", str(tmp_path / "mask.png"), "--strength", "0.6", "-q"]
    code, err, loaded = cli(tmp_path, *argv)
    assert code == 0, err
    assert not loaded & set(TORCH_EXTRA) and "onnxruntime" in loaded
    got, want = np.asarray(Image.open(out).convert("RGB")).astype(int), np.asarray(photo).astype(int)
    edge = 2 * mask.width // 3  # the mask's edge in the photo's pixels; the feather reaches ~9 px past it here
    assert np.array_equal(got[:, edge + 40 :], want[:, edge + 40 :])
    assert np.abs(got[:, : edge - 40] - want[:, : edge - 40]).mean() > 3  # the comic filter ran on the masked part


@pytest.mark.parametrize(
    "argv",
    [
        ["--backend", "torch"],
        ["--lora", str(BUNDLED_MODEL.parent / "ghibli-lora")],
        ["--model", str(BUNDLED_MODEL)],
        ["--dtype", "int8"],
    ],
)
def test_what_needs_torch_says_which_extra_in_one_line(tmp_path, argv):
    code, err, _ = cli(tmp_path, "edit", str(SAMPLE_PHOTO), "-o", str(tmp_path / "x.png"), *argv)
    assert code == 1
    assert err.strip().splitlines() == [err.strip()], err  # one line
    assert "pip install 'sanaedit[torch]'" in err and "PyTorch model folder" in err
    assert not (tmp_path / "x.png").exists()


def test_an_export_without_its_extra_is_refused_before_any_conversion(tmp_path):
    code, err, _ = cli(tmp_path, "export", str(BUNDLED_MODEL), "-o", str(tmp_path / "out"), blocked=["onnx"])
    assert code == 1 and err.strip().splitlines() == [
        "sanaedit export: error: sanaedit export --format onnx needs onnx, which is not installed: "
        "pip install 'sanaedit[export]'"
    ]
    assert not (tmp_path / "out").exists()


def test_a_missing_extra_deeper_down_is_named_too(tmp_path):
    """An import of an extra's package that no early check caught still ends in one line naming the extra."""
    body = """    from sanaedit.apps.cli import main
    import sanaedit.apps.cli.info as info
    def deep(args):
        import cv2
    info.run = deep
    code = main(["info"])"""
    code, err, _ = run(tmp_path, body, blocked=["cv2"])
    assert code == 1 and err.strip().splitlines() == [
        "sanaedit info: error: this needs cv2, which is not installed: pip install 'sanaedit[control]'"
    ]


def test_edges_without_opencv_say_which_extra_before_the_model_loads(tmp_path):
    code, err, loaded = cli(tmp_path, "edit", str(SAMPLE_PHOTO), "-o", str(tmp_path / "x.png"), "--control-image",
                            "edges", blocked=[*TORCH_EXTRA, "cv2"])  # fmt: skip
    assert code == 1 and err.strip().splitlines() == [
        "sanaedit edit: error: --control-image edges needs cv2, which is not installed: pip install 'sanaedit[control]'"
    ]
    assert "onnxruntime" not in loaded and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--help"],
        ["edit", "--help"],
        ["serve", "--help"],
        ["edit", "photo.jpg", "--steps", "0"],
        ["edit", "photo.jpg", "--guidance", "nan"],
        ["edit", "no-such-photo.jpg", "-o", "out.png"],
        ["edit", str(SAMPLE_PHOTO), "-o", "out.png", "--model", "no-such-model"],
        ["edit", str(SAMPLE_PHOTO), "-o", "out.png", "--lora", "no-such-lora"],
        ["edit", str(SAMPLE_PHOTO), "-o", "out.png", "--sampler", "nope"],
        ["edit", str(SAMPLE_PHOTO), "-o", "out.png", "--control-image", "no-such-control.png"],
        ["edit", str(SAMPLE_PHOTO), "-o", "out.png", "--strength", "0"],
        ["edit", str(SAMPLE_PHOTO), "-o", "out.png", "--mask", "no-such-mask.png"],
        ["info", "no-such-model"],
        ["export", "no-such-model", "-o", "out"],
        ["export", str(BUNDLED_MODEL), "-o", "out", "--quant", "llm=3"],
        ["serve", "--port", "99999"],
        ["train", "--help"],
        ["grow", "no-such-model", "-o", "out", "--layers", "12"],
        ["prune", "no-such-model", "-o", "out"],
    ],
)
def test_answers_that_need_no_model_import_nothing_heavy(tmp_path, argv):
    """Even where every package is installed (nothing blocked), these answer before any heavy import."""
    code, err, loaded = cli(tmp_path, *argv, blocked=[])
    assert code in (0, 1, 2)
    if code:
        assert err.strip().splitlines()[-1].startswith("sanaedit "), err  # (argparse's usage may come first)
    assert not loaded & set(HEAVY), f"{argv} imported {sorted(loaded & set(HEAVY))}"


def test_the_bundled_export_gives_the_pytorch_folders_picture(tmp_path):
    """What the base install runs (the shipped ONNX export, int8 DiT) against `--backend torch` (the PyTorch
    folder, float32 here): the same picture but for int8 rounding (49.6 dB when measured; 30 dB is the bar)."""
    from sanaedit.apps.cli import main
    from sanaedit.train.evaluate import psnr

    pictures = {}
    for backend in ("onnxruntime", "torch"):
        pictures[backend] = tmp_path / f"{backend}.png"
        argv = ["edit", str(SAMPLE_PHOTO), "-o", str(pictures[backend]), "--seed", "0", "-q", "--backend", backend]
        assert main(argv + (["--dtype", "float32"] if backend == "torch" else [])) == 0
    export, torch = (np.asarray(Image.open(pictures[b]).convert("RGB")) for b in ("onnxruntime", "torch"))
    assert psnr(export, torch) >= 30


def test_serve_runs_the_bundled_model_without_torch(tmp_path):
    """`sanaedit serve` on the base install + [serve]: ready, and an uploaded photo edited, with torch absent."""
    from tests.conftest import free_port

    body = f"""    import json, threading, time, urllib.request
    from sanaedit.apps.cli import main
    url = "http://127.0.0.1:{free_port()}"
    argv = ["serve", "--port", url.rsplit(":", 1)[1], "-o", {str(tmp_path / "results")!r}, "-q"]
    threading.Thread(target=main, args=(argv,), daemon=True).start()
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/api/health", timeout=1).read()
            break
        except OSError:
            assert time.time() < deadline, "serve never answered"
            time.sleep(0.05)
    photo = open({str(SAMPLE_PHOTO)!r}, "rb").read()
    job = json.load(urllib.request.urlopen(urllib.request.Request(url + "/api/jobs?steps=2", data=photo)))
    while job["state"] not in ("done", "failed"):
        time.sleep(0.1)
        job = json.load(urllib.request.urlopen(url + "/api/jobs/" + job["id"]))
    assert job["state"] == "done", job"""
    code, err, loaded = run(tmp_path, body)
    assert code == 0, err
    assert "uvicorn" in loaded and not loaded & set(TORCH_EXTRA)
