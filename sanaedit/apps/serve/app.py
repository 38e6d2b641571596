"""The HTTP side: a plain page plus a small JSON API over the job queue.

    GET  /                        the page
    GET  /api/health              {"status": "ok"|"error", "worker": "idle"|"running"|"stopped", "queued": n, ...}
    GET  /api/config              defaults and limits for the page
    POST /api/jobs?steps=&guidance=&seed=&strength=&control=   body: the image bytes, or multipart with an `image`
                                  field (and a `mask`: white = edit; a `control_image` with control=upload) -> 202
    GET  /api/jobs/{id}           state and per-step progress
    DELETE /api/jobs/{id}         cancel a queued or running job
    GET  /api/jobs/{id}/result    the edited PNG (download)
    GET  /device/                 the same edit inside the visitor's browser ("run on this device", device.py)

The upload is the raw request body or a multipart form's `image` field (uploads.py), with an optional `mask` field
(a masked edit, white = edit: the photo's size or aspect ratio; the page's brush sends one), read in chunks up to
the limit (413 beyond) and decoded in memory: nothing the client sends is written to disk or used in a path. Results are
written only in the output folder, under names the server makes (uuid4). A client that closes its connection
mid-upload is logged in one line.

Hostile clients (docs/serving.md): an upload must keep sending (idle timeout) and finish in time (total timeout);
each client may have only a few uploads in progress; decoding is bounded by a memory budget and by the model's own
working size; the Host header must name this server (DNS rebinding); browser writes from other sites are refused
(CSRF); every response carries security headers; an optional access token guards non-loopback use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from sanaedit.apps.serve.apidocs import add_api_docs
from sanaedit.apps.serve.device import add_device_routes
from sanaedit.apps.serve.downloads import download_name, unique_names, zip_stream
from sanaedit.apps.serve.jobs import JobQueue
from sanaedit.apps.serve.limits import ClientSlots, MemoryBudget, release_memory
from sanaedit.apps.serve.security import (
    LOOPBACK_HOSTS,
    TOKEN_PATTERN,
    SameOriginWrites,
    SecurityHeaders,
    TokenAuth,
    new_nonce,
    page_csp,
)
from sanaedit.apps.serve.settings import merge_form_fields, settings_model
from sanaedit.apps.serve.uploads import UploadLimits, read_upload
from sanaedit.core.choices import Control
from sanaedit.core.inputs import check_strength
from sanaedit.errors import ImageLoadError, QueueFull
from sanaedit.image.io import DEFAULT_MAX_ASPECT, decode_cost, decode_image, decode_mask, decode_reduced
from sanaedit.image.masks import check_mask_size

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 25 * 1024 * 1024
log = logging.getLogger("sanaedit.apps.serve")
# what /docs and /openapi.json say the upload is (the handler reads the body itself, so FastAPI cannot infer it)
UPLOAD_BODY = {
    "description": "the photo: its bytes as the body, or a multipart/form-data field `image` (curl -F image=@a.jpg); "
    "multipart may add a `mask` field (-F mask=@m.png): only its white part is edited, the rest keeps the photo's "
    "pixels; it has the photo's size or aspect ratio (else 422), and a masked photo is decoded at full size; and a "
    "`control_image` field with control=upload (a picture that steers the model's ControlNet)",
    "required": True,
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "mask": {"type": "string", "format": "binary"},
                    "control_image": {"type": "string", "format": "binary"},
                },
                "required": ["image"],
            },
            "encoding": {field: {"contentType": "image/*"} for field in ("image", "mask", "control_image")},
        },
    },
}


def create_app(
    edit,
    out_dir: str | Path,
    max_queued: int = 8,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    max_pixels: int = 40_000_000,
    defaults: dict | None = None,
    retry_after: int = 10,
    upload_timeout_s: float = 120.0,
    upload_idle_s: float = 15.0,
    upload_min_rate: float = 4096.0,
    max_uploads: int | None = None,
    uploads_per_client: int | None = None,
    decode_memory_bytes: int = 256 * 2**20,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    work_side: int | None = None,
    allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS,
    token: str | None = None,
    in_browser: dict | None = None,
) -> FastAPI:
    """`edit(image, num_inference_steps=, guidance_scale=, seed=, callback=) -> PIL image` does the work (also given
    `prompt=`, `strength=` (when < 1) and `mask_image=` (a greyscale picture) when a job asks for them).

    Uploads are decoded no larger than `work_side` pixels (default: `edit.work_side`, which `pipeline_editor` sets
    to the model's resolution) and the result is scaled back to the upload's size. `max_uploads` (default twice the
    queue) caps the uploads in progress, `uploads_per_client` (default a quarter of the queue) one client's; an upload
    slower than `upload_min_rate` bytes/s on average (after `MIN_RATE_GRACE_S`) is cut off with 408;
    `decode_memory_bytes` caps concurrent decoding.
    `allowed_hosts`: Host header names accepted (None: any); `token`: required on every request but the health
    check (see `security.TokenAuth`). `in_browser`: the in-browser editor's files for this model
    (`device.device_files`), served under /device/; the page then offers "run on this device", its default where the
    browser can.
    """
    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise ValueError("the access token must be at least 16 characters from A-Z a-z 0-9 . _ ~ -")
    jobs = JobQueue(edit, Path(out_dir), max_queued=max_queued)
    defaults = {"steps": 10, "guidance": 4.5, "seed": 0, **(defaults or {})}
    work_side = work_side or getattr(edit, "work_side", None)
    per_client = uploads_per_client or max(1, max_queued // 4)
    slots, budget = ClientSlots(per_client), MemoryBudget(decode_memory_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        jobs.close()  # let the running edit finish: a thread killed inside torch aborts the process

    from sanaedit import __version__

    # FastAPI's /docs and /redoc load their scripts from a CDN: ours (apidocs.py) is plain HTML from the schema
    app = FastAPI(title="sanaedit", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    add_api_docs(app)
    app.state.jobs, app.state.decode_budget = jobs, budget
    # the last added runs first: security headers on every answer, then Host, then token, then cross-origin writes
    app.add_middleware(SameOriginWrites)
    app.add_middleware(TokenAuth, token=token)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    app.add_middleware(SecurityHeaders)

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        nonce = new_nonce()  # the page's own inline script runs; an injected one would not
        html = (
            (STATIC / "index.html")
            .read_text()
            .replace('<script type="module">', f'<script type="module" nonce="{nonce}">')
        )
        return HTMLResponse(html, headers={"Content-Security-Policy": page_csp(nonce), "Cache-Control": "no-store"})

    @app.get("/api/health")
    def health() -> JSONResponse:
        state = jobs.health()
        ok = state["worker"] != "stopped"
        return JSONResponse({"status": "ok" if ok else "error", **state, "uploading": uploading}, 200 if ok else 503)

    @app.get("/api/config")
    def config() -> dict:
        limits = {"max_upload_bytes": max_upload_bytes, "max_queued": max_queued, "max_pixels": max_pixels}
        return {
            **defaults,
            **limits,
            "max_aspect": max_aspect,
            "uploads_per_client": per_client,
            "in_browser": bool(in_browser),
        }

    add_device_routes(app, in_browser)

    # uploads being read or decoded: at most `max_uploads` at once, so memory stays bounded. They do not hold queue
    # places: uploads trickling in from many addresses must not refuse a finished one its place (issue 30)
    uploading = 0
    max_uploads = max_uploads or 2 * max_queued
    limits = UploadLimits(max_upload_bytes, upload_timeout_s, upload_idle_s, upload_min_rate)

    def decode(body: bytes, label: str, reduce_to: int | None):
        if reduce_to:
            return decode_reduced(body, label, reduce_to, max_pixels=max_pixels, max_aspect=max_aspect)
        return decode_image(body, label, max_pixels=max_pixels, max_aspect=max_aspect), None

    Settings = settings_model(defaults)  # noqa: N806  (a class: the query's and the form's settings)
    text_fields = tuple(Settings.model_fields)

    async def submit(request: Request, query: BaseModel) -> dict:
        """Queue an edit of the uploaded photo. Its settings come as query parameters, or as text fields of a
        multipart upload (a query parameter wins over a field of the same name)."""
        nonlocal uploading
        if jobs.queued >= max_queued:  # refuse before reading: a burst never piles up in memory
            raise HTTPException(503, jobs.full_message, headers={"Retry-After": str(retry_after)})
        if uploading >= max_uploads:
            message = f"{uploading} uploads are in progress, the most this server reads at once; try again shortly"
            raise HTTPException(503, message, headers={"Retry-After": "1"})
        client = request.client.host if request.client else "?"
        if not slots.take(client):  # one client cannot take every place with uploads it never finishes
            message = f"this client already has {per_client} upload(s) in progress; try again when one is done"
            raise HTTPException(503, message, headers={"Retry-After": "1"})
        uploading += 1
        try:
            upload = await read_upload(request, limits, text_fields)
            given = merge_form_fields(query, upload.fields)
            try:
                check_strength(given.strength, given.steps)
            except ValueError as err:
                raise HTTPException(422, str(err)) from None
            body, mask_body, control_body = upload.image, upload.mask, upload.control
            # only ever echoed in messages and download names, never a path
            label = "".join(c for c in (given.name or upload.filename[:200] or "upload") if c.isprintable())
            control = check_control(given.control, control_body is not None)
            # a masked photo is decoded whole: the pixels outside its mask come back exactly, not scaled back up; a
            # photo steered by its edges too: they are found at its own size
            whole = mask_body is not None or control == Control.EDGES
            reduce_to, mask = (None if whole else work_side), None
            control_image = Control.EDGES if control == Control.EDGES else None  # an upload's: decoded below
            try:
                # the header says what decoding costs; decodes wait for room in the memory budget, and run off the
                # event loop (status polls stay answered)
                cost = await run_in_threadpool(
                    decode_cost, body, label, max_pixels=max_pixels, max_aspect=max_aspect, reduce_to=reduce_to
                )
                if mask_body is not None:
                    cost += await run_in_threadpool(decode_cost, mask_body, f"{label} (mask)", max_pixels=max_pixels)
                control_label = f"{label} (control image)"
                if control_body is not None:  # decoded as a photo is, no larger than the model needs
                    cost += await run_in_threadpool(
                        decode_cost, control_body, control_label, max_pixels=max_pixels, max_aspect=max_aspect,
                        reduce_to=work_side,
                    )  # fmt: skip
                async with budget.hold(cost):
                    image, size = await run_in_threadpool(decode, body, label, reduce_to)
                    if mask_body is not None:
                        mask = await run_in_threadpool(decode_mask, mask_body, f"{label} (mask)", max_pixels)
                    if control_body is not None:
                        control_image, _ = await run_in_threadpool(decode, control_body, control_label, work_side)
            except ImageLoadError as err:
                raise HTTPException(415, str(err)) from None
            finally:
                del body, mask_body, control_body, upload
            if mask is not None:
                try:
                    check_mask_size(mask.size, image.size, f"the mask of {label}")
                except ValueError as err:
                    raise HTTPException(422, str(err)) from None
            if cost > 16 * 2**20:
                await run_in_threadpool(release_memory)  # a large decode's pages go back to the system now
            settings = {"num_inference_steps": given.steps, "guidance_scale": given.guidance, "seed": given.seed}
            prompt = given.prompt
            if prompt and prompt.strip() and prompt != defaults.get("prompt"):
                settings["prompt"] = prompt  # else the model's own (its conditioning is cached)
            if given.strength < 1.0:
                settings["strength"] = given.strength  # else a full edit, as before strength existed
            if control != Control.NONE:
                settings["control"] = control  # said on the card and in the PNG; the picture goes with the job
            try:
                job = jobs.submit(image, settings, size, name=label, mask=mask, control=control_image)
            except QueueFull as err:
                raise HTTPException(503, str(err), headers={"Retry-After": str(retry_after)}) from None
        finally:
            uploading -= 1
            slots.give_back(client)
        return described(job)

    # the settings class is made at run time: its annotation must be the object (this module's are strings)
    submit.__annotations__["query"] = Annotated[Settings, Query()]
    app.post("/api/jobs", status_code=202, openapi_extra={"requestBody": UPLOAD_BODY})(submit)

    def check_control(control: str, uploaded: bool) -> str:
        """The page's control picker (none, the photo's edges, an uploaded picture), checked: 400 if it cannot be."""
        if control != Control.NONE and not defaults.get("controlnet"):
            raise HTTPException(400, "this model has no ControlNet: send control=none")
        if (control == "upload") != uploaded:
            raise HTTPException(400, "a control image comes as the multipart field `control_image`, with "
                                "control=upload (and only then)")  # fmt: skip
        return control

    def described(job) -> dict:
        """The job's state, its settings (the page shows them on the card) and its download's file name."""
        given = job.settings
        settings = {"steps": given.get("num_inference_steps"), "guidance": given.get("guidance_scale")}
        settings.update(seed=given.get("seed"), prompt=given.get("prompt"), strength=given.get("strength", 1.0))
        settings["masked"] = job.masked
        if "control" in given:  # an edit steered by the model's ControlNet
            settings["control"] = given["control"]
        filename = download_name(job.name)
        return {**job.public(), "position": jobs.position(job), "settings": settings, "filename": filename}

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str) -> dict:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job (finished jobs are kept for a while, then forgotten)")
        return described(job)

    @app.delete("/api/jobs/{job_id}")
    def cancel(job_id: str) -> JSONResponse:
        """Cancel a queued job (at once) or a running one (at its next denoising step: 202, state `running` until
        then); a finished job answers 409."""
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job (finished jobs are kept for a while, then forgotten)")
        outcome = jobs.cancel(job)
        if outcome in ("done", "failed"):
            raise HTTPException(409, f"this job has already finished ({outcome}); there is nothing to cancel")
        return JSONResponse(described(job), status_code=202 if outcome == "cancelling" else 200)

    @app.get("/api/jobs/{job_id}/result")
    def result(job_id: str):
        job = jobs.get(job_id)
        if job is None or job.state != "done" or job.result is None or not job.result.is_file():
            return JSONResponse({"detail": "no result for this job (yet)"}, status_code=404)
        return FileResponse(job.result, media_type="image/png", filename=download_name(job.name))

    @app.get("/api/results.zip")
    def results_zip(ids: str = Query(..., max_length=100 * 33, description="job ids, comma-separated")):
        """Every finished result among `ids` in one ZIP, each named after its upload (streamed as it is written)."""
        found = [jobs.get(i) for i in dict.fromkeys(ids.split(",")) if i]
        done = [j for j in found if j is not None and j.state == "done" and j.result is not None]
        if not done:
            raise HTTPException(404, "none of these jobs has a result (yet)")
        files = list(zip(unique_names(download_name(j.name) for j in done), (j.result for j in done)))
        headers = {"Content-Disposition": 'attachment; filename="sanaedit-results.zip"'}
        return StreamingResponse(zip_stream(files), media_type="application/zip", headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def went_away(request: Request, exc: ClientDisconnect) -> Response:
        """A client that closes its connection mid-upload is not the server's error: one line, no traceback."""
        client = request.client.host if request.client else "?"
        log.warning("%s closed the connection during %s %s", client, request.method, request.url.path)
        return Response(status_code=400)  # nobody reads it

    return app


def pipeline_editor(pipe):
    """Adapt a SanaEditPipeline to the queue's `edit` signature (a fresh seeded generator per job). Its `work_side`
    tells the server that uploads need not be decoded larger than the model's resolution."""

    def edit(image, num_inference_steps, guidance_scale, seed, callback=None, prompt=None, strength=1.0,
             mask_image=None, control=None, control_image=None):  # fmt: skip
        generator = pipe.flow.arrays.generator(seed)  # torch's on PyTorch networks, noise.Generator on graphs
        return pipe(
            image,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            callback=callback,
            prompt=prompt,
            strength=strength,
            mask_image=mask_image,
            control_image=control_image,  # "edges" or a picture; `control` only names it (the job's settings)
        ).images[0]

    edit.work_side = pipe.config.resolution
    return edit
