"""`sanaedit prune MODEL_DIR --keep K -o OUT`: a shallower DiT from the blocks that matter most (SANA-1.5)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanaedit.apps.cli import add_command, float_range, int_range, result


def run(args: argparse.Namespace) -> int:
    from sanaedit.tools.prune import check_keep, finetune_folder, prune_model

    check_keep(args.model_dir, args.keep)  # everything typed is checked before the model loads
    if args.finetune_steps and args.data is None:
        raise ValueError("--finetune-steps needs --data DIR (a folder with manifest.jsonl of source/target pairs)")
    if args.finetune_steps and not args.lr > 0:
        raise ValueError(f"--lr {args.lr}: the fine-tune's learning rate must be > 0")
    if args.data is not None and not (Path(args.data).is_file() or (Path(args.data) / "manifest.jsonl").is_file()):
        raise FileNotFoundError(f"--data {args.data}: no manifest.jsonl there")
    report = prune_model(args.model_dir, args.keep, args.output, calib=args.calib, steps=args.steps, seed=args.seed)
    count = report["calibration_images"]
    result(args, f"block input/output similarity over {count} calibration images (high = changes little):")
    for i, value in enumerate(report["similarity"]):
        result(args, f"  block {i}: {value:.4f}{'  dropped' if i in report['dropped'] else ''}")
    if args.finetune_steps:
        finetune_folder(args.output, args.data, args.finetune_steps, lr=args.lr, seed=args.seed)
        result(args, f"fine-tuned {args.finetune_steps} steps on {args.data}")
    result(args, f"wrote {args.output}: {args.keep} blocks (kept {report['kept']})")
    return 0


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "prune",
        "drop the transformer blocks that change its hidden states least (SANA-1.5 block pruning)",
        examples="""
sanaedit prune sanaedit/assets/comic-model --keep 4 -o pruned
sanaedit prune MODEL --keep 20 -o pruned --calib photos/ --finetune-steps 100 --data runs/comic/data/train""",
        description="Copy a model folder keeping only its K most important transformer blocks. A block's importance "
        "is 1 - the cosine similarity of its input and output hidden states, averaged over every DiT call of editing "
        "the calibration photos with the model's own sampler and settings. Optionally fine-tune the pruned "
        "transformer briefly (the paper: ~100 steps), or later with `sanaedit train --model.from=OUT`.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder (PyTorch, not an export)")
    p.add_argument("--keep", type=int_range(1), required=True, metavar="K", help="blocks to keep, fewer than now")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder to write (atomically)")
    p.add_argument(
        "--calib",
        default=None,
        metavar="DIR",
        help="folder of calibration photos (default: the bundled sample photo and 3 synthetic scenes)",
    )
    p.add_argument(
        "--steps",
        type=int_range(1),
        default=None,
        metavar="N",
        help="sampling steps of each calibration edit (default: the model's)",
    )
    p.add_argument(
        "--seed", type=int_range(0), default=0, metavar="N", help="noise and synthetic-scene seed (default: 0)"
    )
    p.add_argument(
        "--finetune-steps",
        type=int_range(0),
        default=0,
        metavar="N",
        help="then train the pruned transformer N steps on --data (stage 3, CAME) (default: 0 = none)",
    )
    p.add_argument("--data", default=None, metavar="DIR", help="training pairs for the fine-tune (manifest.jsonl)")
    p.add_argument("--lr", type=float_range(0.0), default=1e-4, help="fine-tune learning rate (default: 1e-4)")
    p.set_defaults(func=run)
