"""Jobs: create, list, inspect, cancel, download checkpoints, predict.

Each route is a lookup, a call and its ``*Public`` answer. Creating a job is api/submission.py (checked
against the dataset before anything is queued, committed before it is enqueued: docs/design.md, "Data
flow"); the answers are built in api/views.py; downloads in api/archives.py; predictions in
api/prediction.py. Reads query the tables directly; every state transition goes through core.db.store.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from api.archives import checkpoint_dir, checkpoint_download, onnx_download
from api.deps import ID_PATTERN, Limit, Offset, OwnerDep, SessionDep, SettingsDep, get_owned_job
from api.errors import ProblemError, problem_responses
from api.jobviews import VIEW_TTL_SECONDS, visible_answer
from api.prediction import best_checkpoint, predict_with, require_input
from api.schemas import (
    CONFIG_EXAMPLE,
    CheckpointsPublic,
    EventsPublic,
    GenerationPublic,
    JobCreate,
    JobPublic,
    JobsPublic,
    MetricsPublic,
    PredictionsPublic,
    PredictRequest,
)
from api.submission import submit_job
from api.views import (
    checkpoint_public,
    etag_matches,
    event_public,
    job_public,
    job_view,
    metric_points_public,
)
from core.db import store
from core.db.models import Checkpoint, Event, Job, JobStatus, MetricPoint

log = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[
    str, PathParam(pattern=ID_PATTERN, description="A job id.", examples=["3f2a9c1e5b7d4e0f8a6b2c4d1e3f5a7b"])
]
# Checkpoint names are directory names written by core.ml.checkpoint ("step-00000100"). The pattern
# keeps a download from naming anything else: no separators, no "..", no leading dot.
CHECKPOINT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
CheckpointName = Annotated[
    str, PathParam(pattern=CHECKPOINT_NAME, description="A checkpoint name.", examples=["step-00000050"])
]

CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": JobCreate.model_json_schema(),
                "example": {"dataset_id": "9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e", "config": CONFIG_EXAMPLE},
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "The CSV/TSV."},
                        "config": {"type": "string", "description": "The training config as a JSON string."},
                        "queue": {
                            "type": "string",
                            "description": "The worker queue (default: the server's).",
                        },
                    },
                    "required": ["file", "config"],
                },
                "example": {"file": "label,text\nham,see you\n...", "config": json.dumps(CONFIG_EXAMPLE)},
            },
        },
    }
}


# --- routes -----------------------------------------------------------------------------------------


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    summary="Create a training job",
    description=(
        'Either JSON `{"dataset_id": ..., "config": {...}}` or multipart `file` (the CSV) + `config` (a JSON '
        "string). The config is validated, then checked against the dataset (columns exist, labels have at "
        "least two classes, enough rows): every problem is answered at once with 422, before anything is "
        "queued. 202 with `Location: /jobs/{id}`."
    ),
    openapi_extra=CREATE_BODY,
    responses=problem_responses(401, 413, 415, 422, 429),
)
async def create_job(
    request: Request, response: Response, settings: SettingsDep, session: SessionDep, owner: OwnerDep
) -> JobPublic:
    job, warnings = await submit_job(request, session, settings, owner)
    response.headers["Location"] = f"/jobs/{job.id}"

    def _view() -> JobPublic:
        session.refresh(job)
        return job_view(request, session, job, warnings)

    return await run_in_threadpool(_view)


@router.get(
    "",
    response_model=JobsPublic,
    summary="List jobs, newest first",
    responses=problem_responses(401, 422),
)
def list_jobs(
    session: SessionDep,
    owner: OwnerDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> JobsPublic:
    where = []
    if owner is not None:
        where.append(Job.owner == owner)
    if status is not None:
        where.append(Job.status == status.value)
    count = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(
        select(Job).where(*where).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    ).all()
    return JobsPublic(data=[job_public(j) for j in rows], count=count)


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    summary="One job: status, progress, latest metrics, best checkpoint",
    description=(
        "A queued job also shows its queue position and a warning when no worker is online. The answer has "
        "an `ETag`; send it back in `If-None-Match` and an unchanged job answers `304` without a body. "
        f"Answered from memory: it may be up to {VIEW_TTL_SECONDS:g} s behind what a worker has written "
        "(never behind your own cancel or submission); poll at that pace or follow `/jobs/{id}/stream`."
    ),
    responses={
        304: {"description": "Not modified: the job is as the ETag you sent"},
        **problem_responses(401, 404),
    },
)
async def get_job(
    job_id: JobId,
    request: Request,
    owner: OwnerDep,
    if_none_match: Annotated[str | None, Header(description="An ETag this answer gave before.")] = None,
) -> Response:
    # docs/design.md, "Live updates": a poller costs no session and no thread while the answer is fresh,
    # and one that sees no change no transfer either.
    answer = await visible_answer(request, job_id, owner)
    headers = {"ETag": answer.etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, answer.etag):
        return Response(status_code=304, headers=headers)
    return Response(answer.body, media_type="application/json", headers=headers)


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsPublic,
    summary="Loss curves and validation metrics",
    description=(
        "Points `{step, epoch, split, name, value, time}` ordered by step. `since_step=N` returns points with "
        "step >= N (inclusive, because validation points of step N can arrive after its train loss): poll "
        "with the last step you saw and drop duplicates by (step, split, name)."
    ),
    responses=problem_responses(401, 404),
)
def get_metrics(
    job_id: JobId,
    session: SessionDep,
    owner: OwnerDep,
    since_step: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    offset: Offset = 0,
) -> MetricsPublic:
    get_owned_job(session, job_id, owner)
    where = [MetricPoint.job_id == job_id]
    if since_step is not None:
        where.append(MetricPoint.step >= since_step)
    count = session.scalar(select(func.count()).select_from(MetricPoint).where(*where)) or 0
    rows = session.scalars(
        select(MetricPoint)
        .where(*where)
        .order_by(MetricPoint.step, MetricPoint.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return MetricsPublic(data=metric_points_public(rows), count=count)


@router.get(
    "/{job_id}/events",
    response_model=EventsPublic,
    summary="What happened, in order",
    responses=problem_responses(401, 404),
)
def get_events(
    job_id: JobId, session: SessionDep, owner: OwnerDep, limit: Limit = 1000, offset: Offset = 0
) -> EventsPublic:
    get_owned_job(session, job_id, owner)
    where = [Event.job_id == job_id]
    count = session.scalar(select(func.count()).select_from(Event).where(*where)) or 0
    rows = session.scalars(select(Event).where(*where).order_by(Event.id).limit(limit).offset(offset)).all()
    return EventsPublic(data=[event_public(e) for e in rows], count=count)


@router.get(
    "/{job_id}/checkpoints",
    response_model=CheckpointsPublic,
    summary="The kept checkpoints (best and latest)",
    responses=problem_responses(401, 404),
)
def list_checkpoints(job_id: JobId, session: SessionDep, owner: OwnerDep) -> CheckpointsPublic:
    get_owned_job(session, job_id, owner)
    rows = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step, Checkpoint.id)
    ).all()
    data = [checkpoint_public(c) for c in rows]
    return CheckpointsPublic(data=data, count=len(data))


@router.get(
    "/{job_id}/checkpoints/{name}",
    summary="Download one checkpoint as a .tar.gz",
    description=(
        "The checkpoint directory (model.safetensors, vocab.json, config.json, trainer_state.pt, meta.json) "
        "as one gzip'd tar, streamed. `curl -OJ http://127.0.0.1:8000/jobs/<id>/checkpoints/step-00000050`. "
        "`?format=onnx`: a classifier exported to ONNX (model.onnx, vocab.json, labels.json, config.json, "
        "README.md); 422 when the checkpoint cannot be exported."
    ),
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "A .tar.gz archive of the checkpoint directory",
            "content": {
                "application/gzip": {
                    "schema": {"type": "string", "format": "binary"},
                    "example": "<step-00000050/model.safetensors, vocab.json, config.json, ... as .tar.gz>",
                }
            },
        },
        **problem_responses(401, 404, 422),
    },
)
def download_checkpoint(
    job_id: JobId,
    name: CheckpointName,
    session: SessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
    format: Annotated[
        Literal["checkpoint", "onnx"], Query(description="onnx: the exported model.")
    ] = "checkpoint",
) -> StreamingResponse:
    get_owned_job(session, job_id, owner)
    c = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == name))
    if c is None:
        raise ProblemError(404, f"job {job_id} has no checkpoint named {name}", code="not_found")
    # Opened whole before the 200, or a 404 (api/archives.py).
    if format == "onnx":
        return onnx_download(settings.data_dir, c, f"{job_id}-{name}-onnx.tar.gz")
    return checkpoint_download(settings.data_dir, c, f"{job_id}-{name}.tar.gz")


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobPublic,
    summary="Cancel a job",
    description=(
        "A queued job is cancelled at once; a running one goes `cancelling` and stops within a few steps, "
        "saving a checkpoint. Cancelling a cancelled job is a no-op; a finished job answers 409."
    ),
    responses=problem_responses(401, 404, 409),
)
def cancel_job(job_id: JobId, session: SessionDep, owner: OwnerDep) -> JobPublic:
    job = get_owned_job(session, job_id, owner)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ProblemError(409, f"job {job_id} already {job.status}; nothing to cancel", code="job_finished")
    store.request_cancel(session, job_id)
    session.commit()
    session.refresh(job)
    log.info("job %s: cancel requested (now %s)", job_id, job.status, extra={"job_id": job_id})
    return job_public(job)


@router.post(
    "/{job_id}/predict",
    response_model=PredictionsPublic | GenerationPublic,
    summary="Predict with the job's best checkpoint",
    description=(
        'Classification: `{"texts": [...]}` -> `{"data": [{"label", "probabilities"}, ...]}` (one per '
        'text, in order). Language modelling: `{"prompt": ..., "max_new_tokens", "temperature", '
        '"top_k", "seed"}` -> `{"text": ...}`. Works while the job still runs (its best so far); 409 '
        "before its first checkpoint."
    ),
    responses=problem_responses(401, 404, 409, 422),
)
def predict(
    job_id: JobId,
    body: PredictRequest,
    request: Request,
    session: SessionDep,
    owner: OwnerDep,
    settings: SettingsDep,
) -> PredictionsPublic | GenerationPublic:
    job = get_owned_job(session, job_id, owner)
    require_input(job, body)
    c = best_checkpoint(session, job)
    session.close()  # release the connection while the model runs
    return predict_with(request.app.state.predictors, checkpoint_dir(settings.data_dir, c), c.name, body)
