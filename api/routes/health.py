"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

import broker
from api.deps import SettingsDep, get_owner
from api.errors import problem_response, problem_responses
from api.schemas import HealthPublic, ReadyPublic
from core.db.session import get_engine
from core.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthPublic, summary="Liveness: the process answers (no auth)")
def healthz() -> HealthPublic:
    return HealthPublic(status="ok")


def _database_ok(url: str) -> str:
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as e:
        log.warning("readiness: database check failed: %s", e.__class__.__name__)
        return f"error: {e.__class__.__name__}"


def _broker_ok(settings: Settings) -> str:
    try:
        return "ok" if broker.broker_ok(timeout=1.0, settings=settings) else "error: no answer"
    except Exception as e:
        log.warning("readiness: broker check failed: %s", e.__class__.__name__)
        return f"error: {e.__class__.__name__}"


@router.get(
    "/readyz",
    response_model=ReadyPublic,
    summary="Readiness: the database and the broker answer (503 when either does not)",
    dependencies=[Depends(get_owner)],
    responses=problem_responses(401, 503),
)
async def readyz(settings: SettingsDep) -> ReadyPublic | JSONResponse:
    checks = {
        "database": await run_in_threadpool(_database_ok, settings.resolved_database_url),
        "broker": await run_in_threadpool(_broker_ok, settings),
    }
    if all(v == "ok" for v in checks.values()):
        return ReadyPublic(status="ok", checks=checks)
    down = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem_response(
        503,
        f"not ready: {down} unavailable",
        code="not_ready",
        headers={"Retry-After": "5"},
        extra={"checks": checks},
    )
