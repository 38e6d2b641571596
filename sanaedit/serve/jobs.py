"""A bounded queue of edit jobs run one at a time by one worker thread on one model instance.

One model instance because a second copy of the weights would double memory for no speed (the CPU is already
busy with one edit); a bounded queue so a burst of uploads gets a fast 503 instead of unbounded memory and
latency. Results live on disk in the output folder under server-made names; only small records stay in memory.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..image_io import save_image_atomic


class QueueFull(Exception):
    """No room for another job right now (HTTP 503)."""


@dataclass(eq=False)  # a job is itself: compare by identity, never field by field (pixels included)
class Job:
    id: str
    settings: dict
    state: str = "queued"  # queued -> running -> done | failed
    step: int = 0
    total: int = 0
    error: str = ""
    created: float = field(default_factory=time.time)
    image: Image.Image | None = None  # dropped as soon as the job has run
    result: Path | None = None

    def public(self) -> dict:
        return {
            "id": self.id,
            "state": self.state,
            "step": self.step,
            "total": self.total,
            "error": self.error,
            "result": f"/api/jobs/{self.id}/result" if self.state == "done" else None,
        }


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
        self._worker = threading.Thread(target=self._run, name="sanaedit-worker", daemon=True)
        self._worker.start()

    def submit(self, image: Image.Image, settings: dict) -> Job:
        if self._closing:
            raise QueueFull("the server is shutting down")
        job = Job(id=uuid.uuid4().hex, settings=settings, image=image, total=settings.get("num_inference_steps", 0))
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

    @property
    def queued(self) -> int:
        return self._pending.qsize()

    @property
    def full_message(self) -> str:
        return f"{self._pending.maxsize} jobs are already waiting; try again shortly"

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
                return
            job.state = "running"

            def on_step(i: int, total: int, job: Job = job) -> None:
                job.step, job.total = i, total

            try:
                result = self.edit(job.image, callback=on_step, **job.settings)
                path = save_image_atomic(result, self.out_dir / f"{job.id}.png")
            except Exception as err:  # a failed job is reported to its client; the worker keeps serving
                job.state, job.error = "failed", f"{type(err).__name__}: {err}"
            else:
                job.result, job.state = path, "done"
            finally:
                job.image = None
                self._prune()

    def _prune(self) -> None:
        """Forget the oldest finished jobs (and delete their files) beyond `keep_results`."""
        with self._lock:
            finished = [j for j in self._jobs.values() if j.state in ("done", "failed")]
            for job in finished[: max(0, len(finished) - self.keep_results)]:
                if job.result is not None:
                    job.result.unlink(missing_ok=True)
                del self._jobs[job.id]
