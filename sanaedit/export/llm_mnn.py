"""The LLM as MNN's own LLM exporter writes it (PyPI `llmexport`): `llm.mnn` + `llm.mnn.weight` (outputs `logits`,
`hidden_states`), `config.json`, `llm_config.json`, `tokenizer.mtok`, and the embeddings tied inside the weight file
(or `embeddings_bf16.bin`): the folder MNN's engine loads with `Llm::createLLM`.

llmexport is driven here, in this process, with three guards:
- `MNN.tools.utils.log` never loads. llmexport converts through `MNN.tools.mnnconvert`, whose import runs that
  logger: `pip install -U aliyun-log-python-sdk` and telemetry carrying the machine id. A stub takes its name in
  `sys.modules` for the whole export, and llmexport's converter call is replaced by ours (`mnn_convert.run_converter`,
  the `_tools` extension called as a function): `MNN.tools` is never imported, nothing is installed, nothing is sent.
  llmexport's fallback (`os.popen` of a local MNNConvert binary) is never reached either.
- llmexport imports its own `utils` as a top-level package: its folder is on `sys.path`, and its `utils` modules in
  `sys.modules`, only while it runs (whatever `utils` was there before is put back).
- its side effects are undone: warnings filters, the two environment variables it sets, `sys.argv`, and its
  spinner's and the converter's output go to a log (shown in the error if it fails: it exits on failure).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import shutil
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

from sanaedit.export.mnn_convert import run_converter

LOG_MODULE = "MNN.tools.utils.log"
_LEFTOVERS = ("export_args.json", "llm.mnn.json", "onnx")  # llmexport's scratch: not part of the release layout
_kept_modules: dict[str, types.ModuleType] = {}  # llmexport's own `utils.*` modules, between exports


def llmexport_folder() -> Path:
    spec = importlib.util.find_spec("llmexport")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the MNN LLM export needs llmexport: pip install 'sanaedit[export]' (llmexport==0.0.5)")
    return Path(next(iter(spec.submodule_search_locations)))


def _stub_logger() -> types.ModuleType:
    stub = types.ModuleType(LOG_MODULE)
    stub.mnn_logger = None  # what MNN.tools.mnnconvert falls back to when the logger is unavailable
    stub.__doc__ = "sanaedit's stand-in: the real module pip-installs a package and sends telemetry"
    return stub


@contextlib.contextmanager
def llmexport_modules() -> Iterator[types.ModuleType]:
    """llmexport's main module, importable and safe for the duration of the block (see the module docstring)."""
    folder = llmexport_folder()
    saved_path, saved_argv = list(sys.path), list(sys.argv)
    saved_env = {k: os.environ.get(k) for k in ("TOKENIZERS_PARALLELISM", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")}
    shadowed = {k: m for k, m in sys.modules.items() if k == "utils" or k.startswith("utils.")}
    had_log = sys.modules.get(LOG_MODULE)
    for key in shadowed:
        del sys.modules[key]
    sys.modules.update(_kept_modules)
    sys.modules[LOG_MODULE] = _stub_logger() if had_log is None or not _is_stub(had_log) else had_log
    sys.path.insert(0, str(folder))
    import onnx  # noqa: F401  (protobuf picks its implementation now, not under llmexport's env variable)

    try:
        with warnings.catch_warnings():
            main = sys.modules.get("_sanaedit_llmexport")
            if main is None:
                spec = importlib.util.spec_from_file_location("_sanaedit_llmexport", folder / "llmexport.py")
                main = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(main)
                sys.modules["_sanaedit_llmexport"] = main
            from utils.mnn_converter import MNNConverter  # llmexport's, found through its folder

            MNNConverter.convert = _convert  # never `from MNN.tools import mnnconvert`, never os.popen
            yield main
    finally:
        _kept_modules.update({k: m for k, m in sys.modules.items() if k == "utils" or k.startswith("utils.")})
        for key in _kept_modules:
            sys.modules.pop(key, None)
        sys.modules.update(shadowed)
        if had_log is None:
            sys.modules.pop(LOG_MODULE, None)
        sys.path[:] = saved_path
        sys.argv[:] = saved_argv
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _is_stub(module) -> bool:
    return "sanaedit's stand-in" in (module.__doc__ or "")


def _convert(self, convert_args: list[str]) -> None:
    """llmexport's `MNNConverter.convert`, through the converter extension (argv[0] is ignored by it)."""
    run_converter(["mnnconvert", *[str(a) for a in convert_args[1:]]])


def export_llm_mnn(llm_dir: str | Path, out: str | Path, bits: int | None, block: int) -> Path:
    """Write the MNN-LLM folder of the Hugging Face causal LM in `llm_dir` into `out` (created).

    `bits` 4 or 8: asymmetric weights in blocks of `block` (0: per channel), the published scheme at 4 / 64. None:
    the most precise llmexport writes, fp16 weights (it has no fp32 layout for linear layers).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with llmexport_modules() as main, _quiet(out / ".llmexport.log") as log_path:
        parser = argparse.ArgumentParser()
        main.build_args(parser)
        args = parser.parse_args(["--path", str(llm_dir)])
        args.export, args.dst_path = "mnn", str(out)
        args.quant_bit, args.quant_block = 16 if bits is None else bits, block
        args.mnnconvert = str(out / "no-local-MNNConvert")  # no such binary: llmexport calls pymnn, i.e. _convert
        try:
            main.LlmExporter(args).export("mnn")  # (llmexport.export() would pick another exporter for 'bge' paths)
        except SystemExit as err:  # llmexport's spinner prints the traceback and calls exit(1)
            sys.stdout.flush()
            sys.stderr.flush()
            lines = log_path.read_text(errors="replace").splitlines()
            errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
            raise RuntimeError(f"llmexport failed on {llm_dir} (exit {err.code}): {(errors or ['?'])[-1]}") from None
    for name in _LEFTOVERS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    (out / ".llmexport.log").unlink(missing_ok=True)
    for name in ("llm.mnn", "llm.mnn.weight", "llm_config.json", "config.json"):
        if not (out / name).is_file() or (out / name).stat().st_size == 0:
            raise RuntimeError(f"llmexport wrote no (or an empty) {out / name}")
    return out


@contextlib.contextmanager
def _quiet(log_path: Path) -> Iterator[Path]:
    """stdout and stderr (Python's and the C++ converter's file descriptors) into `log_path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log_path
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
