"""`sanaedit serve`'s "run on this device": the in-browser editor (`sanaedit export --format web`'s files) served
under /device/ for the model the server runs, so a visitor's own browser edits the photo and nothing is uploaded.

The files are the web export's (`export/web.web_files`), served from the package and the model's ONNX export as
they are, by name: a request names one of them or gets 404 (no path from the client touches the disk). Every answer
under /device/ carries the page's policy (its scripts, WebAssembly and requests to this server only), and every
answer of the server COOP `same-origin` + COEP `require-corp` (security.SecurityHeaders), which make the page
cross-origin isolated: onnxruntime-web then runs several threads. The page's own files (its CSS and JS) are served
whatever the model, for the server's page shares them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from sanaedit.errors import ModelFolderError
from sanaedit.export.web import CSP, page_files, web_files

log = logging.getLogger("sanaedit.apps.serve")
PREFIX = "/device/"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".md": "text/markdown; charset=utf-8",
    "": "text/plain; charset=utf-8",  # the runtime's LICENSE
}


def device_files(model: str | Path | None, loras=(), vae: str | None = None) -> tuple[dict | None, str | None]:
    """(the web folder's files for the model `sanaedit serve` runs, or None and the reason the page cannot run it
    in a browser). The bundled model runs from its ONNX export; another model must be an ONNX export."""
    from sanaedit.formats.index import EXPORT_CLASS, folder_kind
    from sanaedit.load import BUNDLED_EXPORT

    if loras:
        return (
            None,
            "a LoRA is merged only in PyTorch: export the styled model with --format web to run it in a browser",
        )
    folder = Path(model) if model is not None else BUNDLED_EXPORT
    if folder_kind(folder) != EXPORT_CLASS:
        return None, f"{folder} is not an ONNX export: `sanaedit export {folder} -o DIR-onnx`, then serve DIR-onnx"
    try:
        return web_files(folder, vae, server_page="../"), None
    except ModelFolderError as err:
        return None, str(err)


def add_device_routes(app: FastAPI, files: dict | None) -> None:
    """GET /device/ (the page) and /device/NAME (its files); without `files`, only the page's own CSS and JS."""
    available = files if files is not None else {k: v for k, v in page_files().items() if k != "index.html"}
    headers = {"Content-Security-Policy": f"{CSP}; frame-ancestors 'none'", "Cache-Control": "no-cache"}

    @app.get(PREFIX.rstrip("/"), include_in_schema=False)
    def device_root() -> RedirectResponse:
        return RedirectResponse(PREFIX, status_code=308)  # the page's files are relative to /device/

    @app.get(PREFIX + "{name:path}", include_in_schema=False)
    def device_file(name: str) -> Response:
        content = available.get(name or "index.html")
        if content is None:
            reason = "no such file" if files is not None else "this server's model does not run in a browser"
            return JSONResponse({"detail": reason}, status_code=404)
        media = MEDIA_TYPES.get(Path(name or "index.html").suffix, "application/octet-stream")
        if isinstance(content, bytes):
            return Response(content, media_type=media, headers=headers)
        return FileResponse(content, media_type=media, headers=headers)
