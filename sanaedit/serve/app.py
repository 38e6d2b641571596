"""The HTTP side: a plain page plus a small JSON API over the job queue.

    GET  /                        the page
    GET  /api/health              {"status": "ok", "queued": n}
    GET  /api/config              defaults and limits for the page
    POST /api/jobs?steps=&guidance=&seed=   body: the image bytes -> 202 {"id", ...}
    GET  /api/jobs/{id}           state and per-step progress
    GET  /api/jobs/{id}/result    the edited PNG (download)

The upload is the raw request body, read in chunks up to the limit (413 beyond) and decoded in memory: nothing the
client sends is written to disk or used in a path. Results are written only in the output folder, under names
the server makes (uuid4).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from ..image_io import ImageLoadError, decode_image
from .jobs import JobQueue, QueueFull

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 25 * 1024 * 1024


def create_app(
    edit,
    out_dir: str | Path,
    max_queued: int = 8,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    max_pixels: int = 40_000_000,
    defaults: dict | None = None,
    retry_after: int = 10,
    upload_timeout_s: float = 120.0,
) -> FastAPI:
    """`edit(image, num_inference_steps=, guidance_scale=, seed=, callback=) -> PIL image` does the work."""
    jobs = JobQueue(edit, Path(out_dir), max_queued=max_queued)
    defaults = {"steps": 10, "guidance": 4.5, "seed": 0, **(defaults or {})}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        jobs.close()  # let the running edit finish: a thread killed inside torch aborts the process

    app = FastAPI(title="sanaedit", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.jobs = jobs

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return (STATIC / "index.html").read_text()

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "queued": jobs.queued}

    @app.get("/api/config")
    def config() -> dict:
        return {**defaults, "max_upload_bytes": max_upload_bytes, "max_queued": max_queued}

    uploading = 0  # uploads being read or decoded: they count against the queue's room, so memory stays bounded

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            raise HTTPException(413, f"upload is {int(declared):,} bytes; the limit is {max_upload_bytes:,}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload_bytes:
                raise HTTPException(413, f"upload is over the limit of {max_upload_bytes:,} bytes")
        return bytes(body)

    @app.post("/api/jobs", status_code=202)
    async def submit(
        request: Request,
        steps: int = Query(defaults["steps"], ge=1, le=50),
        guidance: float = Query(defaults["guidance"], ge=1.0, le=20.0),
        seed: int = Query(defaults["seed"], ge=0, le=2**63 - 1),
        name: str = Query("upload", max_length=200),
    ) -> dict:
        nonlocal uploading
        if jobs.queued + uploading >= max_queued:  # refuse before reading: a burst never piles up in memory
            raise HTTPException(503, jobs.full_message, headers={"Retry-After": str(retry_after)})
        uploading += 1
        try:
            try:  # a stalled upload must not hold its place in the queue forever
                async with asyncio.timeout(upload_timeout_s):
                    body = await read_body(request)
            except TimeoutError:
                raise HTTPException(408, f"upload not finished within {upload_timeout_s:g} s") from None
            label = "".join(c for c in name if c.isprintable())  # only ever echoed in messages, never a path
            try:
                # decoding a large photo takes a while: off the event loop, so status polls stay answered
                image = await run_in_threadpool(decode_image, body, label, max_pixels=max_pixels)
            except ImageLoadError as err:
                raise HTTPException(415, str(err)) from None
            settings = {"num_inference_steps": steps, "guidance_scale": guidance, "seed": seed}
            try:
                job = jobs.submit(image, settings)
            except QueueFull as err:
                raise HTTPException(503, str(err), headers={"Retry-After": str(retry_after)}) from None
        finally:
            uploading -= 1
        return {**job.public(), "position": jobs.position(job)}

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str) -> dict:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job (finished jobs are kept for a while, then forgotten)")
        return {**job.public(), "position": jobs.position(job)}

    @app.get("/api/jobs/{job_id}/result")
    def result(job_id: str):
        job = jobs.get(job_id)
        if job is None or job.state != "done" or job.result is None or not job.result.is_file():
            return JSONResponse({"detail": "no result for this job (yet)"}, status_code=404)
        return FileResponse(job.result, media_type="image/png", filename=f"comic-{job_id[:8]}.png")

    return app


def pipeline_editor(pipe):
    """Adapt a SanaEditPipeline to the queue's `edit` signature (a fresh seeded generator per job)."""
    import torch

    def edit(image, num_inference_steps, guidance_scale, seed, callback=None):
        generator = torch.Generator().manual_seed(seed)
        return pipe(
            image,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            callback=callback,
        ).images[0]

    return edit
