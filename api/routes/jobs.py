"""Jobs: create (validated against the dataset before anything is queued), inspect, cancel, predict.

Reads (lists, one job, metrics, events, checkpoints) query the tables directly; every state transition
goes through core.db.store. A job is committed first and enqueued after (DESIGN.md section 2), so a
worker never receives an id it cannot find.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import OwnerDep, SessionDep, SettingsDep
from api.errors import ProblemError, problem_responses
from api.routes.datasets import (
    ID_PATTERN,
    Limit,
    Offset,
    get_owned_dataset,
    inspect_upload,
    max_upload_bytes,
    store_dataset,
)
from api.schemas import (
    CONFIG_EXAMPLE,
    CheckpointPublic,
    CheckpointsPublic,
    EventPublic,
    EventsPublic,
    GenerationPublic,
    JobCreate,
    JobPublic,
    JobsPublic,
    MetricPointPublic,
    MetricsPublic,
    PredictionsPublic,
    PredictRequest,
    QueuePublic,
)
from api.uploads import is_multipart, read_json_body, receive_multipart
from core.db import store
from core.db.models import ACTIVE_STATES, Checkpoint, Dataset, Event, Job, JobStatus, MetricPoint
from core.ml.config import TrainConfig, problems_from_validation_error
from core.ml.data import DatasetInfo, FileFormat, check_config
from core.ml.errors import ConfigError, Problem
from core.settings import Settings

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

ACTIVE_JOBS_RETRY_AFTER = 30
NO_WORKER_WARNING = (
    "no worker is online: the job will start when one connects (start one with `jobformer worker`)"
)
UNKNOWN_WORKERS_WARNING = "the broker did not answer: cannot tell whether a worker is online"

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
                    },
                    "required": ["file", "config"],
                },
                "example": {"file": "label,text\nham,see you\n...", "config": json.dumps(CONFIG_EXAMPLE)},
            },
        },
    }
}


# --- helpers ----------------------------------------------------------------------------------------


def _finite(v: Any) -> float | None:
    """JSON has no NaN/inf (a diverged run can record them): answer null instead of failing."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def job_public(
    job: Job, *, queue_info: QueuePublic | None = None, warnings: list[str] | None = None
) -> JobPublic:
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    progress = dict(job.progress) if job.progress else None
    if progress is not None:
        for k in ("percent", "eta_seconds", "tokens_per_second", "train_loss"):
            if k in progress and progress[k] is not None:
                progress[k] = _finite(progress[k])
    best = dict(job.best) if job.best else None
    if best is not None and _finite(best.get("value")) is None:
        best = None
    return JobPublic(
        id=job.id,
        status=job.status,
        dataset_id=job.dataset_id,
        config=job.config,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempts=job.attempts or 0,
        max_attempts=job.max_attempts,
        error=error,  # type: ignore[arg-type]
        progress=progress,  # type: ignore[arg-type]
        metrics={k: v for k, v in ((k, _finite(v)) for k, v in (job.metrics or {}).items()) if v is not None},
        best=best,  # type: ignore[arg-type]
        queue=queue_info,
        warnings=warnings or [],
    )


def get_owned_job(session: Session, job_id: str, owner: str | None) -> Job:
    """The job, or a 404 problem when it does not exist or belongs to another key (not 403: no leak)."""
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        raise ProblemError(404, f"job {job_id} not found", code="not_found")
    return job


def _check_active_limit(session: Session, settings: Settings, owner: str | None) -> None:
    active = (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner.is_(None) if owner is None else Job.owner == owner)
            .where(Job.status.in_([s.value for s in ACTIVE_STATES]))
        )
        or 0
    )
    if active >= settings.max_active_jobs_per_key:
        raise ProblemError(
            429,
            f"{active} jobs are already queued or running for this key (limit "
            f"{settings.max_active_jobs_per_key}, setting JOBFORMER_MAX_ACTIVE_JOBS_PER_KEY); "
            "wait for one to finish or cancel one",
            code="too_many_active_jobs",
            headers={"Retry-After": str(ACTIVE_JOBS_RETRY_AFTER)},
        )


