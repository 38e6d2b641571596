"""Edit many photos (a folder, or files named on the command line): keep names, skip what is done, write
atomically, never stop for one bad file. The CLI's single-file, many-file and folder modes all run `edit_files`.

Outputs are PNG (lossless: a comic's flat colours and ink lines band and ring in JPEG; every input format we read
that is lossless converts to PNG without loss too) at the input's relative path with the suffix replaced:
`in/trip/a.jpg -> out/trip/a.png`. Two inputs that would share an output (`a.jpg` and `a.png`) keep their whole
name instead: `a.jpg.png`, `a.png.png`. With `resume`, an output that already exists is skipped; outputs are
written atomically, so an existing output is always a complete one.

Masks (`edit --mask-dir DIR`): the mask of `in/trip/a.jpg` is `DIR/trip/a.png`, the input's relative path with the
suffix `.png` (`find_mask`; for files named one by one, `DIR/a.png`). A photo without one is edited whole, and a
warning names it. `per_file(source) -> dict` gives each edit its own keyword arguments (its mask).

Nothing vanishes from the summary: an entry with an image extension that is no readable photo (a FIFO, a device,
a dangling link, a link loop) fails with its reason, a sub-folder that cannot be read fails, other entries are
counted as ignored. Outputs that cannot be written (a file where the folder should be, no permission, a read-only
disk) are refused before any edit; a disk that fills up stops the batch, with every input not attempted listed.

Many processes (`accelerate launch -m sanaedit.apps.cli edit DIR -o OUT`, or torchrun): process 0 plans the batch
exactly as one process would (names, collisions, --resume's skips) and hands the plan to all; process i edits every n-th
file of it from the i-th (`processes.py`: disjoint, the same on every run); the results are gathered, so every
process ends with the one-process summary (in the one-process order). A failure in one process before the edits
(its model does not load) stops them all with its reason; one file's failure is that file's, as in one process.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from sanaedit.apps.processes import Processes
from sanaedit.errors import ImageLoadError
from sanaedit.image.folders import list_folder
from sanaedit.image.io import load_image, remove_stale_temps, save_image_atomic

# a write failing with one of these fails for every later output too: the batch stops and lists what is left
OUTPUT_GONE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}

logger = logging.getLogger(__name__)


@dataclass
class BatchSummary:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # no image extension, or a symlinked folder (not walked)

    def report(self) -> str:
        done, skipped, failed = len(self.done), len(self.skipped), len(self.failed)
        lines = [f"done: {done} written, {skipped} skipped (already done), {failed} failed"]
        if self.ignored:
            lines[0] += f"; {len(self.ignored)} other file(s) ignored (no image extension, or a linked folder)"
        lines += [f"  failed: {reason}" for _, reason in self.failed]
        return "\n".join(lines)


def check_output_folder(folder: str | Path) -> None:
    """Refuse a folder that outputs cannot be written into (before any edit): a file on the way, a dangling link,
    no write permission, a read-only disk. ValueError names the path and the problem."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():
            raise ValueError(f"{existing}: is a broken symbolic link, not a folder; choose another output")
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing}: is a file, not a folder; choose another output")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{existing}: cannot write there (permission denied, or a read-only disk)")


def check_outputs(outputs: Iterable[Path]) -> None:
    """`check_output_folder` for the folder of every output."""
    for folder in sorted({Path(p).parent for p in outputs}):
        check_output_folder(folder)


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


def find_mask(mask_dir: Path, source: Path, in_dir: Path | None = None) -> Path | None:
    """The mask of `source` in `mask_dir`: its path relative to `in_dir` (or its name) with the suffix `.png`, if
    that file exists."""
    mask = Path(mask_dir) / (source.relative_to(in_dir) if in_dir else Path(source.name)).with_suffix(".png")
    return mask if mask.is_file() else None


