"""Logging of the service's processes: plain text (the default) or one JSON object a line
(``JOBFORMER_LOG_FORMAT=json``), docs/design.md "Operators".

A JSON line holds ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and ``job_id`` and
``attempt`` where known: from the record's ``extra`` (the worker's records carry ``job_id``) or from
:func:`job_context`, which the train task sets for the job it runs. A traceback goes in ``exc_info`` as
one string, so a line is always one object.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_job: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("jobformer_job", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def job_context(job_id: str, attempt: int | None = None) -> None:
    """Tag this context's later records with the job (and attempt) it works on."""
    _job.set({"job_id": job_id, "attempt": attempt})


class JsonFormatter(logging.Formatter):
    """One JSON object per record (module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _job.get() or {}
        job_id = getattr(record, "job_id", None) or context.get("job_id")
        attempt = getattr(record, "attempt", None)
        if attempt is None and job_id == context.get("job_id"):
            attempt = context.get("attempt")  # the attempt of the job this context runs, not another's
        if job_id is not None:
            line["job_id"] = job_id
        if attempt is not None:
            line["attempt"] = attempt
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(log_format: str, level: str | int = "INFO") -> None:
    """Send every record of this process to stderr in ``log_format`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


def uvicorn_config(log_format: str, level: str) -> dict[str, Any]:
    """``uvicorn.run(log_config=...)``: uvicorn's loggers and the app's, all through one formatter."""
    name = "json" if log_format == "json" else "text"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": "core.logs.JsonFormatter"},
            "text": {"format": TEXT_FORMAT},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": name}
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
    }
