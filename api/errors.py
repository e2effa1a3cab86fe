"""Every error the API answers is ``application/problem+json`` (RFC 9457), never a stack trace.

    {"type": "https://jobformer.dev/problems/invalid-config", "title": "Invalid config", "status": 422,
     "detail": "config.model.d_model: Input should be greater than or equal to 8",
     "errors": [{"loc": ["config", "model", "d_model"], "msg": "...", "type": "..."}]}

How exceptions map (one place, registered by :func:`install_handlers`):

    ProblemError (raised by routes)      its own status, title, detail, errors, headers
    HTTPException (404 route, 405...)    its status
    RequestValidationError               422, ``errors`` from pydantic with ``loc`` paths
    core.ml.errors.ConfigError/DataError 422, ``errors`` from ``problems``
    sqlalchemy OperationalError & co.    503 with Retry-After: the database is down or restarting
    anything else                        500, logged with its traceback here, a bare message out there
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.ml.errors import JobformerError, Problem, format_problems

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://jobformer.dev/problems/"
DB_RETRY_AFTER_SECONDS = 5

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class ProblemError(Exception):
    """Raised by routes to answer a problem; the handler turns it into problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        title: str | None = None,
        errors: Sequence[Problem | dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.title = title
        self.errors = [e.as_dict() if isinstance(e, Problem) else e for e in errors or []]
        self.headers = headers or {}
        self.extra = extra or {}


def problem_response(
    status: int,
    detail: str,
    *,
    code: str | None = None,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """The problem+json response. ``code`` names the problem type (``invalid_data`` -> ``.../invalid-data``)."""
    title = title or _TITLES.get(status, "Error")
    slug = (code or title.lower().replace(" ", "_")).replace("_", "-")
    body: dict[str, Any] = {"type": TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    if code:
        body["code"] = code
    if errors:
        body["errors"] = errors
    body.update(extra or {})
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _clean_loc(loc: Sequence[Any]) -> list[str | int]:
    return [p if isinstance(p, int) else str(p) for p in loc]


def _summary(errors: list[dict[str, Any]], limit: int = 5) -> str:
    return format_problems([Problem(e["loc"], e["msg"]) for e in errors], limit=limit)


async def _problem_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        exc.status,
        exc.detail,
        code=exc.code,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers,
        extra=exc.extra,
    )


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "Error")
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    return problem_response(exc.status_code, detail, headers=dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        errors.append({"loc": _clean_loc(err.get("loc", [])), "msg": msg, "type": err.get("type", "")})
    return problem_response(
        422, _summary(errors), code="validation_error", title="Invalid request", errors=errors
    )


async def _jobformer_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobformerError)
    errors = [p.as_dict() for p in exc.problems]
    titles = {"invalid_config": "Invalid config", "invalid_data": "Invalid data"}
    return problem_response(
        422, exc.message, code=exc.code, title=titles.get(exc.code, "Unprocessable content"), errors=errors
    )


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # PostgreSQL restarting or unreachable: a retryable condition, not a bug (issue 4, "Faults").
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc.__class__.__name__)
    return problem_response(
        503,
        "the database is unavailable; retry shortly",
        code="database_unavailable",
        headers={"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal error; it has been logged", code="internal_error")


def install_handlers(app: FastAPI) -> None:
    """Register the mapping above on ``app``."""
    app.add_exception_handler(ProblemError, _problem_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(JobformerError, _jobformer_error)
    for exc_class in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(exc_class, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected)


# The responses every route can give, for the OpenAPI document.
def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for problem+json answers with these statuses."""
    schema = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "loc": {
                            "type": "array",
                            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                        },
                        "msg": {"type": "string"},
                        "type": {"type": "string"},
                    },
                },
            },
        },
        "required": ["type", "title", "status", "detail"],
    }
    return {
        s: {
            "description": _TITLES.get(s, "Error"),
            "content": {
                PROBLEM_JSON: {"schema": schema, "example": _PROBLEM_EXAMPLES.get(s, _generic_example(s))}
            },
        }
        for s in statuses
    }


def _generic_example(status: int) -> dict[str, Any]:
    title = _TITLES.get(status, "Error")
    return {
        "type": TYPE_BASE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": title,
    }


_PROBLEM_EXAMPLES: dict[int, dict[str, Any]] = {
    401: {
        "type": TYPE_BASE + "unauthorized",
        "title": "Unauthorized",
        "status": 401,
        "detail": "this server needs an API key: send 'Authorization: Bearer <key>'",
        "code": "unauthorized",
    },
    404: {
        "type": TYPE_BASE + "not-found",
        "title": "Not found",
        "status": 404,
        "detail": "job 3f2a9c1e5b7d4e0f8a6b2c4d1e3f5a7b not found",
        "code": "not_found",
    },
    409: {
        "type": TYPE_BASE + "dataset-in-use",
        "title": "Conflict",
        "status": 409,
        "detail": "dataset 9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e is used by active job(s) 3f2a9c1e...; cancel them first",
        "code": "dataset_in_use",
    },
    413: {
        "type": TYPE_BASE + "upload-too-large",
        "title": "Content too large",
        "status": 413,
        "detail": "the upload is larger than the limit of 200 MB (setting JOBFORMER_MAX_UPLOAD_MB); "
        "split the file or raise the limit",
        "code": "upload_too_large",
    },
    422: {
        "type": TYPE_BASE + "invalid-config",
        "title": "Invalid config",
        "status": 422,
        "detail": "the config does not fit the dataset: config.text_column: column 'body' not found; "
        "the file has: label, text",
        "code": "invalid_config",
        "errors": [
            {
                "loc": ["config", "text_column"],
                "msg": "column 'body' not found; the file has: label, text",
                "type": "value_error",
            }
        ],
    },
    429: {
        "type": TYPE_BASE + "too-many-active-jobs",
        "title": "Too many requests",
        "status": 429,
        "detail": "8 jobs are already queued or running for this key (limit 8, setting "
        "JOBFORMER_MAX_ACTIVE_JOBS_PER_KEY); wait for one to finish or cancel one",
        "code": "too_many_active_jobs",
    },
    503: {
        "type": TYPE_BASE + "not-ready",
        "title": "Service unavailable",
        "status": 503,
        "detail": "not ready: broker unavailable",
        "code": "not_ready",
        "checks": {"database": "ok", "broker": "error: no answer"},
    },
}
