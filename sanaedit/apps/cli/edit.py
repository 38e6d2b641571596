"""`sanaedit edit IN [IN ...] -o OUT`: edit photos (by default into the model's comic style)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from PIL import Image

from sanaedit.apps.cli import (
    add_command,
    add_lora_arg,
    add_processes_option,
    add_runtime_args,
    add_sampling_args,
    check_device,
    int_range,
    warn_if_prompt_ignored,
)
from sanaedit.apps.cli.control import add_control_args, control_images, each_file
from sanaedit.core.choices import Backend, Upsample, Vae

STRENGTH_FLAGS = ("--strength", "--steps")  # what check_strength names, on the command line
logger = logging.getLogger(__name__)


def plan_outputs(inputs: list[Path], output: Path) -> dict[Path, Path]:
    """Each input's output file. One input and OUT with an image extension -> OUT itself; otherwise OUT is a folder
    and names follow the folder mode's rule (`batch.plan_outputs`)."""
    from sanaedit.apps.batch import plan_outputs as plan_in_folder
    from sanaedit.image.io import SAVE_FORMATS

    if len(inputs) == 1 and not output.is_dir() and output.suffix.lower() in SAVE_FORMATS:
        return {inputs[0]: output}
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: several inputs need an output folder, but this is a file")
    if len(inputs) > 1 and not output.is_dir() and output.suffix.lower() in SAVE_FORMATS:
        raise ValueError(
            f"{output}: {len(inputs)} inputs need an output folder, and this names one image file; "
            "give a folder (-o DIR), or one input"
        )
    if len(inputs) == 1 and output.suffix and not output.is_dir():
        raise ValueError(f"{output}: unknown image extension {output.suffix!r}; use one of {sorted(SAVE_FORMATS)}")
    return plan_in_folder(inputs, None, output)


def run(args: argparse.Namespace) -> int:
    from sanaedit.apps.processes import launched_count, launched_processes
    from sanaedit.errors import OtherProcessFailed

    if args.device is None:  # cpu, but processes launched together on a machine with GPUs take one GPU each
        args.device = default_device(args) if launched_count() > 1 else "cpu"
    # launched as several processes (`accelerate launch`, torchrun): each edits its share; else process 0 of 1
    processes = launched_processes(cpu=not args.device.startswith("cuda"))
    try:
        try:
            return edit_share(args, processes)
        except Exception as err:
            if processes.met:
                raise
            processes.agree(err)  # the others wait where the models are loaded: they stop too (raises)
            raise
    except OtherProcessFailed:
        return 0  # process 0 says why, and its exit status is the launcher's
    finally:
        processes.close()


def default_device(args: argparse.Namespace) -> str:
    """For processes launched together: cuda (each process its own GPU) where there is a GPU for each process on
    this machine and the model runs in PyTorch; else cpu."""
    import os

    import torch

    from sanaedit.formats.index import is_export

    if args.backend not in (None, Backend.TORCH) or not torch.cuda.is_available():
        return "cpu"
    if args.model is not None and Path(args.model).is_dir() and is_export(args.model):
        return "cpu"
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if torch.cuda.device_count() < (int(local) if local.isdigit() else 1):
        if os.environ.get("RANK", "0") == "0":
            logging.getLogger(__name__).warning(
                f"{local} processes on this machine but {torch.cuda.device_count()} GPU(s): editing on the CPU"
            )
        return "cpu"
    return "cuda"


