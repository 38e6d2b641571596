"""`GET /docs`: the API reference as one plain HTML page, made from the app's own OpenAPI schema (`/openapi.json`).

FastAPI's Swagger UI and ReDoc pages load their scripts from a CDN: opening them would send requests off this
machine, and they would not work offline. This page is self-contained: no script, no outside request.
"""

from __future__ import annotations

from html import escape

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:980px;margin:2rem auto;padding:0 1rem;color:#222}"
    "h2{font-size:1.05rem;margin:1.6rem 0 .3rem}code{background:#f4f4f6;padding:0 .25rem;border-radius:3px}"
    ".m{display:inline-block;min-width:3.5rem;font-weight:600}table{border-collapse:collapse;margin:.4rem 0}"
    "td,th{border-bottom:1px solid #ddd;padding:.2rem .6rem;text-align:left;vertical-align:top;font-size:.9rem}"
)


def _constraints(schema: dict) -> str:
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<",
              "maxLength": "length <=", "minLength": "length >="}  # fmt: skip
    parts = [schema.get("type", "")] + [f"{op} {schema[k]}" for k, op in bounds.items() if k in schema]
    return ", ".join(p for p in parts if p)


def render(spec: dict) -> str:
    info = spec.get("info", {})
    out = [
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{escape(info.get('title', 'API'))} API</title>",
        f"<style>{STYLE}</style><h1>{escape(info.get('title', 'API'))} API {escape(str(info.get('version', '')))}</h1>",
        '<p>The JSON API the page uses; errors are JSON <code>{"detail": ...}</code> with the HTTP status. '
        'Machine-readable: <a href="/openapi.json">/openapi.json</a>. Back to <a href="/">the page</a>.</p>',
    ]
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            out.append(f"<h2><span class=m>{method.upper()}</span> <code>{escape(path)}</code></h2>")
            text = op.get("description") or op.get("summary") or ""
            if text:
                out.append(f"<p>{escape(text)}</p>")
            params = op.get("parameters", [])
            if params:
                out.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>default</th></tr>")
                for prm in params:
                    schema = prm.get("schema", {})
                    default = schema.get("default", "required" if prm.get("required") else "")
                    out.append(
                        f"<tr><td><code>{escape(prm['name'])}</code></td><td>{escape(prm.get('in', ''))}</td>"
                        f"<td>{escape(_constraints(schema))}</td><td>{escape(str(default))}</td></tr>"
                    )
                out.append("</table>")
            body = op.get("requestBody")
            if body:  # e.g. the upload: its description and each content type it may be sent as
                kinds = ", ".join(f"<code>{escape(kind)}</code>" for kind in body.get("content", {}))
                out.append(f"<p>body: {escape(body.get('description', ''))} ({kinds})</p>")
            codes = ", ".join(f"{c} {r.get('description', '')}" for c, r in op.get("responses", {}).items())
            out.append(f"<p>responses: {escape(codes)}</p>")
    return "\n".join(out) + "\n</html>\n"


def add_api_docs(app: FastAPI, path: str = "/docs") -> None:
    """Serve the reference at `path` (the schema is made once, on first use)."""
    page: list[str] = []

    @app.get(path, response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        if not page:
            page.append(render(app.openapi()))
        return HTMLResponse(page[0])
