"""Sweeps: a hyperparameter search across the worker pool (docs/design.md, "Sweeps"). Each route is a
lookup, a call and its ``*Public`` answer; the checks, the record and the leaderboard are api/sweeps.py.
Every trial is an ordinary job (GET /jobs/{id} shows its ``sweep_id``)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Response
from fastapi import Path as PathParam
from sqlalchemy import func, select

from api.deps import ID_PATTERN, Limit, Offset, OwnerDep, SessionDep, SettingsDep
from api.errors import problem_responses
from api.sweep_schemas import SWEEP_CREATE_EXAMPLE, SweepCreate, SweepPublic, SweepsPublic
from api.sweeps import cancel, get_owned_sweep, submit_sweep, sweep_public
from core.db.models import Sweep

log = logging.getLogger(__name__)

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

SweepId = Annotated[
    str,
    PathParam(pattern=ID_PATTERN, description="A sweep id.", examples=["5c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"]),
]


@router.post(
    "",
    status_code=202,
    response_model=SweepPublic,
    summary="Start a hyperparameter sweep",
    description=(
        "Trains up to `max_jobs` trials of the base `config`, each with the `parameters` drawn by `method` "
        "(grid, random or TPE), `max_parallel` at a time, ranked by `metric`; with `early_stopping` "
        "(ASHA) the trials that fall behind are cancelled with a checkpoint. Every problem (an unknown "
        "config path, a range that makes an invalid config) is a 422 naming `parameters.<path>`, before any "
        "trial starts. 202 with `Location: /sweeps/{id}`."
    ),
    openapi_extra={"requestBody": {"content": {"application/json": {"example": SWEEP_CREATE_EXAMPLE}}}},
    responses=problem_responses(401, 404, 422, 429),
)
def create_sweep(
    body: SweepCreate, response: Response, session: SessionDep, settings: SettingsDep, owner: OwnerDep
) -> SweepPublic:
    sweep, warnings = submit_sweep(session, settings, owner, body)
    response.headers["Location"] = f"/sweeps/{sweep.id}"
    for warning in warnings:
        log.warning("sweep %s: %s", sweep.id, warning)
    return sweep_public(session, sweep)


@router.get(
    "",
    response_model=SweepsPublic,
    summary="List sweeps, newest first",
    responses=problem_responses(401, 422),
)
def list_sweeps(session: SessionDep, owner: OwnerDep, limit: Limit = 100, offset: Offset = 0) -> SweepsPublic:
    where = [] if owner is None else [Sweep.owner == owner]
    count = session.scalar(select(func.count()).select_from(Sweep).where(*where)) or 0
    rows = session.scalars(
        select(Sweep)
        .where(*where)
        .order_by(Sweep.created_at.desc(), Sweep.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return SweepsPublic(data=[sweep_public(session, s) for s in rows], count=count)


@router.get(
    "/{sweep_id}",
    response_model=SweepPublic,
    summary="One sweep: status, trials by state, the leaderboard",
    responses=problem_responses(401, 404),
)
def get_sweep(sweep_id: SweepId, session: SessionDep, owner: OwnerDep) -> SweepPublic:
    return sweep_public(session, get_owned_sweep(session, sweep_id, owner))


@router.post(
    "/{sweep_id}/cancel",
    status_code=202,
    response_model=SweepPublic,
    summary="Stop a sweep and its trials",
    description="No more trials start; queued ones are cancelled, running ones stop with a checkpoint. 409 when it ended.",
    responses=problem_responses(401, 404, 409),
)
def cancel_sweep(sweep_id: SweepId, session: SessionDep, owner: OwnerDep) -> SweepPublic:
    sweep = cancel(session, get_owned_sweep(session, sweep_id, owner))
    log.info("sweep %s: cancelled", sweep_id)
    return sweep_public(session, sweep)
