"""`sanaedit serve`: a small web page for editing photos, backed by one model and a bounded job queue."""

from sanaedit.apps.serve.app import create_app
from sanaedit.apps.serve.jobs import JobQueue
from sanaedit.errors import QueueFull

__all__ = ["JobQueue", "QueueFull", "create_app"]
