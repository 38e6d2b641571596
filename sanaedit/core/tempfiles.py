"""Temporary files and folders that a killed process cannot leave behind for good.

Every atomic write (an output image, a model or export folder) goes through a hidden temporary beside its target,
named `.NAME.PID.RANDOM.tmp`: the writer's process id is in the name. A process killed with SIGKILL (or a power cut)
cannot remove its own temporaries, so the next writer into the same folder removes the ones whose process is gone
(`remove_stale`). A temporary of a process that is still running is never touched, so two writers (two batch runs,
a server and a batch run) can share a folder. The check is by process id on this machine: on a folder shared over
the network, a temporary from another machine is only removed once it is also older than `REMOTE_GRACE_S`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# `.NAME.PID.RANDOM.tmp`; RANDOM is what tempfile adds (8 characters), optionally `@HOST` before `.tmp`
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<rand>[a-z0-9_]{8})(?:@(?P<host>[^./]+))?\.tmp$")
# what versions before the process tag wrote: `.NAME.RANDOM.tmp` (no owner to ask: removed once a day old)
_UNTAGGED = re.compile(r"^\.(?P<name>.+)\.(?P<rand>[a-z0-9_]{8})\.tmp$")
REMOTE_GRACE_S = 24 * 3600


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def _suffix() -> str:
    return f"@{_host()}.tmp"


def temp_file(target: Path) -> tuple[int, Path]:
    """(fd, path) of a new hidden temporary file beside `target`, tagged with this process."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=_suffix(), dir=target.parent)
    return fd, Path(tmp)


@contextmanager
def replacing(target: Path) -> Iterator[tuple[int, Path]]:
    """(fd, path) of a temporary file beside `target` (`temp_file`) to write; when the block ends well it is made
    readable by all (0644) and renamed over `target`, else removed: `target` is never partly written."""
    fd, tmp = temp_file(target)
    try:
        yield fd, tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_folder(target: Path) -> Path:
    """A new hidden temporary folder beside `target`, tagged with this process."""
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=_suffix(), dir=target.parent))


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return True  # cannot tell: keep its files
    return True


def _old(path: Path) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > REMOTE_GRACE_S
    except OSError:
        return False


def _match(name: str):
    return _TEMP.match(name) or _UNTAGGED.match(name)


def is_stale(path: Path) -> bool:
    """Whether `path` is one of our temporaries whose writer is gone."""
    match = _TEMP.match(path.name)
    if match is None:
        return _UNTAGGED.match(path.name) is not None and _old(path)
    if match["host"] is not None and match["host"] != _host():
        return _old(path)
    return int(match["pid"]) != os.getpid() and not pid_alive(int(match["pid"]))


def remove_stale(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries of dead processes in `folder` (only those for target `name`, if given); returns
    what was removed. Never raises: cleaning up is a courtesy, not a precondition."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        path = Path(entry.path)
        if not is_stale(path):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed
