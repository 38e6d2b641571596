"""Folders of photos: which entries are images, listed safely (hidden entries skipped, symlinked folders not walked,
unreadable sub-folders reported) for the batch editor, the training data and the tools."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

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
class Listing:
    images: list[Path] = field(default_factory=list)  # entries with an image extension, whatever they are
    others: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # sub-folders that cannot be listed


def list_folder(folder: Path, recursive: bool = False) -> Listing:
    """Everything under `folder`, hidden entries left out, sorted. An entry with an image extension is listed
    whatever it is (a FIFO, a device, a dangling link, a link loop), so the batch reports it rather than losing it;
    symlinked folders are not walked (no loops) and count as others; a sub-folder that cannot be listed is reported
    in `unreadable`. The folder itself must be listable: ValueError otherwise."""
    listing, pending = Listing(), [Path(folder)]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError as err:
            reason = f"{current}: cannot read this folder ({err.strerror or err})"
            if current == Path(folder):
                raise ValueError(reason) from None
            listing.unreadable.append((current, reason))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                real_dir = entry.is_dir(follow_symlinks=False)
                linked_dir = not real_dir and entry.is_symlink() and path.is_dir()
            except OSError:  # a link loop: neither; it is listed (and fails with its reason) below
                real_dir = linked_dir = False
            if real_dir:
                if recursive:
                    pending.append(path)
            elif linked_dir or path.suffix.lower() not in IMAGE_SUFFIXES:
                listing.others.append(path)
            else:
                listing.images.append(path)
    listing.images.sort()
    listing.others.sort()
    listing.unreadable.sort()
    return listing


def find_files(folder: Path, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """(entries with an image extension, other entries) under `folder`, sorted: see `list_folder`."""
    listing = list_folder(folder, recursive)
    return listing.images, listing.others