def edit_share(args: argparse.Namespace, processes) -> int:
    from sanaedit.apps.batch import check_output_folder, check_outputs, edit_files, edit_folder
    from sanaedit.load import load_pipeline

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
    # an output that cannot be written is refused now, before the model loads and any edit runs
    check_output_folder(args.output) if folder_mode else check_outputs(plan.values())
    device, threads = args.device, args.threads
    if processes.many and device.startswith("cuda"):  # each process its own GPU
        if device != "cuda":
            raise ValueError(f"--device {device}: several processes each take their own GPU; give --device cuda")
        device = f"cuda:{processes.local_index}"
    if processes.many and threads is None and device == "cpu":  # the cores shared out, not all for each process
        from sanaedit.core.cpu import physical_cores

        threads = max(1, physical_cores() // processes.local_count)
    check_device(device)  # everything the user typed is checked before the model loads (seconds)
    judge = None
    if args.judge is not None:
        from sanaedit.tools.best_of import load_judge

        judge = load_judge(args.judge)
    from sanaedit.core.inputs import check_prompt, check_strength

    check_prompt(args.prompt, "--prompt")  # before the model loads
    check_prompt(args.negative_prompt, "--negative-prompt")
    check_strength(args.strength, args.steps or default_steps(args.model), STRENGTH_FLAGS)
    controls = control_images(args.control_image, inputs[0] if folder_mode else None)
    per_file = each_file(plan_masks(args, inputs, folder_mode), controls)  # each photo's mask and control image
    if processes.main:
        warn_if_prompt_ignored(args.model, args.prompt, args.negative_prompt)
    pipe = load_pipeline(
        args.model,
        device=device,
        threads=threads,
        dtype=args.dtype,
        backend=args.backend,
        loras=args.lora,
        vae=args.vae,
        upsample=args.upsample,
        staged=args.low_memory,
        controlnet=args.controlnet,
        control=controls is not None,
    )
    if controls is not None and pipe.flow.controlnet is None:  # before any edit, not per photo
        raise ValueError(
            "--control-image steers the edit through a ControlNet, and this model has none: give one with "
            "--controlnet DIR (or put it in the model folder as controlnet/)"
        )
    processes.agree()  # every process has its model (or all stop now: none waits for one that failed)
    single = not folder_mode and len(inputs) == 1
    settings = dict(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        schedule=args.schedule,
        sampler=args.sampler,
        strength=args.strength,
        progress=single and not args.quiet,  # one photo: a bar over its steps; many: a bar over the photos
        controlnet_conditioning_scale=args.control_scale,
    )

    def edit_one(image, mask=None, control_image=None):  # every image gets the same seed, whatever its place
        own = {} if control_image is None else {"control_image": control_image}  # this photo's (per_file)
        if mask is not None:  # (its name, the picture): it must fit this photo
            from sanaedit.image.masks import check_mask_size

            check_mask_size(mask[1].size, image.size, mask[0])
            own["mask_image"] = mask[1]
        if args.candidates > 1:  # seeds seed..seed+N-1, the judge's favourite kept
            from sanaedit.tools.best_of import best_of

            best, scores = best_of(pipe, image, args.candidates, judge, seed=args.seed, **settings, **own)
            ranks = [-math.inf if math.isnan(score) else score for score in scores]  # as best_of ranks them
            won = ranks.index(max(ranks))
            logging.getLogger(__name__).info(
                f"kept seed {args.seed + won} of {args.seed}..{args.seed + args.candidates - 1} "
                f"(score {scores[won]:.4f}; --seed {args.seed + won} --candidates 1 gives it alone)"
            )
            return best
        return pipe(image, generator=pipe.flow.arrays.generator(args.seed), **settings, **own).images[0]

    if folder_mode:
        summary = edit_folder(
            edit_one,
            inputs[0],
            args.output,
            recursive=args.recursive,
            resume=args.resume,
            progress=not args.quiet,
            processes=processes,
            per_file=per_file,
        )
    else:
        progress = not (single or args.quiet)
        summary = edit_files(
            edit_one, inputs, plan, resume=args.resume, progress=progress, processes=processes, per_file=per_file
        )
    if not processes.main:  # process 0 reports for all, and its exit status (any process's failure) is the
        return 0  # launcher's: the others end well, so the launcher never stops process 0 before it reports
    if single and summary.done and not args.quiet:
        written = plan[inputs[0]]
        with Image.open(written) as image:
            print(f"wrote {written} ({image.width}x{image.height})")
    elif not args.quiet or summary.failed:
        print(summary.report(), file=sys.stderr if summary.failed else sys.stdout)
    return 1 if summary.failed else 0


def default_steps(model: str | None) -> int | None:
    """The model's own number of steps, from its folder's index (no weights read); None when it does not say."""
    import json

    from sanaedit.apps.cli import model_folder_or_bundled
    from sanaedit.formats.index import MODEL_INDEX

    folder = model_folder_or_bundled(model)
    try:
        steps = json.loads((folder / MODEL_INDEX).read_text())["pipeline"]["num_inference_steps"]
    except (OSError, TypeError, ValueError, KeyError):
        return None
    return steps if isinstance(steps, int) else None


def plan_masks(args: argparse.Namespace, inputs: list[Path], folder_mode: bool):
    """`per_file(source) -> {"mask": (name, picture)}` for the batch, or None without --mask / --mask-dir. What can be
    checked before the model loads is: the mask file (--mask), and that it fits each photo named; a --mask-dir
    that pairs no photo at all."""
    from sanaedit.apps.batch import find_mask
    from sanaedit.errors import ImageLoadError
    from sanaedit.image.folders import list_folder
    from sanaedit.image.io import load_mask, upright_size
    from sanaedit.image.masks import check_mask_size

    if args.mask is not None:
        try:
            name, mask = f"--mask {args.mask}", load_mask(args.mask)  # missing or corrupt: one line, now
        except ImageLoadError as err:
            raise ImageLoadError(f"--mask {err}") from None
        for photo in [] if folder_mode else inputs:
            try:
                size = upright_size(photo)
            except ImageLoadError:
                continue  # that photo fails in its turn, with its reason; the others are edited
            check_mask_size(mask.size, size, name)
        return lambda source: {"mask": (name, mask)}
    if args.mask_dir is None:
        return None
    mask_dir, in_dir = Path(args.mask_dir), inputs[0] if folder_mode else None
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"--mask-dir {mask_dir}: folder not found")
    photos = list_folder(in_dir, args.recursive).images if folder_mode else inputs
    if photos and not any(find_mask(mask_dir, photo, in_dir) for photo in photos):
        expected = mask_dir / (photos[0].relative_to(in_dir) if in_dir else Path(photos[0].name)).with_suffix(".png")
        raise FileNotFoundError(
            f"--mask-dir {mask_dir}: no mask for any of the {len(photos)} photo(s) ({photos[0].name}'s would be "
            f"{expected}: the photo's relative path, suffix .png)"
        )

    def per_file(source: Path) -> dict:
        mask = find_mask(mask_dir, source, in_dir)
        if mask is None:
            logger.warning(f"{source}: no mask for it in {mask_dir}; edited whole")
            return {}
        return {"mask": (str(mask), load_mask(mask))}

    return per_file


