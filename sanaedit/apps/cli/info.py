"""`sanaedit info [DIR]`: components, parameter counts and dtypes of a model folder, or the graphs of an exported
one (read from file headers only; no weights are loaded). No DIR: the bundled model."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from sanaedit.apps.cli import add_command
from sanaedit.formats.index import (
    CONTROLNET,
    EXPORT_CLASS,
    META_QUERIES_FILE,
    PROMPT_CACHE_FILE,
    REQUIRED,
    TINY_VAE,
    follows_prompts,
    is_export,
    is_release_layout,
    llm_width,
    read_index,
)
from sanaedit.formats.refiner import folder_refiner


def tensor_stats(paths: list[Path]) -> tuple[int, Counter]:
    """(parameter count, count per dtype) from safetensors headers, without loading any weights."""
    from safetensors import safe_open

    total, dtypes = 0, Counter()
    for path in paths:
        try:
            f = safe_open(path, "np")  # headers only (dtypes by name, bf16 too): no torch needed
        except Exception as err:  # SafetensorError is no ValueError: say it in one line
            raise ValueError(f"{path}: corrupt or truncated safetensors file ({str(err).strip()[:200]})") from None
        with f:
            for key in f.keys():
                tensor_slice = f.get_slice(key)
                numel = 1
                for dim in tensor_slice.get_shape():
                    numel *= dim
                total += numel
                dtypes[tensor_slice.get_dtype()] += numel
    return total, dtypes


def describe(model_dir: Path) -> list[str]:
    index = read_index(model_dir)
    lines = [f"model folder: {model_dir}  (sanaedit {index.get('_sanaedit_version', '?')})"]
    grand_total = 0
    from sanaedit.models.refine_tiles import REFINER_FILE

    optional = [n for n in (TINY_VAE, REFINER_FILE, CONTROLNET) if (model_dir / n).exists()]
    for name in (*REQUIRED, META_QUERIES_FILE, *optional):
        path = model_dir / name
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        count, dtypes = tensor_stats(files)
        grand_total += count
        kind = index.get(name)
        kind = ".".join(kind) if isinstance(kind, list) else "safetensors"
        dtype_text = ", ".join(f"{d} {n / count:.0%}" for d, n in dtypes.most_common()) if count else "-"
        lines.append(f"  {name:<26} {kind:<44} {count / 1e6:>10.3f} M params  [{dtype_text}]")
    lines.append(f"  {'total':<26} {'':<44} {grand_total / 1e6:>10.3f} M params")
    return lines + common_lines(model_dir, index)


def describe_graphs(folder: Path) -> list[str]:
    """An exported folder: its runtime, and per graph the file, weight bits, size and error against PyTorch."""
    index = read_index(folder, EXPORT_CLASS)
    fmt, backend = index.get("format", "?"), index.get("backend", "?")
    lines = [f"exported folder: {folder}  ({fmt}, runs on {backend}; sanaedit {index.get('_sanaedit_version', '?')})"]
    total = 0
    for name, graph in (index.get("graphs") or {}).items():
        size = graph.get("bytes", 0)
        total += size
        bits = graph.get("bits")
        error = graph.get("max_rel_error")
        error_text = f"max rel. error vs torch {error:.1e}" if isinstance(error, (int, float)) else ""
        lines.append(
            f"  {name:<14} {graph.get('file', '?'):<22} {'fp32' if bits is None else f'{bits}-bit':>6} "
            f"{size / 2**20:>9.2f} MiB  {error_text}"
        )
    llm = index.get("llm") or {}
    embeddings = folder / llm.get("embeddings", "llm/embeddings.safetensors")
    if embeddings.is_file():
        count, dtypes = tensor_stats([embeddings])
        size = embeddings.stat().st_size
        total += size
        dtype_text = ", ".join(dtypes)
        lines.append(
            f"  {'llm embeddings':<14} {embeddings.relative_to(folder)!s:<29} {size / 2**20:>9.2f} MiB  "
            f"{count / 1e6:.3f} M params [{dtype_text}]"
        )
    lines.append(f"  {'total':<14} {'':<29} {total / 2**20:>9.2f} MiB")
    return lines + common_lines(folder, index)


def common_lines(folder: Path, index: dict) -> list[str]:
    lines = ["pipeline defaults: " + json.dumps(index.get("pipeline", {}))]
    from sanaedit.models.refine_tiles import REFINER_FILE, REFINER_GRAPH

    graph = index.get("graphs", {}).get(REFINER_GRAPH)
    if isinstance(graph, dict) and isinstance(graph.get("config"), dict):  # an export's: the graph its runtime runs
        config, where = graph["config"], graph.get("file", REFINER_GRAPH)
    else:
        refiner = folder_refiner(folder)  # checked as loading checks it
        config, where = (refiner.config, REFINER_FILE) if refiner is not None else (None, None)
    if config is not None:
        lines.append(
            f"refiner: {where} (learned full-resolution refiner, width {config['width']}, dilations "
            f"{config['dilations']}, pixel blocks {config.get('unshuffle', 1)}): `--upsample refine`"
        )
    if (folder / PROMPT_CACHE_FILE).is_file():
        from sanaedit.formats.prompt_cache import load_prompt_cache

        prompts = list(load_prompt_cache(folder, framework="np"))
        lines.append(f"prompt cache: {len(prompts)} prompt(s) precomputed (no LLM load needed for them): {prompts}")
    width = llm_width(folder)
    if not follows_prompts(folder):
        lines.append(f"prompts: its own only (its LLM is a {width}-wide stand-in: --prompt does not steer it)")
    elif width is not None:
        lines.append(f"prompts: any (LLM width {width})")
    return lines


def run(args: argparse.Namespace) -> int:
    from sanaedit.load import BUNDLED_MODEL, bundled_model
    from sanaedit.plan import make_plan
    from sanaedit.runtime.sources import open_source

    folder = Path(args.model_dir) if args.model_dir is not None else bundled_model()
    if folder is None:
        raise ValueError("no bundled model in this install: pass a model folder (sanaedit info DIR)")
    # the checks loading makes (headers and configs only): a folder `edit` would refuse is refused here too (the
    # release's layout is checked whole when its reader opens it)
    source = open_source(folder)
    if is_export(folder) and not is_release_layout(folder):
        from sanaedit.formats.exported import check_exported

        check_exported(folder)
    elif not is_export(folder):
        from sanaedit.formats.torch_folder import check_model_folder

        check_model_folder(folder)
    plan = make_plan(source.info)  # what `sanaedit edit --model DIR` runs without options
    if args.model_dir is None:
        print(
            f"the bundled comic model (README: 'The bundled model, honestly'): {folder.name}"
            + (
                f", the ONNX export of {BUNDLED_MODEL.name} (PyTorch: --backend torch)"
                if folder != BUNDLED_MODEL
                else ""
            )
        )
    print("\n".join(describe_export(folder) if is_export(folder) else describe(folder)))
    print(
        "\n".join(["runs by default (sanaedit edit's options change it):", *(f"  {line}" for line in plan.describe())])
    )
    return 0


def describe_export(folder: Path) -> list[str]:
    """An exported folder: its graphs (the MNN release's layout, ours or downloaded, has its own description)."""
    if is_release_layout(folder):
        from sanaedit.formats.release_info import describe_release

        return describe_release(folder)
    return describe_graphs(folder)


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "info",
        "show a model's components, parameter counts and dtypes (or an export's graphs)",
        examples="""
sanaedit info                     the bundled model
sanaedit info runs/comic/model    a model folder (from train, assemble or save_pretrained)
sanaedit info model-onnx          an exported folder (from sanaedit export)""",
    )
    p.add_argument(
        "model_dir",
        metavar="DIR",
        nargs="?",
        default=None,
        help="a model folder or an exported folder (default: the bundled model)",
    )
    p.set_defaults(func=run)
