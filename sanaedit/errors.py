"""The project's error types, in one place: each says in one line what is wrong and what to do, and the CLI
prints it as one line. All but the two process-level ones are ValueErrors (bad input, not bugs)."""

from __future__ import annotations


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete or inconsistent."""


class ImageLoadError(ValueError):
    """An input that is not a usable image; the message names the file and the problem."""


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot be read (the message names it)."""


class LoraError(ValueError):
    """A LoRA file that is missing, unreadable or does not fit the model; the message names it."""


class DataError(ValueError):
    """A missing, unreadable or malformed sample; the message names the file and the record."""


class MissingExtra(ImportError):
    """A command needs a package that only an install extra brings (core/extras.py names which)."""


class QueueFull(Exception):
    """No room for another job right now (HTTP 503)."""


class OtherProcessFailed(RuntimeError):
    """Raised in processes other than 0 when some process failed at a meeting point: process 0 says why."""


def first_line(err: BaseException) -> str:
    """A library error in one line for a user's message: its first line, or its type when it has no text."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
