"""`sanaedit assemble`: a model folder from a diffusers SANA transformer, a diffusers DC-AE and an HF LLM."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanaedit.apps.cli import MAX_SEED, add_command, int_range, result
from sanaedit.models.variants import variant_names


def _tiny_vae_files(text: str) -> tuple[Path, Path]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected ENCODER.pth,DECODER.pth, got {text!r}")
    return Path(parts[0]), Path(parts[1])


def run(args: argparse.Namespace) -> int:
    import torch

    from sanaedit.tools.assemble import assemble

    out = assemble(
        Path(args.transformer),
        Path(args.vae),
        Path(args.llm),
        Path(args.output),
        variant=args.variant,
        dtype=getattr(torch, args.dtype),
        resolution=args.resolution,
        seed=args.seed,
        tiny_vae=args.tiny_vae,
    )
    result(args, f"wrote {out}: inspect it with `sanaedit info {out}`")
    return 0


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "assemble",
        "build a model folder from published transformer / DC-AE / LLM folders",
        description="Build a model folder from a diffusers SANA transformer, a diffusers DC-AE and a Hugging Face "
        "causal LM.\nThe meta-queries, connector and projector start untrained: train them with `sanaedit train`.",
        examples="""
sanaedit assemble --transformer Sana_600M_512px_diffusers --vae dc-ae-f32c32 --llm Qwen3-0.6B -o my-model
sanaedit info my-model""",
    )
    p.add_argument("--transformer", required=True, metavar="DIR", help="diffusers SanaTransformer2DModel folder")
    p.add_argument("--vae", required=True, metavar="DIR", help="diffusers AutoencoderDC folder")
    p.add_argument("--llm", required=True, metavar="DIR", help="Hugging Face causal LM folder with its tokenizer")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="model folder to write (required)")
    p.add_argument(
        "--variant",
        default="sana-0.6b",
        help=f"sizes of the new queries/connector/projector: {', '.join(variant_names())} (default: sana-0.6b)",
    )
    p.add_argument(
        "--resolution", type=int_range(32), default=None, help="model input size in pixels (default: the variant's)"
    )
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights (default: float32)"
    )
    p.add_argument(
        "--tiny-vae",
        nargs="?",
        const=True,
        default=False,
        type=_tiny_vae_files,
        metavar="ENCODER.pth,DECODER.pth",
        help="also add a light autoencoder (TAESANA's architecture): from the published taesana_encoder.pth,"
        "taesana_decoder.pth state dicts when given, else fresh weights for the tiny-vae training stage "
        "(default: none)",
    )
    p.add_argument(
        "--seed",
        type=int_range(0, MAX_SEED),
        default=0,
        metavar="N",
        help="seed for the new queries/connector/projector (default: 0)",
    )
    p.set_defaults(func=run)
