"""Running the app under uvicorn with a graceful stop that delivers the running edit.

On the first SIGTERM or Ctrl-C the server keeps answering but takes no new job (503 "the server is stopping"),
fails the queued ones (their pages offer to send them again), lets the running edit finish, and stays up
`linger_s` more so that edit's page can fetch its result; then it stops. A second signal stops it at once (the
running edit still finishes before the process exits: a thread killed inside torch would abort it).
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, jobs, linger_s: float = 3.0, max_wait_s: float = 600.0):
        super().__init__(config)
        self.jobs, self.linger_s, self.max_wait_s = jobs, linger_s, max_wait_s
        self.draining = False

    def handle_exit(self, sig, frame) -> None:
        if self.draining or self.should_exit:
            return super().handle_exit(sig, frame)  # a second signal: uvicorn's own stop
        self._captured_signals.append(sig)  # re-raised once stopped, as uvicorn does (exit status of a signal)
        self.draining = True
        threading.Thread(target=self._drain, name="sanaedit-drain", daemon=True).start()

    def _drain(self) -> None:
        busy = self.jobs.running is not None or self.jobs.queued > 0
        if busy:
            logger.warning("sanaedit: stopping: finishing the running edit (press Ctrl-C again to stop now)")
        self.jobs.stop_accepting()
        deadline = time.monotonic() + self.max_wait_s
        while self.jobs.running is not None and time.monotonic() < deadline and not self.should_exit:
            time.sleep(0.05)
        if busy:
            time.sleep(self.linger_s)  # the pages poll every 300 ms: time to see "done" and fetch the result
        self.should_exit = True


def serve(app, host: str, port: int, linger_s: float = 3.0, **options) -> None:
    """`uvicorn.run(app, ...)` with the graceful stop above (`app.state.jobs` is the job queue)."""
    from sanaedit.core.log import server_log_level

    options.setdefault("log_level", server_log_level())
    config = uvicorn.Config(app, host=host, port=port, **options)
    DrainingServer(config, app.state.jobs, linger_s=linger_s).run()
