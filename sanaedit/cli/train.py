"""`sanaedit train CONFIG.yaml [--key=value ...] [--resume]`: train with the flow-matching recipe (docs/training.md).

Multi-process (DDP; FSDP through an accelerate config): `accelerate launch -m sanaedit.cli.train CONFIG.yaml` or
`torchrun --nproc_per_node N -m sanaedit.cli.train CONFIG.yaml`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config(name: str) -> Path:
    """A path, or the name of a bundled recipe (`comic` -> sanaedit/configs/comic.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{name}.yaml"
    if bundled.is_file():
        return bundled
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"training config not found: {name} (bundled recipes: {known})")


def run(args: argparse.Namespace) -> int:
    from ..train.loop import train

    # Overrides look like options (--train.steps=5), so argparse hands us the rest of the line: pick --resume out.
    overrides = [o for o in args.overrides if o != "--resume"]
    resume = args.resume or len(overrides) != len(args.overrides)
    out = train(resolve_config(args.config), overrides=overrides, resume=resume)
    print(f"model folder: {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train (stages 1-3, or the bundled comic recipe) from a YAML config")
    p.add_argument("config", help="YAML training config, or a bundled recipe name (e.g. comic)")
    p.add_argument(
        "overrides", nargs=argparse.REMAINDER, metavar="--key=value", help="config overrides, e.g. --train.steps=100"
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (bit-exact on CPU)")
    p.set_defaults(func=run)


if __name__ == "__main__":  # `torchrun -m sanaedit.cli.train CONFIG.yaml ...` / `accelerate launch -m ...`
    import sys

    from . import main

    raise SystemExit(main(["train", *sys.argv[1:]]))
