"""A bounded queue of edit jobs run one at a time by one worker thread on one model instance.

One model instance because a second copy of the weights would double memory for no speed (the CPU is already
busy with one edit); a bounded queue so a burst of uploads gets a fast 503 instead of unbounded memory and
latency. Results live on disk in the output folder under server-made names; only small records stay in memory.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sanaedit.apps.serve.limits import release_memory
from sanaedit.errors import QueueFull
from sanaedit.image.io import remove_stale_temps, save_image_atomic

log = logging.getLogger("sanaedit.apps.serve")
_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[/\\][^\s'\"/\\:]+)+[/\\]?")


@dataclass(eq=False)  # a job is itself: compare by identity, never field by field (pixels included)
class Job:
    id: str
    settings: dict
    state: str = "queued"  # queued -> running -> done | failed; queued or running -> cancelled
    step: int = 0
    total: int = 0
    error: str = ""
    created: float = field(default_factory=time.time)
    image: Image.Image | None = None  # dropped as soon as the job has run
    mask: Image.Image | None = None  # a masked edit's mask (white = edit), dropped with the image
    masked: bool = False  # whether it came with a mask (its card and its PNG say so once the mask is dropped)
    control: Any = None  # a ControlNet's control image ("edges" or a picture), dropped with the image
    size: tuple[int, int] | None = None  # the upload's own size, when `image` was decoded smaller
    result: Path | None = None
    name: str = ""  # the upload's file name, as the client gave it: the download is named after it (never a path)
    cancel: bool = False  # asked to stop: the worker checks it at each denoising step

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def public(self) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "step": self.step,
            "total": self.total,
            "error": self.error,
            "result": f"/api/jobs/{self.id}/result" if self.state == "done" else None,
        }


class Cancelled(Exception):
    """Raised from the step callback of a job asked to stop: the pipeline ends at that step."""


def png_text(job: Job) -> dict[str, str]:
    """What made the result, in its PNG (diffusers' argument names): seed, steps, guidance, prompt, source file."""
    from sanaedit import __version__

    text = {key: str(value) for key, value in job.settings.items() if value is not None}
    text.update({"source": job.name} if job.name else {})
    text.update({"mask": "white = edited, the rest kept"} if job.masked else {})
    return {**text, "Software": f"sanaedit {__version__}"}


class JobQueue:
    def __init__(self, edit: Callable[..., Image.Image], out_dir: Path, max_queued: int = 8, keep_results: int = 100):
        self.edit = edit
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.keep_results = keep_results
        self._pending: queue.Queue[Job] = queue.Queue(maxsize=max_queued)
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._closing = False
        self.running: Job | None = None
        self.running_since = 0.0
        self.failures = 0  # jobs that failed since start (each one logged with its traceback)
        removed = remove_stale_temps(self.out_dir)  # what a killed server left half-written
        if removed:
            log.warning("removed %d temporary file(s) left by a killed process in %s", len(removed), self.out_dir)
        self._worker = threading.Thread(target=self._run, name="sanaedit-worker", daemon=True)
        self._worker.start()

    @property
    def worker_alive(self) -> bool:
        return self._worker.is_alive()

    def submit(
        self,
        image: Image.Image,
        settings: dict,
        size: tuple[int, int] | None = None,
        name: str = "",
        mask: Image.Image | None = None,
        control: Any = None,
    ) -> Job:
        if self._closing:
            raise QueueFull("the server is shutting down")
        if not self.worker_alive:  # never queue a job nobody will run; /api/health says so too
            raise QueueFull("the server's worker has stopped; see the server's log")
        job = Job(id=uuid.uuid4().hex, settings=settings, image=image, total=settings.get("num_inference_steps", 0))
        job.size, job.name, job.mask, job.masked, job.control = size, name, mask, mask is not None, control
        with self._lock:
            try:
                self._pending.put_nowait(job)
            except queue.Full:
                raise QueueFull(self.full_message) from None
            self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """How many jobs run before this one (0 = running or next)."""
        with self._lock:
            waiting = [j for j in self._jobs.values() if j.state == "queued"]
        return waiting.index(job) if job in waiting else 0

    def cancel(self, job: Job) -> str:
        """Stop `job`: a queued one leaves the queue now (state `cancelled`); a running one stops at its next
        denoising step (`cancelling`, then `cancelled`); a finished one cannot be (its state is returned)."""
        with self._lock:
            if job.state == "queued":
                with self._pending.mutex:  # out of the queue now, so its place is free for another upload
                    if job in self._pending.queue:
                        self._pending.queue.remove(job)
                        self._pending.not_full.notify()
                job.state, job.image, job.mask, job.control = "cancelled", None, None, None
                return job.state
            if job.state == "running":
                job.cancel = True
                return "cancelling"
            return job.state

    @property
    def queued(self) -> int:
        return self._pending.qsize()

    def health(self) -> dict:
        """The worker's real state: `stopped` if its thread is gone (jobs would never run), else running or idle."""
        running, since = self.running, self.running_since
        state = "stopped" if not self.worker_alive else "running" if running is not None else "idle"
        health = {"worker": state, "queued": self.queued, "failed_jobs": self.failures}
        if running is not None:  # a job that never ends shows here: its time keeps growing
            health["running_s"] = round(time.monotonic() - since, 1)
        return health

    @property
    def full_message(self) -> str:
        return f"{self._pending.maxsize} jobs are already waiting; try again shortly"

    def stop_accepting(self, reason: str = "the server is stopping") -> None:
        """Take no new jobs (503) and fail the queued ones, so their clients can send them again; the running job
        finishes (`running` is None once it has)."""
        self._closing = True
        while True:
            try:
                job = self._pending.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._drop(job, reason)

    def _drop(self, job: Job, reason: str) -> None:
        job.state, job.error = "failed", f"{reason} before this photo's turn: send it again"
        job.image = job.mask = job.control = None

    def close(self, timeout: float = 60.0) -> None:
        """Finish the running job and stop the worker (queued jobs are dropped), so no thread dies mid-compute."""
        self._closing = True
        try:
            self._pending.put_nowait(None)
        except queue.Full:
            pass
        self._worker.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._pending.get()
            if job is None or self._closing:
                if job is not None:
                    self._drop(job, "the server is stopping")
                return
            try:
                self._run_one(job)
            except BaseException:  # nothing one job does may end the worker (a dead worker strands the queue)
                log.exception("sanaedit worker: unexpected failure around job %s; going on", job.id)

    def _run_one(self, job: Job) -> None:
        with self._lock:  # a cancel between taking it from the queue and here wins
            if job.state != "queued":
                return
            job.state, self.running, self.running_since = "running", job, time.monotonic()

        def on_step(i: int, total: int, job: Job = job) -> None:
            job.step, job.total = i, total
            if job.cancel:
                raise Cancelled

        result = None
        try:
            masked = {} if job.mask is None else {"mask_image": job.mask}
            steered = {} if job.control is None else {"control_image": job.control}
            result = self.edit(job.image, callback=on_step, **job.settings, **masked, **steered)
            job.image = job.mask = job.control = None
            if job.cancel:  # asked after its last step: its result is not wanted either
                raise Cancelled
            if job.size is not None and result.size != tuple(job.size):  # decoded smaller: back to its own size
                result = result.resize(job.size, Image.Resampling.BILINEAR)
            path = save_image_atomic(result, self.out_dir / f"{job.id}.png", text=png_text(job))
        except Cancelled:
            log.info("sanaedit job %s cancelled at step %d", job.id, job.step)
            job.state = "cancelled"
        except BaseException as err:  # a failed job is reported to its client; the worker keeps serving
            self.failures += 1
            log.error("sanaedit job %s failed", job.id, exc_info=True)
            job.state, job.error = "failed", self.public_error(err)
        else:
            job.result, job.state = path, "done"
        finally:
            job.image, job.mask, job.control, result, self.running = None, None, None, None, None
            try:
                self._prune()
            except Exception:  # e.g. an old result that cannot be deleted: logged, never fatal
                log.exception("sanaedit worker: pruning old results failed")
            release_memory()

    def public_error(self, err: BaseException) -> str:
        """What the client is told: the reason, never the server's paths (the log has the full traceback)."""

        def scrub(text: str) -> str:  # an absolute path -> its last part
            return _PATH.sub(lambda m: m.group(0).rstrip("/\\").rsplit("/", 1)[-1].rsplit("\\", 1)[-1], text)

        if isinstance(err, OSError):
            reason = err.strerror or scrub(str(err)) or type(err).__name__
            return f"the server could not finish this job ({reason})"
        text = scrub(str(err))
        return f"{type(err).__name__}: {text}" if text else type(err).__name__

    def _prune(self) -> None:
        """Forget the oldest finished jobs (and delete their files) beyond `keep_results`."""
        with self._lock:
            finished = [j for j in self._jobs.values() if j.finished]
            for job in finished[: max(0, len(finished) - self.keep_results)]:
                del self._jobs[job.id]
                if job.result is not None:
                    try:
                        job.result.unlink(missing_ok=True)
                    except OSError as err:  # logged; the next prune does not try again
                        log.warning("sanaedit: cannot delete old result %s (%s)", job.result.name, err.strerror)