def parse_train_config(raw: Any) -> TrainConfig:
    """The request's config as a TrainConfig, or a ConfigError with every problem under loc ``config``."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            where = f"{e.msg} at line {e.lineno} column {e.colno}"
            raise ConfigError(
                f"config is not valid JSON: {where}",
                problems=[Problem(["config"], f"not valid JSON: {where}", "json_invalid")],
            ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            'config must be a JSON object such as {"task": "classification"}',
            problems=[Problem(["config"], "must be a JSON object", "dict_type")],
        )
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        problems = problems_from_validation_error(e, prefix=("config",))
        raise ConfigError(_summary(problems), problems=problems) from None


def _summary(problems: list[Problem], limit: int = 5) -> str:
    parts = [f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems[:limit]]
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "invalid config: " + "; ".join(parts) + more


def check_model_size(config: TrainConfig, settings: Settings) -> None:
    """Refuse a model too large for this machine before it is queued, with the estimate that refused it."""
    vocab = config.tokenizer.max_vocab
    estimate = config.model.estimate_parameters(vocab, num_classes=0)
    if estimate > settings.max_model_params:
        msg = (
            f"the model would have about {estimate:,} parameters (model.d_model={config.model.d_model}, "
            f"model.n_layers={config.model.n_layers}, model.dim_feedforward={config.model.dim_feedforward}, "
            f"a vocabulary of up to tokenizer.max_vocab={vocab}); this server accepts at most "
            f"{settings.max_model_params:,} (JOBFORMER_MAX_MODEL_PARAMS): make the model smaller"
        )
        raise ConfigError(
            msg, code="model_too_large", problems=[Problem(["config", "model"], msg, "too_large")]
        )


def _info_from_row(d: Dataset) -> DatasetInfo | None:
    """The DatasetInfo recorded at upload, so check_config need not sniff the file again."""
    try:
        fmt = dict(d.format)
        warnings = fmt.pop("warnings", [])
        return DatasetInfo(
            format=FileFormat(**fmt),
            columns=[str(c) for c in d.columns],
            rows=d.rows,
            preview=d.preview,
            warnings=list(warnings),
        )
    except TypeError:  # the recorded format has other fields than this FileFormat: let it re-read
        return None


def _commit_job(
    session: Session, settings: Settings, dataset: Dataset, config: TrainConfig, owner: str | None
) -> Job:
    """Record the job (queued, with its resolved config) and commit, so a worker can find it once enqueued."""
    job = store.create_job(
        session,
        dataset_id=dataset.id,
        config=config.model_dump(mode="json"),
        owner=owner,
        max_attempts=settings.max_attempts,
    )
    session.commit()
    return job


def _raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise ConfigError(
            "the config does not fit the dataset: "
            + "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems),
            problems=problems,
        )


def _queue_view(request: Request, session: Session, job: Job) -> tuple[QueuePublic | None, list[str]]:
    if job.status != JobStatus.QUEUED:
        return None, []
    ahead = (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.status == JobStatus.QUEUED.value, Job.created_at < job.created_at)
        )
        or 0
    )
    online = request.app.state.workers_online.get()
    warnings = []
    if online == 0:
        warnings.append(NO_WORKER_WARNING)
    elif online is None:
        warnings.append(UNKNOWN_WORKERS_WARNING)
    return QueuePublic(position=ahead + 1, workers_online=online), warnings


def _enqueue(job_id: str) -> None:
    from worker.queue import enqueue_job

    enqueue_job(job_id)


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
    await run_in_threadpool(_check_active_limit, session, settings, owner)

    if is_multipart(request):
        form = await receive_multipart(
            request,
            tmp_dir=settings.data_dir / "tmp",
            max_bytes=max_upload_bytes(settings),
            text_fields=("config",),
        )
        assert form.file is not None
        upload = form.file
        try:
            if "config" not in form.fields:
                raise ProblemError(
                    422,
                    "no 'config' part: send the training config as a JSON string in form field 'config'",
                    code="invalid_request",
                    errors=[{"loc": ["body", "config"], "msg": "field required", "type": "missing"}],
                )
            config = parse_train_config(form.fields["config"])
            check_model_size(config, settings)
        except BaseException:
            upload.discard()
            raise
        info = await run_in_threadpool(inspect_upload, upload, settings)

        def _check_and_create() -> Job:
            try:
                _raise_problems(check_config(upload.path, config, info))
                dataset = store_dataset(session, settings, upload, info, owner)
            except BaseException:
                upload.discard()
                raise
            return _commit_job(session, settings, dataset, config, owner)

        job = await run_in_threadpool(_check_and_create)
    else:
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", ""):
            raise ProblemError(
                415,
                'send application/json {"dataset_id", "config"} or multipart/form-data file + config',
                code="unsupported_media_type",
            )
        raw = await read_json_body(request)
        try:
            body = JobCreate.model_validate(raw)
        except ValidationError as e:
            problems = problems_from_validation_error(e, prefix=("body",))
            raise ProblemError(
                422,
                "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems),
                code="validation_error",
                title="Invalid request",
                errors=problems,
            ) from None
        config = parse_train_config(body.config)
        check_model_size(config, settings)

        def _check_and_create_json() -> Job:
            dataset = (
                get_owned_dataset(session, body.dataset_id, owner)
                if re.fullmatch(ID_PATTERN, body.dataset_id)
                else None
            )
            if dataset is None:
                raise ProblemError(
                    422,
                    f"dataset {body.dataset_id} not found: upload the file with POST /datasets first",
                    code="dataset_not_found",
                    errors=[{"loc": ["body", "dataset_id"], "msg": "dataset not found", "type": "not_found"}],
                )
            path = settings.data_dir / dataset.path
            _raise_problems(check_config(path, config, _info_from_row(dataset)))
            return _commit_job(session, settings, dataset, config, owner)

        job = await run_in_threadpool(_check_and_create_json)

    # Committed: now the worker can find it. If the broker is down the job stays queued and the
    # workers' reaper re-sends queued jobs whose message is missing (worker/queue.py), so answer 202
    # with a warning rather than an error for a job that does exist.
    warnings: list[str] = []
    try:
        await run_in_threadpool(_enqueue, job.id)
    except Exception as e:
        log.error("job %s: enqueue failed: %s", job.id, e, extra={"job_id": job.id})
        reason = e.__class__.__name__
        warnings.append("the broker is unreachable: the job is saved and will be sent when it is back")

        def _note() -> None:
            store.add_event(session, job.id, "warning", f"could not reach the broker: {reason}")
            session.commit()

        await run_in_threadpool(_note)
    log.info("job %s queued (dataset %s)", job.id, job.dataset_id, extra={"job_id": job.id})
    response.headers["Location"] = f"/jobs/{job.id}"

    def _view() -> JobPublic:
        session.refresh(job)
        q, queue_warnings = _queue_view(request, session, job)
        return job_public(job, queue_info=q, warnings=warnings + queue_warnings)

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
    description="A queued job also shows its queue position and a warning when no worker is online.",
    responses=problem_responses(401, 404),
)
def get_job(job_id: JobId, request: Request, session: SessionDep, owner: OwnerDep) -> JobPublic:
    job = get_owned_job(session, job_id, owner)
    q, warnings = _queue_view(request, session, job)
    return job_public(job, queue_info=q, warnings=warnings)


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
    data = [
        MetricPointPublic(step=p.step, epoch=p.epoch, split=p.split, name=p.name, value=v, time=p.time)
        for p in rows
        if (v := _finite(p.value)) is not None
    ]
    return MetricsPublic(data=data, count=count)


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
    return EventsPublic(
        data=[EventPublic(id=e.id, time=e.time, kind=e.kind, message=e.message, data=e.data) for e in rows],
        count=count,
    )


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
    data = [
        CheckpointPublic(
            name=c.name,
            step=c.step,
            metrics=c.metrics or {},
            size_bytes=c.size_bytes,
            is_best=c.is_best,
            created_at=c.created_at,
        )
        for c in rows
    ]
    return CheckpointsPublic(data=data, count=len(data))


def _checkpoint_dir(settings: Settings, c: Checkpoint) -> Path:
    """The checkpoint's directory, refusing any recorded path that resolves outside the data dir."""
    root = settings.data_dir.resolve()
    path = (root / c.path).resolve()
    if not path.is_relative_to(root) or not path.is_dir():
        raise ProblemError(
            404, f"checkpoint {c.name} is no longer on disk (pruned?)", code="checkpoint_missing"
        )
    return path


