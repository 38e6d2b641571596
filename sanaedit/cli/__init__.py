"""The `sanaedit` command line: one module per sub-command, each with `add_parser(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order `sanaedit --help` lists them. Each module defines
# `add_parser(subparsers)` which registers its parser and sets `func=run(args) -> int`.
COMMANDS = ["edit", "info", "assemble", "export", "train", "serve"]


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """--device / --dtype / --backend, shared by the commands that run the pipeline."""
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "int8"],
        help="PyTorch compute: auto = bf16 where the CPU has native bf16, else fp32; int8 = also int8 DiT matmuls "
        "(faster on CPUs with VNNI, slightly different images)",
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime", "mnn"],
        default=None,
        help="runtime (default: torch for a model folder, the export's own for an exported folder)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sanaedit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        # Our loaders raise these with messages that name the file and the problem.
        print(f"sanaedit {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
