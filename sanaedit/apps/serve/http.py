"""The server's HTTP connection limits: uvicorn's own options where they exist, a small protocol subclass where not.

uvicorn options used (see `uvicorn_options`): `timeout_keep_alive` (idle connections between requests close),
`h11_max_incomplete_event_size` (request line + headers at most 16 KiB while they arrive), `limit_concurrency`
(connections beyond it are answered 503).

Written here, because uvicorn has no option for them: a **header timeout** (uvicorn's keep-alive timer runs only
between requests and is cancelled by the first byte of the next one, so a client that sends half a request line
and stalls held the connection for ever: slow loris; the same timer cuts off a body still trickling in after its
request was answered, e.g. refused with 503 before reading), and a **per-client connection cap** (`limit_concurrency`
counts all clients together, so one client could use it up and lock everyone else out). The body of an upload has
its own idle and total timeouts in `uploads.py`, where it is read.

Also here: the **header size limit** for headers that arrive whole. h11 checks `max_incomplete_event_size` only
while an event is incomplete, so 100 KB of headers in one read (one loopback send) were parsed and accepted; the
protocol below measures the request line + headers itself and answers **431** beyond `MAX_HEADER_BYTES`.
"""

from __future__ import annotations

import re
from collections import Counter

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
CONNECTIONS_PER_CLIENT = 32  # a browser opens 6 per host
LIMIT_CONCURRENCY = 256
MAX_HEADER_BYTES = 16 * 1024
TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE = f"request line and headers are over the limit of {MAX_HEADER_BYTES // 1024} KiB".encode()
HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TOO_LARGE), _TOO_LARGE)
)
_END_OF_HEADERS = re.compile(rb"\n\r?\n")  # what h11 takes as the blank line that ends them


def guarded_protocol(header_timeout_s: float = HEADER_TIMEOUT_S, per_client: int = CONNECTIONS_PER_CLIENT):
    """An h11 protocol class for one server: each connection must finish its request headers within
    `header_timeout_s` of its first byte (or of connecting), and each client IP may hold `per_client` connections
    (more are closed at once)."""
    open_per_client: Counter[str] = Counter()

    class GuardedH11Protocol(H11Protocol):
        _header_timer = None
        _peer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._peer = self.client[0] if self.client else "?"
            open_per_client[self._peer] += 1
            if open_per_client[self._peer] > per_client:
                self.logger.warning("%s: over %d connections from one client; closed", self._peer, per_client)
                transport.close()
                return
            self._watch_headers()

        def connection_lost(self, exc) -> None:
            if self._peer is not None:
                open_per_client[self._peer] -= 1
                if open_per_client[self._peer] <= 0:
                    del open_per_client[self._peer]
                self._peer = None
            self._stop_watch()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch_headers()

        def handle_events(self) -> None:
            """uvicorn calls this when data came in and after each answer (for pipelined requests): the place to
            refuse headers over the limit before h11 parses them."""
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                buffered = self.conn.trailing_data[0]
                end = _END_OF_HEADERS.search(buffered, 0, MAX_HEADER_BYTES + 2)
                if (end.end() if end else len(buffered)) > MAX_HEADER_BYTES:
                    self.logger.warning("%s: request headers over %d bytes; refused", self._peer, MAX_HEADER_BYTES)
                    self.transport.write(HEADERS_TOO_LARGE)
                    self.transport.close()
                    return
            super().handle_events()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch_headers()

        def _watch_headers(self) -> None:
            """Arm the timer while the server waits on the client alone: a request's headers are incomplete, or the
            answer is sent (e.g. a 503 before reading) and the client is still sending a body that nobody reads;
            disarm it otherwise (a request being answered; an upload being read, which app.py times)."""
            their, ours = self.conn.their_state, self.conn.our_state
            owed = their is h11.IDLE or (their is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE))
            waiting = owed and not self.transport.is_closing()
            if waiting and self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)
            elif not waiting:
                self._stop_watch()

        def _stop_watch(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            their, ours = self.conn.their_state, self.conn.our_state
            owed = their is h11.IDLE or (their is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE))
            if owed and not self.transport.is_closing():
                if ours is h11.IDLE:
                    self.transport.write(TIMEOUT)
                self.transport.close()

    return GuardedH11Protocol


def uvicorn_options(
    header_timeout_s: float = HEADER_TIMEOUT_S,
    connections_per_client: int = CONNECTIONS_PER_CLIENT,
    limit_concurrency: int = LIMIT_CONCURRENCY,
) -> dict:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` with the connection limits above."""
    return {
        "http": guarded_protocol(header_timeout_s, connections_per_client),
        "timeout_keep_alive": 5,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "limit_concurrency": limit_concurrency,
    }
