"""Reading an upload: the raw request body (the page, `curl --data-binary @photo.jpg`), or the `image` field of a
multipart/form-data body (`curl -F image=@photo.jpg`, requests' `files=`, an HTML form, the page with a painted
mask), with an optional `mask` field beside it (a masked edit: white = edit) and an optional `control_image` (the
picture that steers a model's ControlNet).

Both are read in chunks under the same limits: the total size (413, counted while reading, so an oversized body is
never held whole), an idle timeout, a minimum average rate after a short grace and a total timeout (408). The rate is
Apache mod_reqtimeout's `MinRate` idea (nginx has only the idle timeout, `client_body_timeout`; uvicorn, h11 and
hypercorn bound neither): a client trickling a byte now and then never goes idle, yet must not hold an upload place
for the whole total timeout. A multipart body is parsed as it streams in (python-multipart's streaming parser):
the `image`, `mask` and `control_image` parts' bytes are kept, and the text of the fields the caller names (the
job's settings, up to `MAX_FIELD_BYTES` each); other fields are skipped. Nothing is written to disk: starlette's
`request.form()` would spool large files to a temporary file and has no cap on a file's size, so it is not used.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field

from fastapi import HTTPException, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

FIELD, MASK_FIELD, CONTROL_FIELD = b"image", b"mask", b"control_image"
# the parser walks each part's boundary and headers in Python: 25 MB of tiny parts held the event loop ~4 s
MAX_PARTS = 16
MIN_RATE_GRACE_S = 5.0  # a connection's first seconds may be slow (TCP slow start, a phone waking its radio)
MAX_FIELD_BYTES = 8192  # a 2000-character prompt in UTF-8, with room
_CLOSE = {"Connection": "close"}  # a stalled upload's connection is closed, not drained


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    timeout_s: float = 120.0
    idle_s: float = 15.0
    min_rate: float = 0.0  # bytes/s on average, checked from `MIN_RATE_GRACE_S` on (0: no minimum)


async def body_chunks(request: Request, limits: UploadLimits) -> AsyncIterator[bytes]:
    """The request body's chunks: 413 as soon as it is over `max_bytes` (or says so in Content-Length), 408 when no
    data comes for `idle_s`, the average rate falls under `min_rate` after the grace, or the body is not finished
    within `timeout_s`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
        raise HTTPException(413, f"upload is {int(declared):,} bytes; the limit is {limits.max_bytes:,}")
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + limits.timeout_s
    size = 0
    stream = request.stream().__aiter__()
    while True:
        # the time by which the average rate would fall under the minimum if nothing more came
        too_slow_at = start + max(MIN_RATE_GRACE_S, size / limits.min_rate) if limits.min_rate else deadline
        wait = min(limits.idle_s, deadline - loop.time(), too_slow_at - loop.time())
        try:  # a stalled upload must not hold its place: it must keep sending, fast enough, and finish in time
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                chunk = await anext(stream, None)
        except TimeoutError:
            now = loop.time()
            if now >= deadline - 0.01:
                message = f"upload not finished within {limits.timeout_s:g} s"
            elif now >= too_slow_at - 0.01:
                rate = size / max(1e-9, now - start)
                message = f"upload too slow: {rate:,.0f} bytes/s on average; the minimum is {limits.min_rate:,.0f}"
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


@dataclass
class Upload:
    image: bytes
    filename: str = ""  # the file name a multipart upload gave, else ""
    fields: dict[str, str] = field(default_factory=dict)  # a multipart upload's text fields among those asked for
    mask: bytes | None = None  # a multipart upload's `mask` part, when it has one
    control: bytes | None = None  # ... and its `control_image` part


async def read_upload(request: Request, limits: UploadLimits, text_fields: Collection[str] = ()) -> Upload:
    """The image of a raw or multipart upload, and the multipart form's text fields named in `text_fields`."""
    kind, params = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data":
        return Upload(b"".join([chunk async for chunk in body_chunks(request, limits)]))
    boundary = params.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary in its Content-Type")
    form = _FormParts({name.encode() for name in text_fields})
    try:
        parser = MultipartParser(boundary, form.callbacks())
        async for chunk in body_chunks(request, limits):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        raise HTTPException(400, f"malformed multipart body ({err})") from None
    if not form.ended:
        raise HTTPException(400, "malformed multipart body (it ends before its closing boundary)")
    if FIELD not in form.files:
        raise HTTPException(400, "multipart upload has no `image` field: send the photo as image=@photo.jpg")
    mask, control = (b"".join(form.files[name]) if name in form.files else None for name in (MASK_FIELD, CONTROL_FIELD))
    return Upload(b"".join(form.files[FIELD]), form.filename, form.fields, mask, control)


class _FormParts:
    """Callbacks for python-multipart's parser that keep the `image`, `mask` and `control_image` parts' bytes, the
    image's file name, and the text of the fields named in `text_fields`; nothing else."""

    def __init__(self, text_fields: set[bytes]):
        self.files: dict[bytes, list[bytes]] = {}  # `image` / `mask` / `control_image` -> its chunks
        self.filename = ""
        self.fields: dict[str, str] = {}
        self.ended = False
        self._text_fields = text_fields
        self._text: list[bytes] | None = None  # the text field being read
        self._text_name = b""
        self._header: list[bytes] = []
        self._value: list[bytes] = []
        self._disposition = b""
        self._file: bytes | None = None  # the file part being read
        self._parts = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header.append(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.append(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._disposition, self._file, self._text = b"", None, None
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
        if name in self._text_fields:
            if name.decode() in self.fields:
                raise HTTPException(400, f"the field `{name.decode()}` is given twice")
            self._text, self._text_name = [], name
            return
        if name not in (FIELD, MASK_FIELD, CONTROL_FIELD):
            return
        if name in self.files:
            raise HTTPException(400, f"more than one `{name.decode()}` field: send one photo per request")
        self.files[name], self._file = [], name
        if name == FIELD:
            self.filename = params.get(b"filename", b"").decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self.files[self._file].append(data[start:end])
        elif self._text is not None:
            self._text.append(data[start:end])
            if sum(map(len, self._text)) > MAX_FIELD_BYTES:
                raise HTTPException(400, f"the field `{self._text_name.decode()}` is over {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        if self._text is not None:
            try:
                self.fields[self._text_name.decode()] = b"".join(self._text).decode("utf-8")
            except UnicodeDecodeError:
                raise HTTPException(400, f"the field `{self._text_name.decode()}` is not UTF-8 text") from None
            self._text = None

    def _end(self) -> None:
        self.ended = True
