"""The FastAPI app: settings, error mapping, routers. ``uvicorn api.main:app`` or ``jobformer serve``.

Build your own with ``create_app(settings)`` (tests do: each gets its own data dir and database).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from api.caches import PredictorCache
from api.deps import KeyRing
from api.errors import install_handlers
from api.jobviews import FreshAnswers, JobViews
from api.metrics import HttpMetrics, make_registry
from api.middleware import RequestGate
from api.routes import datasets, evaluations, health, jobs, metrics, pages, predictions, stream, sweeps
from api.streams import StreamHub
from api.uploads import MULTIPART_OVERHEAD, limit_message
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

MB = 1024 * 1024

# Multipart uploads get the upload limit (JOBFORMER_MAX_UPLOAD_MB); every other body the small one.
UPLOAD_ROUTES = {("POST", "/datasets"), ("POST", "/jobs")}

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


def body_limit_message(max_mb: int) -> str:
    return (
        f"request body larger than the limit of {max_mb} MB (setting JOBFORMER_MAX_BODY_MB); "
        "send less per request, or raise the limit"
    )


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
            {"name": "sweeps", "description": "Hyperparameter searches: trials are jobs, best first."},
            {"name": "health", "description": "Liveness and readiness probes."},
        ],
    )
    app.state.settings = settings
    app.state.keyring = KeyRing(settings.api_keys)

    def _load_predictor(path: str) -> Any:
        from core.ml.predict import Predictor

        return Predictor.load(path, device="cpu")

    app.state.predictors = PredictorCache(_load_predictor, maxsize=4)
    # GET /jobs/{id} from memory, and one reader per watched job fanned out to its streams, which keeps
    # that job's answer fresh too (docs/design.md, "Live updates").
    app.state.job_views = JobViews()
    app.state.streams = StreamHub(settings.resolved_database_url, views=app.state.job_views)

    # GET /metrics (docs/design.md, "Operators"): one registry per app; HTTP latency by route template.
    app.state.metrics_registry, latency = make_registry(settings)

    install_handlers(app)
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    app.include_router(stream.router)
    app.include_router(sweeps.router)
    # docs/design.md, "Evaluations and batch predictions"
    app.include_router(evaluations.router)
    app.include_router(predictions.router)
    app.include_router(metrics.router)
    # The dashboard (docs/design.md, "The dashboard"): its files hold no data and load without a key.
    app.include_router(pages.router)
    app.mount(pages.STATIC_PREFIX, pages.static_files(), name="ui")
    # The gate answers before the body is read: no key, 401; too large, 413 (api/middleware.py).
    public = {"/healthz", app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url}
    public |= pages.public_paths()
    public.add(metrics.PATH)  # its own token, not a user's key (api/routes/metrics.py)
    # A fresh cached job answer goes out without routing (api/jobviews.py), timed and labelled as the route.
    job_route = next(r for r in jobs.router.routes if isinstance(r, APIRoute) and r.name == "get_job")
    app.add_middleware(FreshAnswers, views=app.state.job_views, prefix=jobs.router.prefix, route=job_route)
    app.add_middleware(HttpMetrics, latency=latency)  # inside the gate: requests that reached the app
    app.add_middleware(
        RequestGate,
        keyring=app.state.keyring,
        public_paths={p for p in public if p},
        body_limit=settings.max_body_mb * MB,
        body_too_large=body_limit_message(settings.max_body_mb),
        upload_routes=UPLOAD_ROUTES,
        upload_limit=settings.max_upload_mb * MB + MULTIPART_OVERHEAD,
        upload_too_large=limit_message(settings.max_upload_mb * MB),
    )
    if settings.api_keys:
        log.info(
            "API keys: %d configured; Bearer auth on all routes but /healthz and the docs",
            len(settings.api_keys),
        )
    return app


app = create_app()
# What the imports and the app made lives as long as the process (about 265k objects: FastAPI, pydantic,
# SQLAlchemy, torch for predictions). Frozen, the collector no longer walks it on every full collection:
# under the API load bench each one stopped the event loop, every request with it, for 100-200 ms
# (docs/design.md, "Live updates").
gc.collect()
gc.freeze()
