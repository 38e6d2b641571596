"""`sanaedit assemble`: a model folder from a diffusers SANA transformer, a diffusers DC-AE and an HF LLM."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..variants import variant_names


def run(args: argparse.Namespace) -> int:
    import torch

    from ..assemble import assemble

    out = assemble(
        Path(args.transformer),
        Path(args.vae),
        Path(args.llm),
        Path(args.out),
        variant=args.variant,
        dtype=getattr(torch, args.dtype),
        resolution=args.resolution,
        seed=args.seed,
    )
    print(f"wrote {out}  (inspect it with: sanaedit info {out})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("assemble", help="build a model folder from published transformer / DC-AE / LLM folders")
    p.add_argument("--transformer", required=True, metavar="DIR", help="diffusers SanaTransformer2DModel folder")
    p.add_argument("--vae", required=True, metavar="DIR", help="diffusers AutoencoderDC folder")
    p.add_argument("--llm", required=True, metavar="DIR", help="Hugging Face causal LM folder with its tokenizer")
    p.add_argument("--out", required=True, metavar="DIR", help="model folder to write")
    p.add_argument(
        "--variant",
        default="sana-0.6b",
        help=f"sizes of the new queries/connector/projector ({', '.join(variant_names())})",
    )
    p.add_argument("--resolution", type=int, default=None, help="model input size in pixels (default: the variant's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--seed", type=int, default=0, help="seed for the new queries/connector/projector")
    p.set_defaults(func=run)
