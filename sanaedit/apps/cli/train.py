"""`sanaedit train CONFIG.yaml [--key=value | --key value ...] [--resume]`: train (docs/training.md).

Multi-process (DDP; FSDP through an accelerate config): `sanaedit train CONFIG.yaml --processes N` on one machine
(apps/launch.py), `accelerate launch -m sanaedit.apps.cli.train CONFIG.yaml` or
`torchrun --nproc_per_node N -m sanaedit.apps.cli.train CONFIG.yaml`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sanaedit.apps.cli import add_command, add_processes_option, result
from sanaedit.models.variants import CONFIG_DIR


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


def normalize_overrides(items: list[str]) -> list[str]:
    """Config overrides as `--key=value`, from what users type: `--key=value` or `--key value`, hyphens or
    underscores in keys (`--output-dir runs/x` -> `--output_dir=runs/x`), `-o DIR` for `--output_dir=DIR`."""
    out, i = [], 0
    while i < len(items):
        item = items[i]
        i += 1
        if item in ("-o", "--output"):
            item = "--output_dir"
        key, sep, value = item.partition("=")
        if not sep:
            if not key.startswith("--"):
                raise ValueError(f"unexpected argument {item!r}: overrides are --key=value or --key value")
            if i == len(items) or items[i].startswith("--"):
                raise ValueError(f"override {item!r} has no value: write {item}=VALUE or {item} VALUE")
            value, i = items[i], i + 1
        dashes = "--" if key.startswith("--") else ""
        out.append(f"{dashes}{key.removeprefix('--').replace('-', '_')}={value}")
    return out


def run(args: argparse.Namespace) -> int:
    from sanaedit.train.loop import train

    # Overrides look like options (--train.steps=5), so argparse hands us the rest of the line: pick --resume out.
    rest = [o for o in args.overrides if o != "--resume"]
    resume = args.resume or len(rest) != len(args.overrides)
    overrides = normalize_overrides(rest)
    if args.quiet:  # -q: no progress bars (a later --log.progress=true on the line still wins)
        overrides.insert(0, "--log.progress=false")
    out = train(resolve_config(args.config), overrides=overrides, resume=resume)
    if (out / "pytorch_lora_weights.safetensors").is_file():
        use = f"--lora {out}"
    elif out.name == "controlnet":  # a ControlNet folder, for the model it was trained beside
        use = f"--model MODEL --controlnet {out} --control-image edges"
    else:
        use = f"--model {out}"
    result(args, f"wrote {out}: edit with it: `sanaedit edit PHOTO -o OUT {use}`")
    return 0


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "train",
        "train (stages 1-3, or the bundled comic recipe) from a YAML config",
        description="Train a model folder with flow matching from a YAML config or a bundled recipe (docs/training.md)."
        "\nAny config key can be overridden: --key=value or --key value (hyphens or underscores).",
        examples="""
sanaedit train comic --output-dir runs/comic          reproduce the bundled model (about 1 h 45 min on 2 CPU cores)
sanaedit train controlnet --model.from=MODEL --data.photos=DIR --output-dir OUT   a ControlNet: OUT/controlnet
sanaedit train my.yaml --train.steps 2000 --train.lr=5e-5
sanaedit train my.yaml --resume                       continue after a crash
sanaedit train my.yaml --processes 2                  two processes (DDP) on this machine
accelerate launch -m sanaedit.apps.cli.train my.yaml       many GPUs""",
    )
    p.add_argument("config", help="YAML training config, or a bundled recipe name (e.g. comic)")
    p.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="--key=value",
        help="config overrides, e.g. --train.steps=100 or --output-dir runs/x (-o runs/x for short)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint (bit-exact on CPU)")
    add_processes_option(p, "train as N processes on this machine (DDP, one GPU each where there are enough)")
    p.set_defaults(func=run)


if __name__ == "__main__":  # `torchrun -m sanaedit.apps.cli.train CONFIG.yaml ...` / `accelerate launch -m ...`
    import sys

    from sanaedit.apps.cli import main

    raise SystemExit(main(["train", *sys.argv[1:]]))