def add_parser(sub) -> None:
    p = add_command(
        sub,
        "edit",
        "edit one photo or many (default: into the model's comic style)",
        examples="""
sanaedit edit photo.jpg -o comic.png                  output the photo's own size; .png .jpg .webp .tif .bmp
sanaedit edit a.jpg b.png -o out/                     many photos into a folder
sanaedit edit photos/ -o comics/ -r --resume          a folder (names kept, done ones skipped, summary)
accelerate launch --num_processes 2 -m sanaedit.apps.cli edit photos/ -o comics/   2 GPUs, half each
sanaedit edit photos/ -o comics/ --processes 2       2 processes (GPUs if any, else CPU), half each
sanaedit edit photo.jpg -o out.png --model DIR --steps 20 --guidance 4.5 --seed 7
sanaedit edit photo.jpg -o out.png --mask sky.png      only the mask's white part; the rest stays the photo's
sanaedit edit photos/ -o out/ --mask-dir masks/        photos/a.jpg with masks/a.png (photos without one: whole)
sanaedit edit photo.jpg -o out.png --strength 0.5      a lighter edit: the last half of the steps, from the photo
sanaedit edit photo.jpg -o out.png --control-image edges   the photo's edges steer it (the model's ControlNet)""",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="input image(s), or one folder")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output image, or a folder for many inputs (required)"
    )
    p.add_argument("--model", default=None, metavar="DIR", help="model or exported folder (default: the bundled model)")
    add_sampling_args(p)
    p.add_argument(
        "--strength",
        type=float,
        default=1.0,
        metavar="S",
        help="how far from the photo to go, in (0, 1]: the last S of the steps run, starting from the photo noised "
        "to that level (diffusers' strength; --steps x S must be >= 1) (default: 1, a full edit)",
    )
    masks = p.add_mutually_exclusive_group()
    masks.add_argument(
        "--mask",
        default=None,
        metavar="M.png",
        help="edit only the mask's white part (white = edit, black = keep, as diffusers' inpainting); the rest "
        "stays the photo's, pixel for pixel, past a feathered border. The photo's size, or its aspect ratio "
        "(resized); one mask for every input",
    )
    masks.add_argument(
        "--mask-dir",
        default=None,
        metavar="DIR",
        help="a mask per photo: a.jpg's is DIR/a.png (a folder's trip/a.jpg: DIR/trip/a.png); photos without one "
        "are edited whole, with a warning",
    )
    p.add_argument(
        "--upsample",
        choices=[u.value for u in Upsample],
        default=None,
        help="back to the photo's own size from the model's resolution: guided (the fast guided filter: the photo's "
        "own detail and edges), refine (guided, then the folder's learned full-resolution refiner) or plain "
        "(bilinear); guided-grey guides with luminance only (default: the model's; guided unless its folder says "
        "otherwise)",
    )
    p.add_argument(
        "--vae",
        choices=[v.value for v in Vae],
        default=None,
        help="autoencoder: full (DC-AE) or tiny (the folder's light TAESANA-style one: ~14x fewer decoder FLOPs, "
        "the DC-AE not loaded at all) (default: the model's own; full unless its folder says otherwise)",
    )
    p.add_argument(
        "--low-memory",
        action="store_true",
        help="each network in memory only while its stage runs (DC-AE encoder, DiT, DC-AE decoder: the peak is the "
        "largest, not their sum), read again from the model folder for every photo; PyTorch model folders only",
    )
    add_runtime_args(p)
    p.set_defaults(device=None)  # cpu; for processes launched together, their GPUs where there are (`run`)
    p.add_argument(
        "--threads",
        type=int_range(1),
        default=None,
        metavar="N",
        help="CPU threads per process (default: the cores; shared out among the processes that `accelerate launch` "
        "or torchrun start together, each editing its share of the inputs: docs/deployment.md)",
    )
    add_lora_arg(p)
    p.add_argument(
        "--candidates",
        type=int_range(1),
        default=1,
        metavar="N",
        help="edit N times (seeds SEED..SEED+N-1) and keep the one --judge scores highest (default: 1)",
    )
    p.add_argument(
        "--judge",
        default=None,
        metavar="MODULE:FUNCTION",
        help="score(source, candidate) -> float, higher is better (default: sanaedit.tools.best_of:structure_judge, "
        "how well the edit's edges follow the photo's; docs/family.md)",
    )
    add_control_args(p)
    p.add_argument("-r", "--recursive", action="store_true", help="folder input: walk sub-folders too")
    p.add_argument("--resume", action="store_true", help="skip images whose output already exists")
    add_processes_option(p, "edit a folder as N processes on this machine, each its share")
    p.set_defaults(func=run)
