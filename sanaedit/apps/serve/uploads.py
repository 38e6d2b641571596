"""Reading an upload: the raw request body (the page, `curl --data-binary @photo.jpg`), or the `image` field of a
multipart/form-data body (`curl -F image=@photo.jpg`, requests' `files=`, an HTML form).

Both are read in chunks under the same limits: the total size (413, counted while reading, so an oversized body is
never held whole), an idle timeout and a total timeout (408). A multipart body is parsed as it streams in
(python-multipart's streaming parser) and only the `image` part's bytes are kept (and those of the optional fields
a caller names, e.g. `control_image`); other fields are skipped. Nothing
is written to disk: starlette's `request.form()` would spool large files to a temporary file and has no cap on a
file's size, so it is not used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import HTTPException, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

FIELD = b"image"
# the parser walks each part's boundary and headers in Python: 25 MB of tiny parts held the event loop ~4 s
MAX_PARTS = 16
_CLOSE = {"Connection": "close"}  # a stalled upload's connection is closed, not drained


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    timeout_s: float = 120.0
    idle_s: float = 15.0


async def body_chunks(request: Request, limits: UploadLimits) -> AsyncIterator[bytes]:
    """The request body's chunks: 413 as soon as it is over `max_bytes` (or says so in Content-Length), 408 when no
    data comes for `idle_s` or the body is not finished within `timeout_s`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise HTTPException(413, f"upload is {int(declared):,} bytes; the limit is {limits.max_bytes:,}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.timeout_s
    size = 0
    stream = request.stream().__aiter__()
    while True:
        wait = min(limits.idle_s, deadline - loop.time())
        try:  # a stalled upload must not hold its place: it must keep sending, and finish in time
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                chunk = await anext(stream, None)
        except TimeoutError:
            if loop.time() >= deadline - 0.01:
                message = f"upload not finished within {limits.timeout_s:g} s"
            else:
                message = f"upload stalled: no data for {limits.idle_s:g} s"
            raise HTTPException(408, message, headers=_CLOSE) from None
        if chunk is None:
            return
        size += len(chunk)
        if size > limits.max_bytes:
            raise HTTPException(413, f"upload is over the limit of {limits.max_bytes:,} bytes")
        if chunk:
            yield chunk


async def read_upload(request: Request, limits: UploadLimits) -> tuple[bytes, str]:
    """(the image's bytes, the file name the client gave with a multipart upload, else "")."""
    body, filename, _ = await read_upload_fields(request, limits)
    return body, filename


async def read_upload_fields(
    request: Request, limits: UploadLimits, optional: tuple[bytes, ...] = ()
) -> tuple[bytes, str, dict[bytes, bytes]]:
    """`read_upload`, and the bytes of the `optional` fields a multipart upload has (e.g. a control image), under
    the same limits (the whole body counts)."""
    kind, params = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data":
        return b"".join([chunk async for chunk in body_chunks(request, limits)]), "", {}
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary in its Content-Type")
    form = _ImageField(optional)
    try:
        parser = MultipartParser(boundary, form.callbacks())
        async for chunk in body_chunks(request, limits):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        raise HTTPException(400, f"malformed multipart body ({err})") from None
    if not form.ended:
        raise HTTPException(400, "malformed multipart body (it ends before its closing boundary)")
    if form.data is None:
        raise HTTPException(400, "multipart upload has no `image` field: send the photo as image=@photo.jpg")
    return b"".join(form.data), form.filename, {name: b"".join(data) for name, data in form.extra.items()}


class _ImageField:
    """Callbacks for python-multipart's parser that keep the `image` part's bytes and file name, and the bytes of
    the `optional` fields, nothing else."""

    def __init__(self, optional: tuple[bytes, ...] = ()):
        self.optional, self.extra = optional, {}
        self._into: list[bytes] | None = None  # the part being read, when it is one we keep
        self.data: list[bytes] | None = None
        self.filename = ""
        self.ended = False
        self._header: list[bytes] = []
        self._value: list[bytes] = []
        self._disposition = b""
        self._parts = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header.append(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.append(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition, self._into = b"", None
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise HTTPException(400, f"more than {MAX_PARTS} fields in one multipart upload")

    def _header_end(self) -> None:
        if b"".join(self._header).lower() == b"content-disposition":
            self._disposition = b"".join(self._value)
        self._header, self._value = [], []

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._disposition)
        name = params.get(b"name")
        if name in self.optional:
            if name in self.extra:
                raise HTTPException(400, f"more than one `{name.decode()}` field")
            self._into = self.extra[name] = []
            return
        if name != FIELD:
            return
        if self.data is not None:
            raise HTTPException(400, "more than one `image` field: send one photo per request")
        self.data = self._into = []
        self.filename = params.get(b"filename", b"").decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._into is not None:
            self._into.append(data[start:end])

    def _end(self) -> None:
        self.ended = True
