"""Web hardening for the server: security headers, cross-origin write protection and an optional access token.

Host checking (DNS rebinding) is starlette's TrustedHostMiddleware, wired in `app.py`. The three pieces here are
written by hand because starlette has no equivalent: its CORSMiddleware only *answers* cross-origin requests (a
cross-origin `text/plain` POST is a "simple" request that no preflight stops), and it has no header or token
middleware. All three are plain ASGI middleware (no BaseHTTPMiddleware: uploads stream through untouched).
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

TOKEN_COOKIE = "sanaedit_token"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{16,}")  # safe in a cookie and a URL as it is
# For responses that are not the page (JSON, PNG): nothing may run, load or frame them.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# Other HTML (e.g. API docs) may load its own scripts, but is never framed and gets no plugins or <base>.
HTML_CSP = "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"


def page_csp(nonce: str) -> str:
    """The page's policy: its own inline script (by nonce), the scripts and styles it shares with the in-browser
    page (/device/, from this server), images from the server or the photo the user picked (blob:), requests to
    this server only, never framed."""
    return (
        f"default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _reply(send, status: int, body: dict | str, headers: list | None = None) -> None:
    is_html = isinstance(body, str)
    payload = body.encode() if is_html else json.dumps(body).encode()
    kind = b"text/html; charset=utf-8" if is_html else b"application/json"
    head = [(b"content-type", kind), (b"content-length", str(len(payload)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})


class SecurityHeaders:
    """X-Content-Type-Options, X-Frame-Options, Referrer-Policy, Cross-Origin-*-Policy and a Content-Security-Policy
    on every response (a route that sets its own CSP, like the page, keeps it). COOP `same-origin` with COEP
    `require-corp` makes the pages cross-origin isolated (everything they load is this server's, marked
    same-origin by CORP): the in-browser editor (device.py) then gets WebAssembly threads."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                html = any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers)
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-embedder-policy", b"require-corp"),
                    (b"cross-origin-resource-policy", b"same-origin"),
                    (b"content-security-policy", (HTML_CSP if html else DEFAULT_CSP).encode()),
                ]
                headers += [(k, v) for k, v in extra if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SameOriginWrites:
    """Refuse (403) a state-changing request that a browser sent from another site (CSRF): a page elsewhere can POST
    `text/plain` here without any preflight. Browsers say where a request comes from: `Sec-Fetch-Site`, else
    `Origin` compared with `Host` (the scheme Go's net/http CrossOriginProtection uses). Requests without either
    header do not come from a browser page (curl, scripts) and pass."""

    UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in self.UNSAFE and not self.allowed(scope):
            return await _reply(send, 403, {"detail": "cross-origin request refused (it came from another site)"})
        await self.app(scope, receive, send)

    @staticmethod
    def allowed(scope) -> bool:
        site = _header(scope, b"sec-fetch-site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = _header(scope, b"origin")
        if origin is None:
            return True
        host = _header(scope, b"host")
        return origin != "null" and host is not None and urlsplit(origin).netloc.lower() == host.lower()


class TokenAuth:
    """With a token, every request but `/api/health` must carry it: `Authorization: Bearer TOKEN`, or the cookie the
    server sets when the page is opened once as `/?token=TOKEN` (HttpOnly, SameSite=Strict; the address bar then
    drops the token). Without a token (loopback use) this passes everything."""

    OPEN_PATHS = {"/api/health"}

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token

    def _valid(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    async def __call__(self, scope, receive, send):
        if self.token is None or scope["type"] != "http" or scope["path"] in self.OPEN_PATHS:
            return await self.app(scope, receive, send)
        auth = _header(scope, b"authorization") or ""
        if auth.lower().startswith("bearer ") and self._valid(auth[7:].strip()):
            return await self.app(scope, receive, send)
        cookie = SimpleCookie()
        try:
            cookie.load(_header(scope, b"cookie") or "")
        except Exception:  # a malformed cookie header is no credential
            cookie = SimpleCookie()
        if TOKEN_COOKIE in cookie and self._valid(cookie[TOKEN_COOKIE].value):
            return await self.app(scope, receive, send)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["path"] == "/" and scope["method"] == "GET" and self._valid((query.get("token") or [None])[0]):
            value = f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
            headers = [(b"location", b"/"), (b"set-cookie", value.encode()), (b"cache-control", b"no-store")]
            return await _reply(send, 303, "", headers)
        if scope["path"].startswith("/api/"):
            return await _reply(send, 401, {"detail": "this server needs its access token (Authorization: Bearer)"})
        page = (
            "<!doctype html><title>sanaedit</title><p>This server needs its access token: open the address it "
            "printed when it started (<code>http://HOST:PORT/?token=...</code>).</p>"
        )
        return await _reply(send, 401, page)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(value: str | None) -> str | None:
    """`--token` (or SANAEDIT_TOKEN): None, a token, or 'auto' for a fresh random one."""
    import os

    value = value if value is not None else os.environ.get("SANAEDIT_TOKEN") or None
    if value == "auto":
        return secrets.token_urlsafe(24)
    if value is not None and not TOKEN_PATTERN.fullmatch(value):
        raise ValueError("--token: use at least 16 characters from A-Z a-z 0-9 . _ ~ - (or 'auto')")
    return value


def host_policy(bind: str, token: str | None, extra_hosts=()) -> tuple[list[str] | None, str | None]:
    """(the Host header names to accept, or None for any; a warning to print, or None) for a server listening on
    `bind`. Loopback: only this machine's names, so a page from elsewhere cannot reach it through DNS rebinding.
    One address: that address and the loopback names. All interfaces (0.0.0.0, ::): any name unless
    `extra_hosts` lists them. Reachable from other machines without a token: a warning."""
    extra = list(extra_hosts or ())
    if is_loopback(bind):
        return [*LOOPBACK_HOSTS, *extra], None
    everywhere = bind in ("0.0.0.0", "::", "")
    own = [] if everywhere else [f"[{bind}]" if ":" in bind else bind]
    hosts = None if everywhere and not extra else [*LOOPBACK_HOSTS, *own, *extra]
    if token is not None:
        return hosts, None
    warning = (
        f"warning: listening on {bind or 'all interfaces'}, reachable from other machines, WITHOUT an access token: "
        "anyone who can reach this port can upload photos and download every result. Use --token auto (or set "
        "SANAEDIT_TOKEN) to require a token."
    )
    if hosts is None:
        warning += " Any Host name is accepted; --allowed-host NAME restricts it."
    return hosts, warning
