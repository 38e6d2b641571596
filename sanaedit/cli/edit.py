"""`sanaedit edit IN [IN ...] -o OUT`: edit photos (by default into the model's comic style)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from . import add_runtime_args

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def plan_outputs(inputs: list[Path], output: Path) -> dict[Path, Path]:
    """Map each input to its output file. One input -> OUT is the file (a folder if it is one); many -> a folder."""
    if len(inputs) == 1 and not output.is_dir() and output.suffix.lower() in IMAGE_SUFFIXES:
        return {inputs[0]: output}
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: several inputs need an output folder, but this is a file")
    if len(inputs) == 1 and output.suffix and not output.is_dir():
        raise ValueError(f"{output}: unknown image extension {output.suffix!r}; use one of {sorted(IMAGE_SUFFIXES)}")
    plan: dict[Path, Path] = {}
    seen: dict[Path, Path] = {}
    for path in inputs:
        target = output / f"{path.stem}.png"
        if target in seen:
            raise ValueError(f"{path} and {seen[target]} would both be written to {target}; rename one")
        seen[target] = path
        plan[path] = target
    return plan


def run(args: argparse.Namespace) -> int:
    import torch

    from ..defaults import load_pipeline
    from ..image_io import ImageLoadError, load_image, save_image_atomic

    inputs = [Path(p) for p in args.inputs]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"input not found: {', '.join(missing)}")
    folder_mode = len(inputs) == 1 and inputs[0].is_dir()
    if not folder_mode:
        if any(p.is_dir() for p in inputs):
            raise ValueError("give either one folder or image files, not a mix")
        plan = plan_outputs(inputs, Path(args.output))
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, backend=args.backend)
    pipe.keep_text_encoder = False  # a new --prompt is encoded once; the LLM is freed before the first step
    settings = dict(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        schedule=args.schedule,
    )
    if folder_mode:
        from ..batch import edit_folder

        def edit_one(image):  # every image gets the same seed, whatever its place in the batch
            return pipe(image, generator=torch.Generator().manual_seed(args.seed), **settings)

        summary = edit_folder(
            edit_one, inputs[0], args.output, recursive=args.recursive, resume=args.resume, progress=not args.quiet
        )
        print(summary.report(), file=sys.stderr if summary.failed else sys.stdout)
        return 1 if summary.failed else 0
    single = len(plan) == 1
    failures: list[str] = []
    bar = tqdm(plan.items(), desc="editing", unit="image", disable=single or args.quiet)
    for src, dst in bar:
        try:
            image = load_image(src)
            generator = torch.Generator().manual_seed(args.seed)
            result = pipe(image, generator=generator, progress=single and not args.quiet, **settings)
            save_image_atomic(result, dst)
        except ImageLoadError as err:
            failures.append(str(err))
            tqdm.write(f"skipped: {err}", file=sys.stderr)
            continue
        if single and not args.quiet:
            print(f"wrote {dst} ({result.width}x{result.height})")
    if not single and not args.quiet:
        print(f"done: {len(plan) - len(failures)} written to {args.output}, {len(failures)} failed")
    return 1 if failures else 0


def add_parser(sub) -> None:
    p = sub.add_parser("edit", help="edit one photo or many (default: into the model's comic style)")
    p.add_argument("inputs", nargs="+", metavar="IN", help="input image(s), or one folder")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output image, or a folder for many inputs")
    p.add_argument("--model", default=None, metavar="DIR", help="model folder (default: the bundled model)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, 10)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale; 1 disables CFG (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default=None, help="edit instruction (default: the model's fixed style prompt)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--schedule", choices=["default", "published"], default=None, help="sigma schedule")
    add_runtime_args(p)
    p.add_argument("-r", "--recursive", action="store_true", help="folder input: walk sub-folders too")
    p.add_argument("--resume", action="store_true", help="folder input: skip images whose output exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
