"""Downloads named after the upload, and every result of a session as one ZIP streamed as it is written."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

SUFFIX = "comic"
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"*/:<>?\\|]+')


def download_name(upload_name: str, suffix: str = SUFFIX) -> str:
    """'IMG_0042.JPG' -> 'IMG_0042-comic.png'. The client's name is only a label: path parts, control characters
    and characters that file systems refuse are dropped, the length is capped."""
    base = re.split(r"[/\\]", upload_name or "")[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.strip(".") else base
    stem = _UNSAFE.sub("_", stem).strip(" ._")[:100]
    return f"{stem or 'photo'}-{suffix}.png"


def unique_names(names: Iterable[str]) -> list[str]:
    """Archive member names, each once: a second 'a-comic.png' becomes 'a-comic (2).png'."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name.lower(), 0) + 1
        seen[name.lower()] = count
        if count > 1:
            stem, dot, ext = name.rpartition(".")
            name = f"{stem} ({count}).{ext}" if dot else f"{name} ({count})"
        out.append(name)
    return out


class _Sink(io.RawIOBase):
    """A write-only, unseekable stream whose bytes are taken out as they come (zipfile writes data descriptors)."""

    def __init__(self):
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def drain(self) -> Iterator[bytes]:
        chunks, self.chunks = self.chunks, []
        yield from chunks


def zip_stream(files: Iterable[tuple[str, Path]], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """A ZIP of (name, path) pairs, produced piece by piece: memory stays at one chunk whatever the total size.
    PNGs are already compressed, so members are stored. A file that is gone by now (pruned) is left out."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        for name, path in files:
            try:
                source = open(path, "rb")  # closed by the with below, around the yields
            except OSError:
                continue
            with source, archive.open(name, "w", force_zip64=True) as member:
                while chunk := source.read(chunk_size):
                    member.write(chunk)
                    yield from sink.drain()
            yield from sink.drain()
    yield from sink.drain()
