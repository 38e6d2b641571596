"""`sanaedit info DIR`: components, parameter counts and dtypes of a model folder (read from file headers only)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from ..model_folder import META_QUERIES_FILE, PROMPT_CACHE_FILE, REQUIRED, read_index


def tensor_stats(paths: list[Path]) -> tuple[int, Counter]:
    """(parameter count, count per dtype) from safetensors headers, without loading any weights."""
    from safetensors import safe_open

    total, dtypes = 0, Counter()
    for path in paths:
        with safe_open(path, "pt") as f:
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
    for name in (*REQUIRED, META_QUERIES_FILE):
        path = model_dir / name
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        count, dtypes = tensor_stats(files)
        grand_total += count
        kind = index.get(name)
        kind = ".".join(kind) if isinstance(kind, list) else "safetensors"
        dtype_text = ", ".join(f"{d} {n / count:.0%}" for d, n in dtypes.most_common()) if count else "-"
        lines.append(f"  {name:<26} {kind:<44} {count / 1e6:>10.3f} M params  [{dtype_text}]")
    lines.append(f"  {'total':<26} {'':<44} {grand_total / 1e6:>10.3f} M params")
    lines.append("pipeline defaults: " + json.dumps(index.get("pipeline", {})))
    if (model_dir / PROMPT_CACHE_FILE).is_file():
        from ..model_folder import load_prompt_cache

        prompts = list(load_prompt_cache(model_dir))
        lines.append(f"prompt cache: {len(prompts)} prompt(s) precomputed (no LLM load needed for them): {prompts}")
    return lines


def run(args: argparse.Namespace) -> int:
    print("\n".join(describe(Path(args.model_dir))))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="show a model folder's components, parameter counts and dtypes")
    p.add_argument("model_dir", metavar="DIR")
    p.set_defaults(func=run)
