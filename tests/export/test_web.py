"""`sanaedit export --format web`: the static folder (the page, the graphs an edit runs, the prompt cache, the
vendored runtime) and its config.json, whose numbers must be the Python's own (the page computes none of them)."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from sanaedit.apps.cli import main
from sanaedit.core.flow import TIMESTEP_SCALE
from sanaedit.core.sampling import flow_sigmas
from sanaedit.errors import ModelFolderError
from sanaedit.export.web import (
    CSP,
    MAX_STEPS,
    RUNTIME,
    RUNTIME_FILES,
    RUNTIME_VERSION,
    check_in_browser_runtime,
    export_web,
    web_files,
)
from sanaedit.formats.prompt_cache import load_prompt_cache
from sanaedit.image.io import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS
from sanaedit.image.upsample import EPS, RADIUS, REFINE_MAX_PIXELS
from sanaedit.load import ASSETS, BUNDLED_EXPORT
from sanaedit.models.refine_tiles import TILE
from tests.conftest import restyled_export

NODE = shutil.which("node")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("web") / "site"
    assert main(["export", "--format", "web", "-o", str(out), "-q"]) == 0  # no MODEL: the bundled one
    return out


def test_the_folder_holds_the_page_the_graphs_an_edit_runs_and_the_runtime(site):
    names = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    graphs = {"graphs/transformer.onnx", "graphs/vae_encoder.onnx", "graphs/vae_decoder.onnx", "graphs/refiner.onnx"}
    assert graphs <= names and {"index.html", "app.mjs", "worker.mjs", "config.json", "conditioning.bin"} <= names
    assert {f"ort/{name}" for name in RUNTIME_FILES} <= names
    assert not any("llm" in n or "connector" in n or "projector" in n for n in names)  # no LLM in the browser
    html = (site / "index.html").read_text()
    assert f'content="{CSP}"' in html and "__CSP__" not in html  # this folder only, no CDN
    for name in graphs:
        assert (site / name).read_bytes() == (BUNDLED_EXPORT / name.removeprefix("graphs/")).read_bytes()


def test_the_prompt_cache_is_the_exports_as_float32(site):
    config = json.loads((site / "config.json").read_text())
    blob = (site / "conditioning.bin").read_bytes()
    cache = load_prompt_cache(BUNDLED_EXPORT, framework="np")
    assert set(config["conditioning"]["entries"]) == {
        config["pipeline"]["prompt"],
        config["pipeline"]["negative_prompt"],
    }
    for prompt, entry in config["conditioning"]["entries"].items():
        for key, array in zip(("hidden", "mask"), cache[prompt]):
            place = entry[key]
            got = np.frombuffer(blob, "<f4", int(np.prod(place["shape"])), place["offset"]).reshape(place["shape"])
            np.testing.assert_array_equal(got, np.asarray(array, np.float32))


@pytest.mark.parametrize(
    "pipeline",
    [
        {},
        {"schedule": "published", "shift": 2.5},
        {"sampler": "dpm", "schedule": "linear"},
        {"sampler": "scm", "schedule": "scm"},
    ],
)
def test_config_numbers_are_the_pythons(tmp_path, pipeline):
    config = json.loads(web_files(restyled_export(tmp_path, **pipeline))["config.json"])
    settings = config["pipeline"]
    shift, schedule = pipeline.get("shift", 3.0), pipeline.get("schedule", "default")
    assert (settings["shift"], settings["schedule"], settings["sampler"]) == (
        shift,
        schedule,
        pipeline.get("sampler", "euler"),
    )
    assert sorted(map(int, config["sigmas"])) == list(range(1, MAX_STEPS + 1))
    for steps, sigmas in config["sigmas"].items():
        assert (
            sigmas == flow_sigmas(int(steps), shift, schedule).tolist()
        )  # the same float64 values, as JSON keeps them
    assert config["timestep_scale"] == TIMESTEP_SCALE
    assert config["upsample"] == {"radius": RADIUS, "eps": EPS, "refine_max_pixels": REFINE_MAX_PIXELS, "tile": TILE}
    assert config["limits"] == {
        "max_steps": MAX_STEPS,
        "max_pixels": DEFAULT_MAX_PIXELS,
        "max_aspect": DEFAULT_MAX_ASPECT,
    }
    assert (settings["resolution"], config["latent"]) == (256, {"channels": 32, "size": 32})
    assert config["runtime"]["version"] == RUNTIME_VERSION


def test_the_page_and_the_runtime_ship_in_the_package():
    import tomllib

    from sanaedit.export.web import WEB

    patterns = tomllib.loads((WEB.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p for pattern in patterns["sanaedit"] for p in WEB.parent.glob(pattern)}
    assert {p for p in WEB.rglob("*") if p.is_file()} <= shipped


def test_the_vendored_runtime_says_where_it_came_from():
    readme = (RUNTIME / "README.md").read_text()
    assert f"onnxruntime-web {RUNTIME_VERSION}" in readme and "registry.npmjs.org" in readme
    assert "MIT License" in (RUNTIME / "LICENSE").read_text()
    for name in RUNTIME_FILES[:3]:
        assert hashlib.sha256((RUNTIME / name).read_bytes()).hexdigest() in readme, name


def test_what_the_browser_cannot_run_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(ModelFolderError, match="lacks the model's own prompt"):
        web_files(restyled_export(tmp_path, prompt="a prompt nobody cached"))
    mnn = restyled_export(tmp_path / "mnn")
    index = json.loads((mnn / "model_index.json").read_text())
    (mnn / "model_index.json").write_text(json.dumps({**index, "format": "mnn", "backend": "mnn"}))
    with pytest.raises(ModelFolderError, match="holds mnn graphs; the browser runs ONNX"):
        web_files(mnn)
    for extra, why in ((["--quant", "none"], "already quantized"), (["--lora", str(ASSETS / "ghibli-lora")], "fixed")):
        assert main(["export", str(BUNDLED_EXPORT), "--format", "web", "-o", str(tmp_path / "o"), *extra]) == 1
        assert why in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed (the page tests in Chromium run every graph)")
def test_a_graph_onnxruntime_web_cannot_load_is_refused_before_anything_is_written(tmp_path, site):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # ConvInteger with int8 weights (what a dynamically quantised conv gives): no kernel in onnxruntime-web
    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["latents", "w"], ["pixels"])], "g",
        [helper.make_tensor_value_info("latents", TensorProto.UINT8, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("pixels", TensorProto.INT32, [1, 1, 2, 2])], [weight],
    )  # fmt: skip
    folder = restyled_export(tmp_path)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "vae_decoder.onnx")
    index = json.loads((folder / "model_index.json").read_text())
    index["graphs"]["vae_decoder"]["bytes"] = (folder / "vae_decoder.onnx").stat().st_size
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="graph vae_decoder does not load in onnxruntime-web"):
        export_web(folder, tmp_path / "site", progress=False)
    assert not (tmp_path / "site").exists()
    assert check_in_browser_runtime(site).startswith("Node v")  # the bundled model's graphs all load
