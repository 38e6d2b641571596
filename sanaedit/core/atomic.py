"""Atomic folder writes: a model, export or checkpoint folder appears whole or not at all, and a failed or killed
writer loses nothing that was there before (its temporaries are named after its process: core/tempfiles.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sanaedit.core.log import quiet_libraries
from sanaedit.core.tempfiles import pid_alive, remove_stale, temp_folder
from sanaedit.errors import ModelFolderError


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target`, on failure it is removed.

    An existing model folder is only moved away once the new one is complete, so a failed save loses nothing.
    """
    target = Path(target)
    quiet_libraries()  # the CLI's verbosity for diffusers / transformers (their "Writing model shards" bars)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(target)
    tmp = temp_folder(target)  # named after this process, so a killed writer's folder is removed by the next one
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is an ordinary shared folder
    try:
        yield tmp
        _share(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _clean_stale(target: Path) -> None:
    """What a killed writer of `target` left beside it: its temporary folders are removed; the previous folder it had
    moved aside (`.NAME.old-PID`) is put back if `target` is missing (killed between the two renames), else
    removed. Folders of writers still running are left alone."""
    remove_stale(target.parent, target.name)
    prefix = f".{target.name}.old-"
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        pid = entry.name[len(prefix) :]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        try:
            if not target.exists():
                os.replace(entry.path, target)
            else:
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue


def _umask() -> int:
    try:  # read, not set: os.umask(0) would briefly change it for every thread of the process
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


def _share(folder: Path) -> None:
    """Ordinary permissions (0644 / 0755 under the usual umask) for everything written: some writers (safetensors
    >= 0.8) create private 0600 files, which a model folder served or shared by another user could not read."""
    umask = _umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~umask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, (0o777 if os.access(path, os.X_OK) else 0o666) & ~umask)


def copy_folder(source: Path | None, target: Path) -> Path:
    """Copy a whole folder (an exported model is already its deployable form), atomically."""
    if source is None or not Path(source).is_dir():
        raise ModelFolderError(f"nothing to copy: the pipeline's folder {source} does not exist")
    if Path(target).resolve() == Path(source).resolve():
        return Path(target)
    with atomic_folder(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return Path(target)
