"""`sanaedit serve`: a small web page for editing photos, backed by one model and a bounded job queue."""

from .app import create_app
from .jobs import JobQueue, QueueFull

__all__ = ["JobQueue", "QueueFull", "create_app"]