def edit_folder(
    edit: Callable[..., Image.Image],
    in_dir: str | Path,
    out_dir: str | Path,
    recursive: bool = False,
    resume: bool = False,
    progress: bool = True,
    processes: Processes | None = None,
    per_file: Callable[[Path], dict] | None = None,
    **edit_kwargs,
) -> BatchSummary:
    """Run `edit(image, **edit_kwargs) -> PIL image` (e.g. a SanaEditPipeline) on every image in `in_dir`.
    `processes`: this process's share of the batch when several share it (see the module's docstring);
    `per_file(source)`: keyword arguments for that file's edit alone (its failure is that file's)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)

    def plan_folder() -> tuple[BatchSummary, dict[Path, Path]]:
        if not in_dir.is_dir():
            raise FileNotFoundError(f"{in_dir}: input folder not found")
        if out_dir.resolve() == in_dir.resolve():
            raise ValueError(
                f"{out_dir}: the output folder must differ from the input folder (outputs would replace inputs)"
            )
        if recursive and in_dir.resolve() in out_dir.resolve().parents:
            raise ValueError(f"{out_dir}: the output folder must not be inside the input folder for a recursive walk")
        check_output_folder(out_dir)
        listing = list_folder(in_dir, recursive)
        summary = BatchSummary(ignored=listing.others, failed=list(listing.unreadable))
        plan = plan_outputs(listing.images, in_dir, out_dir)
        return _plan_files(listing.images, plan, resume, summary)

    processes = processes or Processes()
    summary, todo = processes.from_main(plan_folder)  # one plan, made once, for every process
    return _edit_planned(edit, summary, todo, progress, processes, per_file, **edit_kwargs)


def _real(path: Path) -> str:
    return os.path.realpath(path)  # unlike Path.resolve, never raises (a link loop is listed, and fails later)


def _write_error(src: Path, dst: Path, err: OSError) -> str:
    return f"{src}: cannot write {dst}: {err.strerror or err}"


def edit_files(
    edit: Callable[..., Image.Image],
    sources: list[Path],
    plan: dict[Path, Path],
    resume: bool = False,
    progress: bool = True,
    summary: BatchSummary | None = None,
    processes: Processes | None = None,
    per_file: Callable[[Path], dict] | None = None,
    **edit_kwargs,
) -> BatchSummary:
    """Edit each source into its planned output; a source without a plan entry is reported as a name collision,
    an output that is one of the inputs is refused (never overwrite a photo), any failure of one file is recorded
    and the rest go on. Outputs that cannot be written at all are refused first (ValueError, before any edit); a
    full disk stops the batch and lists the inputs not attempted. `processes`, `per_file`: as in `edit_folder`."""
    processes = processes or Processes()
    planned = processes.from_main(lambda: _plan_files(sources, plan, resume, summary))
    return _edit_planned(edit, *planned, progress, processes, per_file, **edit_kwargs)


def _plan_files(
    sources: list[Path], plan: dict[Path, Path], resume: bool, summary: BatchSummary | None
) -> tuple[BatchSummary, dict[Path, Path]]:
    """(summary so far, {source: output} still to edit): `edit_files`'s checks, made before any edit."""
    summary = summary or BatchSummary()
    check_outputs(plan.values())
    for folder in {dst.parent for dst in plan.values()}:
        remove_stale_temps(folder)  # temporaries of a killed earlier run
    inputs = {_real(src) for src in sources}
    todo = {}
    for src in sources:
        dst = plan.get(src)
        if dst is None:
            summary.failed.append((src, f"{src}: its output name collides with another input's; rename it"))
        elif _real(dst) in inputs:
            summary.failed.append((src, f"{dst}: is an input photo; refusing to overwrite it (choose another output)"))
        elif resume and dst.is_file():
            summary.skipped.append(src)
        else:
            todo[src] = dst
    return summary, todo


def _edit_planned(
    edit: Callable[..., Image.Image],
    summary: BatchSummary,
    todo: dict[Path, Path],
    progress: bool,
    processes: Processes,
    per_file: Callable[[Path], dict] | None = None,
    **edit_kwargs,
) -> BatchSummary:
    """Edit this process's share of `todo`; every process's results are gathered into `summary`, in todo order."""
    mine = processes.share(list(enumerate(todo.items())))  # [(place in todo, (source, output))]
    results: list[tuple[int, Path, str | None]] = []  # (place, source, why it failed; None: written)
    counts = Counter(done=len(summary.done), failed=len(summary.failed))

    bars = []  # the progress bar, once open: its postfix counts each file as soon as it is done or failed

    def record(i: int, src: Path, reason: str | None) -> None:
        results.append((i, src, reason))
        counts["done" if reason is None else "failed"] += 1
        for bar in bars:
            bar.set_postfix(done=counts["done"], failed=counts["failed"], refresh=False)

    # one bar over the work actually left, so its rate and ETA mean something on a resumed run; with several
    # processes, only process 0's (over its share): one bar per terminal, never interleaved
    desc = f"editing (process 0 of {processes.count})" if processes.many else "editing"
    show = progress and processes.main
    with tqdm(mine, desc=desc, unit="image", disable=not show, dynamic_ncols=True) as bar:
        bars.append(bar)
        for k, (i, (src, dst)) in enumerate(bar):
            if processes.many:
                logger.debug(f"process {processes.index} of {processes.count}: editing {src}")
            try:
                result = edit(load_image(src), **edit_kwargs, **(per_file(src) if per_file else {}))
            except ImageLoadError as err:
                record(i, src, str(err))
                continue
            except MemoryError:
                record(i, src, f"{src}: out of memory while editing it")
                continue
            except Exception as err:  # one bad file (a NaN result) never stops the batch
                record(i, src, f"{src}: {type(err).__name__}: {err}")
                continue
            try:
                start = time.perf_counter()
                save_image_atomic(result, dst)
                logger.debug(f"write {dst}: {time.perf_counter() - start:.2f} s")
            except OSError as err:
                record(i, src, _write_error(src, dst, err))
                if err.errno in OUTPUT_GONE:  # every later output would fail the same way, after its edit
                    why = f"not attempted: outputs cannot be written ({err.strerror}); fix it, rerun with --resume"
                    for j, (left, _) in mine[k + 1 :]:
                        record(j, left, f"{left}: {why}")
                    break
            except Exception as err:
                record(i, src, f"{src}: {type(err).__name__}: {err}")
            else:
                record(i, src, None)
    # every process reaches this, whatever failed in its share
    gathered = [r for part in processes.gather(results) for r in part]
    for _, src, reason in sorted(gathered, key=lambda r: r[0]):
        if reason is None:
            summary.done.append(src)
        else:
            summary.failed.append((src, reason))
    return summary
