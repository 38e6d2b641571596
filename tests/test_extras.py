"""Each install extra carries what its commands need: every module a command can reach (all of the package's imports
followed, those inside functions too) imports only the base dependencies and that command's extra, as pyproject.toml
lists them, or imports behind `except ImportError` (optional). Read from the source with `ast`; nothing is imported.
So `pip install sanaedit[export]` exports without the training extra's OpenCV, and `[serve]` serves without it."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

from tests.test_import_graph import imports, modules

ROOT = Path(__file__).resolve().parents[1]
# distribution name -> the top-level modules it installs (where they differ from the name)
PROVIDES = {
    "pillow": {"PIL"},
    "pyyaml": {"yaml"},
    "scikit-image": {"skimage"},
    "opencv-python-headless": {"cv2"},
    "came-pytorch": {"came_pytorch"},
    "mnn": {"MNN", "_tools"},  # _tools: the converter extension the mnn wheel ships (export/mnn_convert.py)
    "llmexport": {"llmexport", "utils"},  # utils: llmexport's own package, found through its folder (llm_mnn.py)
    "fastapi": {"fastapi", "starlette", "pydantic"},  # what fastapi is built on, installed with it
    "uvicorn": {"uvicorn", "h11"},  # h11: uvicorn's HTTP/1.1 parser, installed with it
    "python-multipart": {"python_multipart"},
}
# a command -> (modules it starts from, extras it is installed with). Everything a command can reach, PyTorch
# folders included: that the base install runs exports without [torch] is checked by running it
# (tests/apps/test_torch_free.py).
COMMANDS = {
    "edit": (["sanaedit.apps.cli.edit", "sanaedit.apps.batch"], ["torch"]),
    "export": (["sanaedit.apps.cli.export", "sanaedit.export"], ["export"]),
    "serve": (["sanaedit.apps.cli.serve", "sanaedit.apps.serve"], ["serve", "torch"]),
    "info": (["sanaedit.apps.cli.info"], ["torch"]),
}


def requirement_names(specs: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!\[;]", spec, maxsplit=1)[0].lower() for spec in specs}


def extra_requirements(extra: str) -> list[str]:
    """An extra's requirements, the extras it names (`sanaedit[torch]`) expanded."""
    specs = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][extra]
    out = []
    for spec in specs:
        inner = re.fullmatch(r"sanaedit\[(.+)\]", spec)
        out += [r for name in inner.group(1).split(",") for r in extra_requirements(name)] if inner else [spec]
    return out


def allowed(extras: list[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = requirement_names(project["dependencies"])
    for extra in extras:
        names |= requirement_names(extra_requirements(extra))
    return set().union(*(PROVIDES.get(name, {name.replace("-", "_")}) for name in names))


def third_party_imports(path: Path) -> dict[str, bool]:
    """top-level module -> whether every import of it in `path` is optional (inside a try that catches ImportError)."""
    tree = ast.parse(path.read_text())
    optional_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            optional_nodes |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module.split(".")[0]]
        else:
            continue
        for name in names:
            if name != "sanaedit" and name not in sys.stdlib_module_names:
                found[name] = found.get(name, True) and id(node) in optional_nodes
    return found


def reachable(starts: list[str]) -> set[str]:
    graph: dict[str, set[str]] = {}
    for a, b, _, _ in imports():
        graph.setdefault(a, set()).add(b)
    mods = modules()
    todo = [m for m in mods if any(m == s or m.startswith(s + ".") for s in starts)]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph.get(module, ())
    return seen


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_needs_nothing_outside_its_extra(command):
    starts, extras = COMMANDS[command]
    ok = allowed(extras)
    mods = modules()
    missing = sorted(
        f"{module} imports {name}"
        for module in reachable(starts)
        for name, optional in third_party_imports(mods[module]).items()
        if not optional and name not in ok
    )
    assert missing == [], f"`pip install sanaedit[{','.join(extras)}]` lacks what `sanaedit {command}` can import"


def test_the_check_sees_a_missing_dependency():
    """The training filters need OpenCV, which only [train] installs: the check must say so for them."""
    mods = modules()
    assert "cv2" in third_party_imports(mods["sanaedit.train.filters.comic"])
    assert "cv2" not in allowed(["export", "serve"]) and "cv2" in allowed(["train"])
    assert "sanaedit.train.filters.comic" in reachable(["sanaedit.train.comic_data"])


def test_the_base_install_has_no_torch_and_each_missing_module_names_its_extra():
    """The base install is torch-free, and core/extras.py's table (what a one-line error tells a user to install)
    names, for each module, an extra that brings it."""
    from sanaedit.core.extras import EXTRA_OF

    base = allowed([])
    assert not base & {"torch", "diffusers", "transformers", "accelerate", "peft"}
    assert {"onnxruntime", "MNN", "tokenizers", "safetensors"} <= base
    wrong = {module: extra for module, extra in EXTRA_OF.items() if module in base or module not in allowed([extra])}
    assert wrong == {}
