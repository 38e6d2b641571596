"""`sanaedit distill TEACHER -o STUDENT`: a few-step, CFG-free student (sanaedit/train/distill.py, docs/training.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sanaedit.apps.cli import add_command, result
from sanaedit.apps.cli.train import normalize_overrides, resolve_config


def run(args: argparse.Namespace) -> int:
    from sanaedit.core.atomic import copy_folder
    from sanaedit.train.loop import train

    args = _read_options(args)
    teacher, out = Path(args.teacher), Path(args.output)
    if not (teacher / "model_index.json").is_file():
        raise FileNotFoundError(f"{teacher}: not a model folder (no model_index.json)")
    work = Path(args.work_dir) if args.work_dir else out.parent / f".{out.name}.distill-run"
    overrides = [f"--model.from={teacher}", f"--output_dir={work}"]
    overrides.append(f"--train.distill.objective={args.objective or 'ode'}")
    if args.quiet:
        overrides.append("--log.progress=false")
    if args.steps is not None:
        overrides.append(f"--train.distill.steps={args.steps}")
    if args.ladd is not None:
        overrides.append(f"--train.distill.ladd={args.ladd}")
    if args.train_steps is not None:
        overrides.append(f"--train.steps={args.train_steps}")
    if args.data is not None:
        manifest = Path(args.data)
        if not (manifest.is_file() or (manifest / "manifest.jsonl").is_file()):
            raise FileNotFoundError(f"--data {args.data}: no manifest.jsonl (a folder of source/target pairs)")
        overrides += [f"--data.manifest={manifest}", "--data.build=null"]
    overrides += normalize_overrides(args.overrides)
    student = train(resolve_config(args.config or "distill"), overrides=overrides, resume=args.resume)
    copy_folder(student, out)  # atomic: an older student at OUT stays whole until the new one is complete
    steps = json.loads((out / "model_index.json").read_text())["pipeline"]["num_inference_steps"]
    result(args, f"wrote {out}: edits in {steps} scm steps without a CFG batch (training run: {work})")
    return 0


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "distill",
        "a few-step, CFG-free student of a model (SANA-Sprint's goal)",
        description="Train a student of TEACHER that edits in 1-4 steps of the scm sampler without a CFG batch, "
        "and write it as an ordinary model folder that names its sampler (no extra flags to use it).\nAny config "
        "key can be overridden: --key=value or --key value (e.g. --train.lr 5e-5).",
        examples="""
sanaedit distill sanaedit/assets/comic-model -o comic-fast     the bundled model (its own training data)
sanaedit distill my-model -o my-fast --data pairs/ --steps 1   a folder of source/target pairs
sanaedit distill my-model -o my-fast --data pairs/ --resume    continue after a crash
sanaedit edit photo.jpg -o out.png --model comic-fast""",
    )
    p.add_argument("teacher", metavar="TEACHER", help="the model folder to distil")
    _options(p)
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--key=value", help="config overrides")
    p.set_defaults(func=run)


def _options(p: argparse.ArgumentParser) -> None:
    """The options, on the command's parser (for --help and before TEACHER) and again to read them after it."""
    p.add_argument("-o", "--output", metavar="DIR", help="the student's model folder, written atomically (required)")
    p.add_argument("--data", metavar="DIR", help="a folder with manifest.jsonl (default: the recipe's data)")
    p.add_argument("--steps", type=int, choices=(1, 2, 3, 4), help="the student's default steps (default: 2)")
    p.add_argument(
        "--objective", choices=("ode", "scm"), help="ode: regress the teacher's N-step result (default); "
        "scm: continuous-time consistency (SANA-Sprint's sCM)",
    )  # fmt: skip
    p.add_argument(
        "--ladd", type=float, metavar="WEIGHT", help="add SANA-Sprint's latent adversarial term (discriminator heads "
        "on the frozen teacher) with this weight (Sprint: 0.5; default: off)",
    )  # fmt: skip
    p.add_argument("--train-steps", type=int, metavar="N", help="optimizer steps (default: the recipe's, 600)")
    p.add_argument("--config", help="recipe: a YAML file or a bundled name (default: distill)")
    p.add_argument("--work-dir", metavar="DIR", help="training run folder (default: .OUT.distill-run beside OUT)")
    p.add_argument("--resume", action="store_true", help="continue the training run from its last checkpoint")


def _read_options(args: argparse.Namespace) -> argparse.Namespace:
    """Options typed after TEACHER arrive in the remainder with the config overrides: pick them out."""
    again = argparse.ArgumentParser(prog="sanaedit distill", add_help=False, argument_default=argparse.SUPPRESS)
    _options(again)
    again.add_argument("overrides", nargs="*")
    known, rest = again.parse_known_args(args.overrides)
    merged = {**vars(args), **vars(known)}
    merged["overrides"] = [*getattr(known, "overrides", []), *rest]
    if not merged.get("output"):
        again.error("the following arguments are required: -o/--output")
    return argparse.Namespace(**merged)
