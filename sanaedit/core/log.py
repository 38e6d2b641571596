"""Messages: library modules log through `logging.getLogger(__name__)` and never print; the CLI calls `configure`.

`configure(verbosity)` (the CLI's -q / -v): sanaedit's loggers at WARNING (-q), INFO (default) or DEBUG (-v), as
plain `message` lines on stderr (warnings and errors prefixed `warning:` / `error:`), and the third-party noise
(diffusers / transformers warnings, their "Loading weights" / "Writing model shards" bars, accelerate's warnings)
off unless -v. Without `configure` (the Python API) nothing here changes any logging: the application decides.

`quiet_libraries()` applies that choice to diffusers and transformers once they are imported. It never imports
them (the exported runtime runs without them, and `sanaedit --help` should not wait for them): the places that
load or write their models (`formats/torch_folder.load_component`, `core/atomic.atomic_folder`) call it. A leaf: imports
nothing of sanaedit.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

LOGGER = "sanaedit"
LIBRARIES = ("diffusers", "transformers")  # both have utils.logging: set_verbosity_*, enable/disable_progress_bar
QUIET, DEFAULT, VERBOSE = -1, 0, 1
LEVELS = {QUIET: logging.WARNING, DEFAULT: logging.INFO, VERBOSE: logging.DEBUG}

_verbosity: int | None = None  # None: never configured (a library user's own logging setup decides)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a message is logged (a redirected or captured stream too)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Formatter(logging.Formatter):
    """`message`; `warning: message` / `error: message` from WARNING up."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def configure(verbosity: int = DEFAULT) -> int:
    """Set up sanaedit's messages for a command line run: -1 quiet, 0 default, 1 verbose (clamped). Returns the
    level. Called again (tests, several runs in one process) it replaces its own handler, never adds a second."""
    global _verbosity
    _verbosity = max(QUIET, min(VERBOSE, int(verbosity)))
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(LEVELS[_verbosity])
    logger.propagate = False  # the command line owns the process: no second copy through the root logger
    logging.getLogger("accelerate").setLevel(logging.NOTSET if _verbosity >= VERBOSE else logging.ERROR)
    if _verbosity <= QUIET:  # -q: Python's own warnings (torch's, PIL's) are noise too
        import warnings

        warnings.simplefilter("ignore")
    quiet_libraries()
    return LEVELS[_verbosity]


def server_log_level() -> str:
    """uvicorn's log level for this verbosity: its access log with -v, errors only with -q, else warnings."""
    return {QUIET: "error", VERBOSE: "info"}.get(_verbosity, "warning")


def quiet_libraries() -> None:
    """diffusers / transformers: warnings and progress bars through with -v, else errors only and no bars. Only
    libraries already imported are touched, and only after `configure` (a library user's settings stay theirs)."""
    if _verbosity is None:
        return
    for name in LIBRARIES:
        lib = sys.modules.get(f"{name}.utils.logging")
        if lib is None:
            continue
        if _verbosity >= VERBOSE:
            lib.set_verbosity_warning()
            lib.enable_progress_bar()
        else:
            lib.set_verbosity_error()
            lib.disable_progress_bar()


@contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 pointed at stderr while the block runs: for C libraries that printf on stdout (MNN prints
    "The device supports: ..." when it loads), which Python's sys.stdout cannot catch. stdout carries only results
    (`wrote out.png`), so scripts can read it. Process-wide while it lasts: keep the block short."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (AttributeError, OSError, ValueError):  # no stdout to protect (closed, or none at all)
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        _flush_c_stdio()  # what the library buffered goes out now, to stderr, not at exit to the real stdout
        os.dup2(saved, 1)
        os.close(saved)


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library reachable this way (Windows): nothing buffered to lose
        pass