class _QueueWriter:
    """A write-only file for tarfile whose bytes a generator in another thread yields as they come."""

    def __init__(self, q: queue.Queue[bytes | None | BaseException], stop: threading.Event) -> None:
        self.q = q
        self.stop = stop

    def write(self, data: bytes) -> int:
        while not self.stop.is_set():
            try:
                self.q.put(bytes(data), timeout=0.5)
                return len(data)
            except queue.Full:
                continue
        raise BrokenPipeError("download abandoned")


def stream_tar_gz(directory: Path, arcname: str, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
    """Yield a .tar.gz of ``directory``'s regular files, produced in a thread with bounded memory."""
    q: queue.Queue[bytes | None | BaseException] = queue.Queue(maxsize=16)
    stop = threading.Event()

    def produce() -> None:
        try:
            with tarfile.open(fileobj=_QueueWriter(q, stop), mode="w|gz", bufsize=chunk_size) as tar:  # type: ignore[call-overload]
                for entry in sorted(os.scandir(directory), key=lambda e: e.name):
                    # Only regular files: a symlink planted in a run dir must not read anything else.
                    if entry.is_file(follow_symlinks=False):
                        tar.add(entry.path, arcname=f"{arcname}/{entry.name}", recursive=False)
            q.put(None)
        except BaseException as e:
            if not stop.is_set():
                q.put(e)

    thread = threading.Thread(target=produce, name=f"tar-{arcname}", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                log.error("checkpoint archive %s failed: %s", arcname, item)
                return  # the client sees a truncated archive; headers are already sent
            yield item
    finally:
        stop.set()


@router.get(
    "/{job_id}/checkpoints/{name}",
    summary="Download one checkpoint as a .tar.gz",
    description=(
        "The checkpoint directory (model.safetensors, vocab.json, config.json, trainer_state.pt, meta.json) "
        "as one gzip'd tar, streamed. `curl -OJ http://127.0.0.1:8000/jobs/<id>/checkpoints/step-00000050`."
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
        **problem_responses(401, 404),
    },
)
def download_checkpoint(
    job_id: JobId, name: CheckpointName, session: SessionDep, owner: OwnerDep, settings: SettingsDep
) -> StreamingResponse:
    get_owned_job(session, job_id, owner)
    c = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == name))
    if c is None:
        raise ProblemError(404, f"job {job_id} has no checkpoint named {name}", code="not_found")
    directory = _checkpoint_dir(settings, c)
    filename = f"{job_id}-{name}.tar.gz"
    return StreamingResponse(
        stream_tar_gz(directory, name),
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


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
    task = (job.config or {}).get("task")
    if task == "classification" and body.texts is None:
        raise ProblemError(
            422,
            'this is a classification job: send {"texts": [...]}',
            code="validation_error",
            errors=[
                {"loc": ["body", "texts"], "msg": "field required for classification", "type": "missing"}
            ],
        )
    if task == "language_modeling" and body.prompt is None:
        raise ProblemError(
            422,
            'this is a language-modelling job: send {"prompt": ...}',
            code="validation_error",
            errors=[
                {"loc": ["body", "prompt"], "msg": "field required for language modelling", "type": "missing"}
            ],
        )
    c = session.scalar(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.is_best.desc(), Checkpoint.step.desc())
        .limit(1)
    )
    if c is None:
        raise ProblemError(
            409,
            f"job {job_id} ({job.status}) has no checkpoint yet; predict after its first evaluation",
            code="no_checkpoint",
        )
    session.close()  # release the connection while the model runs
    directory = _checkpoint_dir(settings, c)
    try:
        predictor = request.app.state.predictors.get(str(directory))
        if body.texts is not None:
            results = predictor.classify(body.texts)
            return PredictionsPublic(data=results, checkpoint=c.name)
        text = predictor.generate(
            body.prompt or "",
            max_new_tokens=body.max_new_tokens,
            temperature=body.temperature,
            top_k=body.top_k,
            seed=body.seed,
        )
        return GenerationPublic(text=text, checkpoint=c.name)
    except FileNotFoundError:
        raise ProblemError(
            409, f"checkpoint {c.name} was pruned while loading; retry", code="checkpoint_missing"
        ) from None
