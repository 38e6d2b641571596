"""Edit a whole folder: keep names, skip what is done, write atomically, never stop for one bad file.

Outputs are PNG (lossless: a comic's flat colours and ink lines band and ring in JPEG) at the input's relative
path with the suffix replaced: `in/trip/a.jpg -> out/trip/a.png`. With `resume`, an output that already exists
is skipped; since outputs are written atomically, an existing output is always a complete one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .image_io import ImageLoadError, load_image, save_image_atomic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class BatchSummary:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"done {len(self.done)}, skipped {len(self.skipped)} (already done), failed {len(self.failed)}"]
        lines += [f"  failed: {reason}" for _, reason in self.failed]
        return "\n".join(lines)


def find_images(folder: Path, recursive: bool = False) -> Iterator[Path]:
    """Image files under `folder` by extension, sorted, hidden files and folders left out."""
    pattern = "**/*" if recursive else "*"
    for path in sorted(folder.glob(pattern)):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_symlink():
            yield path


def output_path(src: Path, in_dir: Path, out_dir: Path) -> Path:
    return (out_dir / src.relative_to(in_dir)).with_suffix(".png")


def edit_folder(
    edit: Callable,
    in_dir: str | Path,
    out_dir: str | Path,
    recursive: bool = False,
    resume: bool = False,
    progress: bool = True,
    **edit_kwargs,
) -> BatchSummary:
    """Run `edit(image, **edit_kwargs) -> PIL image` (e.g. a SanaEditPipeline) on every image in `in_dir`."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise FileNotFoundError(f"{in_dir}: input folder not found")
    if out_dir.resolve() == in_dir.resolve():
        raise ValueError(
            f"{out_dir}: the output folder must differ from the input folder (outputs would replace inputs)"
        )
    if recursive and in_dir.resolve() in out_dir.resolve().parents:
        raise ValueError(f"{out_dir}: the output folder must not be inside the input folder for a recursive walk")
    sources = list(find_images(in_dir, recursive))
    summary = BatchSummary()
    bar = tqdm(sources, desc="editing", unit="image", disable=not progress, dynamic_ncols=True)
    for src in bar:
        dst = output_path(src, in_dir, out_dir)
        if resume and dst.is_file():
            summary.skipped.append(src)
            continue
        try:
            image = load_image(src)
            result = edit(image, **edit_kwargs)
            save_image_atomic(result, dst)
        except ImageLoadError as err:
            summary.failed.append((src, str(err)))
        except (RuntimeError, OSError, ValueError) as err:  # one bad file (or a NaN result) never stops the batch
            summary.failed.append((src, f"{src}: {type(err).__name__}: {err}"))
        else:
            summary.done.append(src)
        bar.set_postfix(done=len(summary.done), failed=len(summary.failed), refresh=False)
    bar.close()
    return summary


def print_summary(summary: BatchSummary, file=sys.stderr) -> None:
    print(summary.report(), file=file)
