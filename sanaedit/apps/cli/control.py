"""`sanaedit edit`'s ControlNet options (`--controlnet DIR --control-image IMG|DIR|edges --control-scale S`) and
how a batch gives each photo its own control image."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanaedit.apps.cli import float_range


def control_images(control: str | None, in_dir: Path | None):
    """`--control-image`: None, or the per-file arguments of each input's edit (`control_image=`): "edges", one
    picture for every input, or from a folder the picture named after the input (its path relative to the input
    folder, any image extension: `photos/trip/a.jpg` -> `CONTROLS/trip/a.png`). Checked before the model loads."""
    from sanaedit.core.choices import Control

    if control is None or control == Control.NONE:
        return None
    if control == Control.EDGES:
        from sanaedit.core.extras import require

        require("cv2", "--control-image edges")
        return lambda src: {"control_image": Control.EDGES}
    folder = Path(control)
    if not folder.exists():
        raise FileNotFoundError(f"--control-image {control}: not found (give an image, a folder of them, or edges)")
    if not folder.is_dir():
        return lambda src: {"control_image": folder}

    def named_after(src: Path) -> dict:
        from sanaedit.image.folders import IMAGE_SUFFIXES

        relative = src.relative_to(in_dir) if in_dir is not None else Path(src.name)
        for name in (relative, *(relative.with_suffix(suffix) for suffix in sorted(IMAGE_SUFFIXES))):
            if (folder / name).is_file():
                return {"control_image": folder / name}
        raise FileNotFoundError(f"{src}: no control image named {relative.with_suffix('.*')} in {folder}")

    return named_after


def each_file(*planners):
    """The per-file arguments of several planners (masks, control images) as one `per_file`, or None if none."""
    live = [planner for planner in planners if planner is not None]
    if not live:
        return None
    return lambda source: {key: value for planner in live for key, value in planner(source).items()}


def add_control_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--controlnet",
        default=None,
        metavar="DIR",
        help="a ControlNet folder (diffusers' SanaControlNetModel, e.g. from `sanaedit train controlnet`) for a "
        "PyTorch model (default: the model folder's own controlnet/, if any)",
    )
    p.add_argument(
        "--control-image",
        default=None,
        metavar="IMG|DIR|edges",
        help="steer the edit through the ControlNet: an image for every input, a folder of images named after the "
        "inputs (a.jpg -> DIR/a.png), or edges (each photo's own edges; needs OpenCV: sanaedit[control]) "
        "(default: none)",
    )
    p.add_argument(
        "--control-scale",
        type=float_range(0.0, 10.0),
        default=1.0,
        metavar="S",
        help="how strongly the control image steers, 0 to 10; 0 = exactly the edit without it (default: 1)",
    )
