"""The shape the code promises (issue 9): small modules, one loader for every folder kind, and an exported folder that
runs without diffusers / transformers / accelerate (the import graph itself: test_import_graph.py)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sanaedit.core.flow import FlowModel
from sanaedit.formats.index import EXPORT_CLASS, MODEL_CLASS, folder_kind
from sanaedit.load import load_pipeline
from sanaedit.pipeline import SanaEditPipeline

PACKAGE = Path(__file__).resolve().parent.parent / "sanaedit"
MAX_MODULE_LINES = 400


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the sanaedit modules a file imports (relative imports resolved)."""
    package = ["sanaedit", *path.relative_to(PACKAGE).with_suffix("").parts][:-1]  # the file's own package
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {n for n in names if n.startswith("sanaedit")}


@pytest.mark.parametrize(("package", "forbidden"), [("export", "sanaedit.runtime"), ("runtime", "sanaedit.export")])
def test_export_and_runtime_do_not_import_each_other(package, forbidden):
    for path in sorted((PACKAGE / package).glob("*.py")):
        bad = sorted(n for n in _imported_modules(path) if n == forbidden or n.startswith(forbidden + "."))
        assert not bad, f"{path.name} imports {bad}: go through sanaedit.formats.index / sanaedit.backends"


def test_no_module_over_the_size_limit():
    sizes = {p: len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    big = {str(p.relative_to(PACKAGE)): n for p, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not big, f"split by concern: {big}"


def test_both_folder_kinds_load_through_one_load_pipeline_with_the_same_defaults(tiny_model_dir, tmp_path):
    from sanaedit.export import export_model

    exported = export_model(tiny_model_dir, tmp_path / "onnx", fmt="onnx", quant=None, progress=False)
    assert folder_kind(tiny_model_dir) == MODEL_CLASS and folder_kind(exported) == EXPORT_CLASS
    torch.set_num_threads(1)
    try:
        pipes = {"torch": load_pipeline(tiny_model_dir, threads=2), "onnx": load_pipeline(exported, threads=2)}
        assert torch.get_num_threads() == 2  # the thread default applies to both kinds
    finally:
        torch.set_num_threads(2)
    for name, pipe in pipes.items():
        assert type(pipe) is SanaEditPipeline and isinstance(pipe.flow, FlowModel), name
        assert pipe.keep_text_encoder is False, name  # the LLM is freed once a new prompt's features exist
        assert pipe.config == pipes["torch"].config, name
    assert pipes["torch"].backend == "torch" and pipes["onnx"].backend == "onnxruntime"
    # from_pretrained picks the reader by the folder's kind too
    assert SanaEditPipeline.from_pretrained(exported).backend == "onnxruntime"
    # an exported pipeline saves as a copy of its folder (it is already the deployable form)
    copy = pipes["onnx"].save_pretrained(tmp_path / "copy")
    assert json.loads((copy / "model_index.json").read_text())["_class_name"] == EXPORT_CLASS
    assert load_pipeline(copy).backend == "onnxruntime"


@pytest.mark.slow
def test_an_exported_folder_runs_without_diffusers_transformers_or_accelerate(tiny_model_dir, tmp_path):
    from sanaedit.export import export_model

    exported = export_model(tiny_model_dir, tmp_path / "onnx", fmt="onnx", quant=None, progress=False)
    script = f"""
import sys
from PIL import Image
from sanaedit.load import load_pipeline
pipe = load_pipeline({str(exported)!r})
out = pipe(Image.new("RGB", (40, 24), "red"), num_inference_steps=2).images[0]
assert out.size == (40, 24)
heavy = sorted(m for m in ("diffusers", "transformers", "accelerate") if m in sys.modules)
print("HEAVY", heavy)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout
