"""`sanaedit export MODEL_DIR --format onnx|mnn --out DIR [--quant llm=4,rest=8]`: graphs for on-device runtimes."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_QUANT = "llm=4,rest=8"  # the published release: 4-bit LLM, 8-bit everything else


def run(args: argparse.Namespace) -> int:
    from ..export import export_model, parse_quant

    model, out = Path(args.model_dir), Path(args.out)
    if not model.is_dir():
        raise FileNotFoundError(f"model folder not found: {model}")
    if out.resolve() == model.resolve():
        raise ValueError(f"--out {out} is the model folder itself; choose another folder")
    quant = None if args.quant in ("none", "fp32") else args.quant
    parse_quant(quant)  # a bad --quant fails before any model is loaded
    export_model(model, out, fmt=args.format, quant=quant, progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {out}: run it with `sanaedit edit PHOTO -o OUT --model {out}`")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a model folder to ONNX (ONNX Runtime) or MNN graphs")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder (from train, assemble or save_pretrained)")
    p.add_argument("--format", choices=["onnx", "mnn"], default="onnx")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (written atomically)")
    p.add_argument(
        "--quant",
        default=DEFAULT_QUANT,
        help=f"weight bits per part, e.g. {DEFAULT_QUANT!r} (default), 'transformer=8,rest=32', or 'none' (fp32)",
    )
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=run)
