"""`sanaedit grow MODEL_DIR --layers N -o OUT`: a deeper DiT that edits exactly as the original (SANA-1.5)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanaedit.apps.cli import add_command, result


def run(args: argparse.Namespace) -> int:
    from sanaedit.formats.index import read_index

    read_index(Path(args.model_dir))  # a missing or broken folder is named before torch loads
    from sanaedit.tools.grow import grow_model

    out = grow_model(Path(args.model_dir), args.layers, Path(args.output), seed=args.seed)
    result(args, f"wrote {out}: edits exactly as {args.model_dir} until trained (`sanaedit train --model.from={out}`)")
    return 0


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "grow",
        "add transformer blocks that start as the identity (SANA-1.5 depth growth)",
        description="Copy a model folder with a deeper transformer: its blocks, then new blocks whose output "
        "projections are zero, so the grown model edits exactly as the original until it is trained.",
        examples="""
sanaedit grow sanaedit/assets/comic-model --layers 12 -o grown
sanaedit train comic --model.from=grown --output-dir runs/grown""",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder")
    p.add_argument("--layers", type=int, required=True, metavar="N", help="blocks of the grown transformer")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write (atomically)")
    p.add_argument("--seed", type=int, default=0, help="seed for the new blocks' open weights (default: 0)")
    p.set_defaults(func=run)
