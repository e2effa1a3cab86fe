"""The routes every kind of model run has (docs/design.md, "Evaluations and batch predictions"): queue one
of a finished job, list the job's, read one, cancel one. api/routes/evaluations.py and
api/routes/predictions.py build their routers here; the work is in api/model_runs.py and the run happens on
the workers (worker/runs.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from fastapi import Path as PathParam

from api.deps import ID_PATTERN, OwnerDep, SessionDep, SettingsDep, get_owned_job
from api.errors import problem_responses
from api.model_runs import RunCreate, RunPublic, RunsPublic, create_run, get_owned_run, job_runs, run_public
from core.db import store
from core.db.models import RunKind

Id = Annotated[str, PathParam(pattern=ID_PATTERN, examples=["3f2a9c1e5b7d4e0f8a6b2c4d1e3f5a7b"])]


def run_router(kind: RunKind, collection: str, *, create_summary: str, list_summary: str) -> APIRouter:
    """A router tagged ``collection`` with, for runs of ``kind``: ``POST /jobs/{job_id}/<collection>``
    (202, ``Location: /<collection>/{id}``), ``GET /jobs/{job_id}/<collection>``,
    ``GET /<collection>/{run_id}`` and ``POST /<collection>/{run_id}/cancel``; the routes are named
    ``create_<kind>``, ``list_<collection>``, ``get_<kind>`` and ``cancel_<kind>``."""
    router = APIRouter(tags=[collection])

    def create(
        job_id: Id,
        body: RunCreate,
        response: Response,
        session: SessionDep,
        settings: SettingsDep,
        owner: OwnerDep,
    ) -> RunPublic:
        run = create_run(session, settings, get_owned_job(session, job_id, owner), body, kind, owner)
        response.headers["Location"] = f"/{collection}/{run.id}"
        return run_public(run)

    def list_runs(job_id: Id, session: SessionDep, owner: OwnerDep) -> RunsPublic:
        return job_runs(session, get_owned_job(session, job_id, owner), kind)

    def get(run_id: Id, session: SessionDep, owner: OwnerDep) -> RunPublic:
        return run_public(get_owned_run(session, run_id, owner, kind))

    def cancel(run_id: Id, session: SessionDep, owner: OwnerDep) -> RunPublic:
        run = get_owned_run(session, run_id, owner, kind)
        store.cancel_run(session, run)
        session.commit()
        return run_public(run)

    router.add_api_route(
        f"/jobs/{{job_id}}/{collection}",
        create,
        methods=["POST"],
        name=f"create_{kind}",
        status_code=202,
        response_model=RunPublic,
        summary=create_summary,
        responses=problem_responses(401, 404, 409, 422),
    )
    router.add_api_route(
        f"/jobs/{{job_id}}/{collection}",
        list_runs,
        methods=["GET"],
        name=f"list_{collection}",
        response_model=RunsPublic,
        summary=list_summary,
    )
    router.add_api_route(
        f"/{collection}/{{run_id}}",
        get,
        methods=["GET"],
        name=f"get_{kind}",
        response_model=RunPublic,
        responses=problem_responses(401, 404),
    )
    router.add_api_route(
        f"/{collection}/{{run_id}}/cancel",
        cancel,
        methods=["POST"],
        name=f"cancel_{kind}",
        status_code=202,
        response_model=RunPublic,
    )
    return router
