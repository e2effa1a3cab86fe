"""The FastAPI app: settings, error mapping, routers. ``uvicorn api.main:app`` or ``jobformer serve``.

Build your own with ``create_app(settings)`` (tests do: each gets its own data dir and database).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from api.caches import PredictorCache, WorkersOnline
from api.deps import KeyRing
from api.errors import install_handlers, problem_response
from api.routes import datasets, health, jobs
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Bodies that are not multipart uploads (JSON: configs, prediction texts) stop here.
MAX_JSON_BODY_BYTES = 16 * 1024 * 1024

DESCRIPTION = """
Upload a CSV, start a training job, poll it for progress and losses, download checkpoints, predict.

```
curl -F file=@spam.tsv http://127.0.0.1:8000/datasets
curl -H 'Content-Type: application/json' -d '{"dataset_id": "<id>", "config": {"task": "classification",
     "text_column": 1, "label_column": 0}}' http://127.0.0.1:8000/jobs
curl http://127.0.0.1:8000/jobs/<job id>
curl -d '{"texts": ["WIN a free prize"]}' -H 'Content-Type: application/json' \\
     http://127.0.0.1:8000/jobs/<job id>/predict
```

Errors are `application/problem+json` (RFC 9457). When the server has API keys
(`JOBFORMER_API_KEYS`), send `Authorization: Bearer <key>` on every call but `/healthz`.
"""


class BodyLimitMiddleware:
    """413 for non-multipart bodies past ``max_bytes``, counted as they arrive (uploads have their own limit)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: dict, receive: Any, send: Any) -> None:
        response = problem_response(
            413, f"request body larger than {self.max_bytes} bytes", code="body_too_large"
        )
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (default: the process settings from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="jobformer",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "datasets", "description": "Upload and manage training files."},
            {"name": "jobs", "description": "Training jobs: create, poll, cancel, checkpoints, predict."},
            {"name": "health", "description": "Liveness and readiness probes."},
        ],
    )
    app.state.settings = settings
    app.state.keyring = KeyRing(settings.api_keys)

    def _workers() -> int:
        from worker.queue import workers_online

        return workers_online(timeout=1.0)

    def _load_predictor(path: str) -> Any:
        from core.ml.predict import Predictor

        return Predictor.load(path, device="cpu")

    app.state.workers_online = WorkersOnline(_workers, ttl=5.0)
    app.state.predictors = PredictorCache(_load_predictor, maxsize=4)

    install_handlers(app)
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_JSON_BODY_BYTES)
    if settings.api_keys:
        log.info("API keys: %d configured; Bearer auth on all routes but /healthz", len(settings.api_keys))
    return app


app = create_app()
