"""``GET /metrics``: Prometheus text (docs/design.md, "Operators").

The figures cover every owner's jobs, so a user's API key does not open them: the request gate lets the
path through and this route asks for ``JOBFORMER_METRICS_TOKEN`` instead. Without that token the route
is open on a server without API keys (local use) and refused (403) on one with keys.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import SettingsDep
from api.errors import ProblemError, problem_responses

router = APIRouter(tags=["health"])

PATH = "/metrics"

EXAMPLE = """# HELP jobformer_jobs Jobs by queue and state.
# TYPE jobformer_jobs gauge
jobformer_jobs{queue="default",status="running"} 1.0
jobformer_jobs{queue="default",status="queued"} 3.0
# HELP jobformer_job_tokens_per_second A running job's training speed.
# TYPE jobformer_job_tokens_per_second gauge
jobformer_job_tokens_per_second{job_id="3f0c...",queue="default"} 18484.0
"""


@router.get(
    PATH,
    summary="Prometheus metrics: jobs by state and queue, queues, workers, durations, HTTP latency",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"example": EXAMPLE}}}, **problem_responses(401, 403)},
)
def metrics(request: Request, settings: SettingsDep) -> Response:
    _check_token(settings.metrics_token, bool(settings.api_keys), request.headers.get("authorization", ""))
    body = generate_latest(request.app.state.metrics_registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _check_token(token: str | None, has_keys: bool, authorization: str) -> None:
    if token is None:
        if has_keys:
            raise ProblemError(
                403,
                "GET /metrics covers every key's jobs, so an API key does not open it: set "
                "JOBFORMER_METRICS_TOKEN on the server and scrape with Authorization: Bearer <that token>",
                code="metrics_token_required",
            )
        return
    scheme, _, presented = authorization.partition(" ")
    digest = hashlib.sha256(presented.strip().encode()).digest()
    if scheme.lower() != "bearer" or not hmac.compare_digest(digest, hashlib.sha256(token.encode()).digest()):
        raise ProblemError(
            401,
            "GET /metrics needs Authorization: Bearer <JOBFORMER_METRICS_TOKEN>",
            code="unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="jobformer-metrics"'},
        )
