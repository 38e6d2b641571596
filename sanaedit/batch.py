"""Edit many photos (a folder, or files named on the command line): keep names, skip what is done, write
atomically, never stop for one bad file. The CLI's single-file, many-file and folder modes all run `edit_files`.

Outputs are PNG (lossless: a comic's flat colours and ink lines band and ring in JPEG; every input format we read
that is lossless converts to PNG without loss too) at the input's relative path with the suffix replaced:
`in/trip/a.jpg -> out/trip/a.png`. Two inputs that would share an output (`a.jpg` and `a.png`) keep their whole
name instead: `a.jpg.png`, `a.png.png`. With `resume`, an output that already exists is skipped; outputs are
written atomically, so an existing output is always a complete one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .image_io import ImageLoadError, load_image, save_image_atomic

# .heic is listed so an iPhone folder gets a per-file reason ("export it as JPEG"), not silence
IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".webp",
    ".avif",
    ".heic",
    ".heif",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
}


@dataclass
class BatchSummary:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files without an image extension

    def report(self) -> str:
        lines = [f"done {len(self.done)}, skipped {len(self.skipped)} (already done), failed {len(self.failed)}"]
        if self.ignored:
            lines[0] += f"; {len(self.ignored)} other file(s) ignored (not an image extension)"
        lines += [f"  failed: {reason}" for _, reason in self.failed]
        return "\n".join(lines)


def find_files(folder: Path, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """(image files by extension, other files) under `folder`, sorted; hidden files and folders left out.

    Symlinked files are followed (they are the user's photos); symlinked folders are not walked (no loops).
    """
    images, others = [], []
    for path in sorted(folder.glob("**/*" if recursive else "*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    return images, others


def plan_outputs(sources: list[Path], in_dir: Path | None, out_dir: Path) -> dict[Path, Path]:
    """Each input's output path: its path relative to `in_dir` (or its name, for files named one by one) under
    `out_dir`, as PNG. Names that would collide (case-insensitively, for macOS/Windows disks) keep the input's
    whole name; anything still colliding after that is left out (`edit_files` reports it)."""
    plan = {src: (out_dir / (src.relative_to(in_dir) if in_dir else src.name)).with_suffix(".png") for src in sources}
    counts = Counter(str(dst).lower() for dst in plan.values())
    for src, dst in plan.items():
        if counts[str(dst).lower()] > 1:
            plan[src] = dst.with_name(src.name + ".png")
    seen: set[str] = set()
    for src, dst in list(plan.items()):
        if str(dst).lower() in seen:
            del plan[src]
        seen.add(str(dst).lower())
    return plan


def edit_folder(
    edit: Callable[..., Image.Image],
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
    sources, others = find_files(in_dir, recursive)
    summary = BatchSummary(ignored=others)
    return edit_files(edit, sources, plan_outputs(sources, in_dir, out_dir), resume, progress, summary, **edit_kwargs)


def edit_files(
    edit: Callable[..., Image.Image],
    sources: list[Path],
    plan: dict[Path, Path],
    resume: bool = False,
    progress: bool = True,
    summary: BatchSummary | None = None,
    **edit_kwargs,
) -> BatchSummary:
    """Edit each source into its planned output; a source without a plan entry is reported as a name collision,
    an output that is one of the inputs is refused (never overwrite a photo), any failure of one file is recorded
    and the rest go on."""
    summary = summary or BatchSummary()
    inputs = {src.resolve() for src in sources}
    todo = {}
    for src in sources:
        dst = plan.get(src)
        if dst is None:
            summary.failed.append((src, f"{src}: its output name collides with another input's; rename it"))
        elif dst.resolve() in inputs:
            summary.failed.append((src, f"{dst}: is an input photo; refusing to overwrite it (choose another output)"))
        elif resume and dst.is_file():
            summary.skipped.append(src)
        else:
            todo[src] = dst
    # one bar over the work actually left, so its rate and ETA mean something on a resumed run
    with tqdm(todo.items(), desc="editing", unit="image", disable=not progress, dynamic_ncols=True) as bar:
        for src, dst in bar:
            try:
                save_image_atomic(edit(load_image(src), **edit_kwargs), dst)
            except ImageLoadError as err:
                summary.failed.append((src, str(err)))
            except Exception as err:  # one bad file (a NaN result, a full disk) never stops the batch
                summary.failed.append((src, f"{src}: {type(err).__name__}: {err}"))
            else:
                summary.done.append(src)
            bar.set_postfix(done=len(summary.done), failed=len(summary.failed), refresh=False)
    return summary
