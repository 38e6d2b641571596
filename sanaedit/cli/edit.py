"""`sanaedit edit IN [IN ...] -o OUT`: edit photos (by default into the model's comic style)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from . import add_runtime_args


def plan_outputs(inputs: list[Path], output: Path) -> dict[Path, Path]:
    """Each input's output file. One input and OUT with an image extension -> OUT itself; otherwise OUT is a folder
    and names follow the folder mode's rule (`batch.plan_outputs`)."""
    from ..batch import plan_outputs as plan_in_folder
    from ..image_io import SAVE_FORMATS

    if len(inputs) == 1 and not output.is_dir() and output.suffix.lower() in SAVE_FORMATS:
        return {inputs[0]: output}
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: several inputs need an output folder, but this is a file")
    if len(inputs) == 1 and output.suffix and not output.is_dir():
        raise ValueError(f"{output}: unknown image extension {output.suffix!r}; use one of {sorted(SAVE_FORMATS)}")
    return plan_in_folder(inputs, None, output)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..batch import edit_files, edit_folder
    from ..defaults import load_pipeline

    inputs = [Path(p) for p in args.inputs]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"input not found: {', '.join(missing)}")
    if not str(args.output).strip():
        raise ValueError("-o/--output is empty: name an output image or folder")
    folder_mode = len(inputs) == 1 and inputs[0].is_dir()
    if not folder_mode:
        if any(p.is_dir() for p in inputs):
            raise ValueError("give either one folder or image files, not a mix")
        plan = plan_outputs(inputs, Path(args.output))
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, backend=args.backend)
    single = not folder_mode and len(inputs) == 1
    settings = dict(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        schedule=args.schedule,
        progress=single and not args.quiet,  # one photo: a bar over its steps; many: a bar over the photos
    )

    def edit_one(image):  # every image gets the same seed, whatever its place in the batch
        return pipe(image, generator=torch.Generator().manual_seed(args.seed), **settings).images[0]

    if folder_mode:
        summary = edit_folder(
            edit_one, inputs[0], args.output, recursive=args.recursive, resume=args.resume, progress=not args.quiet
        )
    else:
        summary = edit_files(edit_one, inputs, plan, resume=args.resume, progress=not (single or args.quiet))
    if single and summary.done and not args.quiet:
        written = plan[inputs[0]]
        with Image.open(written) as image:
            print(f"wrote {written} ({image.width}x{image.height})")
    elif not args.quiet or summary.failed:
        print(summary.report(), file=sys.stderr if summary.failed else sys.stdout)
    return 1 if summary.failed else 0


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
    p.add_argument("--resume", action="store_true", help="skip images whose output already exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
