"""The worker's entry module: the Celery app with the task module, and the process wiring connected.

Only a worker process imports it (``jobformer worker``): it reads the settings once, builds the app with
``broker.make_app`` (the production Celery settings are documented there) and connects the signal
handlers of ``worker.lifecycle`` (reaper thread, SIGTERM hand-off). A producer (the API) imports
``broker`` and sends the task by name; it never builds this app.
"""

from __future__ import annotations

from celery import signals

from broker import make_app
from core import logs
from core.settings import get_settings
from worker import lifecycle

settings = get_settings()
app = make_app(settings, include=["worker.tasks", "worker.runs"])
lifecycle.connect(settings)


def _json_logging(loglevel: str | int = "INFO", **_: object) -> None:
    logs.configure("json", loglevel)


if settings.log_format == "json":
    # Connected, this signal replaces Celery's own logging setup: every record, the worker's and the job
    # child's, goes out as one JSON object a line (core/logs.py, docs/design.md "Operators").
    signals.setup_logging.connect(_json_logging, weak=False)
