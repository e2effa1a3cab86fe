"""Job submission (POST /jobs): read the request, check its config against the dataset, record the job,
then enqueue it (docs/design.md, "Data flow").

The JSON body names a dataset uploaded before; the multipart form brings the file along. That is their
only difference: each is read into a :class:`JobRequest` whose ``source`` says where the dataset comes
from, and one path checks, records and enqueues both. Every problem with the request is answered at once,
before anything is queued; the job is committed first and enqueued after, so a worker never receives an
id it cannot find.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

import broker
from api.datasets_store import discard_stored_file, inspect_upload, receive_upload, store_dataset
from api.deps import ID_PATTERN, get_owned_dataset
from api.errors import ProblemError
from api.init_from import resolve_init_from
from api.model_runs import check_test_dataset
from api.schemas import JobCreate
from api.uploads import StoredUpload, is_multipart, read_json_body
from core import webhooks
from core.db import store
from core.db.models import ACTIVE_STATES, Dataset, Job
from core.ml.config import TrainConfig, config_from_dict, config_from_text, problems_from_validation_error
from core.ml.data import DatasetInfo, FileFormat, check_config
from core.ml.errors import ConfigError, Problem, format_problems
from core.settings import Settings

log = logging.getLogger(__name__)

ACTIVE_JOBS_RETRY_AFTER = 30
BROKER_DOWN_WARNING = "the broker is unreachable: the job is saved and will be sent when it is back"


# --- checks of the request --------------------------------------------------------------------------


def check_active_limit(session: Session, settings: Settings, owner: str | None) -> None:
    """A 429 early, before an upload is read. Only a fast answer: the limit itself is enforced atomically
    where the job row is written (``_commit_job``)."""
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
        raise _too_many_active(active, settings)


def _too_many_active(active: int, settings: Settings) -> ProblemError:
    return ProblemError(
        429,
        f"{active} jobs are already queued or running for this key (limit "
        f"{settings.max_active_jobs_per_key}, setting JOBFORMER_MAX_ACTIVE_JOBS_PER_KEY); "
        "wait for one to finish or cancel one",
        code="too_many_active_jobs",
        headers={"Retry-After": str(ACTIVE_JOBS_RETRY_AFTER)},
    )


def resolve_queue(settings: Settings, requested: str | None) -> str:
    """The job's queue: ``requested`` when it is one of the configured queues (None: the default one),
    else a 422 naming the field and the queues it may be."""
    if requested is None:
        return settings.queue_name
    allowed = settings.allowed_queues
    if requested not in allowed:
        shown = requested if len(requested) <= 64 else requested[:64] + "..."
        names = ", ".join(allowed)
        raise ProblemError(
            422,
            f"queue {shown!r} is not one of this server's queues ({names}; setting JOBFORMER_QUEUES): "
            f"send one of those, or leave queue out for {settings.queue_name!r}",
            code="validation_error",
            title="Invalid request",
            errors=[{"loc": ["body", "queue"], "msg": f"must be one of: {names}", "type": "enum"}],
        )
    return requested


def parse_train_config(raw: Any) -> TrainConfig:
    """The request's config (an object, or a JSON string in a form) as a TrainConfig, or a ConfigError
    with every problem under loc ``config``."""
    if isinstance(raw, str):
        return config_from_text(raw, prefix=("config",))
    return config_from_dict(raw, prefix=("config",))


def check_model_size(config: TrainConfig, settings: Settings) -> None:
    """Refuse a model too large for this machine before it is queued, with the estimate that refused it."""
    vocab = config.tokenizer.max_vocab
    # A classifier has two classes at least, and with them its n-gram table (model.ngram_buckets rows).
    bag = config.task == "classification" and config.model.ngrams > 0
    estimate = config.model.estimate_parameters(vocab, num_classes=2 if bag else 0)
    if estimate > settings.max_model_params:
        table = f", an n-gram table of model.ngram_buckets={config.model.ngram_buckets} rows" if bag else ""
        msg = (
            f"the model would have about {estimate:,} parameters (model.d_model={config.model.d_model}, "
            f"model.n_layers={config.model.n_layers}, model.dim_feedforward={config.model.dim_feedforward}, "
            f"a vocabulary of up to tokenizer.max_vocab={vocab}{table}); this server accepts at most "
            f"{settings.max_model_params:,} (JOBFORMER_MAX_MODEL_PARAMS): make the model smaller"
        )
        raise ConfigError(
            msg, code="model_too_large", problems=[Problem(["config", "model"], msg, "too_large")]
        )


def _raise_problems(problems: list[Problem]) -> None:
    if problems:
        raise ConfigError(
            "the config does not fit the dataset: " + format_problems(problems),
            problems=problems,
        )


# --- where the dataset comes from -------------------------------------------------------------------


@dataclass
class UploadedDataset:
    """The form's file: inspected once received, stored in the job's own transaction. Until it is
    stored, any failure drops the temp file; a job that is not recorded takes the stored file with it."""

    upload: StoredUpload
    info: DatasetInfo | None = None
    stored: tuple[str, str] | None = field(default=None, init=False)  # (sha256, path) once in the store

    async def inspect(self, settings: Settings) -> None:
        self.info = await run_in_threadpool(inspect_upload, self.upload, settings)

    def dataset(
        self, session: Session, settings: Settings, config: TrainConfig, owner: str | None
    ) -> Dataset:
        assert self.info is not None, "inspect() first"
        try:
            _raise_problems(check_config(self.upload.path, config, self.info))
            dataset = store_dataset(session, settings, self.upload, self.info, owner)
        except BaseException:
            self.upload.discard()
            raise
        self.stored = (dataset.sha256, dataset.path)
        return dataset

    def undo(self, session: Session, settings: Settings) -> None:
        # No job, so no dataset either (one transaction): drop the file it brought, unless shared.
        session.rollback()
        if self.stored is not None:
            discard_stored_file(session, settings, *self.stored)

    def discard(self) -> None:
        self.upload.discard()


@dataclass
class StoredDataset:
    """The JSON body's ``dataset_id``: a dataset uploaded before, checked as recorded at its upload."""

    dataset_id: str

    async def inspect(self, settings: Settings) -> None:
        """Nothing to do: the upload inspected it."""

    def dataset(
        self, session: Session, settings: Settings, config: TrainConfig, owner: str | None
    ) -> Dataset:
        not_found = ProblemError(
            422,
            f"dataset {self.dataset_id} not found: upload the file with POST /datasets first",
            code="dataset_not_found",
            errors=[{"loc": ["body", "dataset_id"], "msg": "dataset not found", "type": "not_found"}],
        )
        valid_id = re.fullmatch(ID_PATTERN, self.dataset_id)
        dataset = get_owned_dataset(session, self.dataset_id, owner) if valid_id else None
        if dataset is None:
            raise not_found
        try:
            _raise_problems(check_config(settings.data_dir / dataset.path, config, _info_from_row(dataset)))
        except FileNotFoundError:  # deleted while we read it
            raise not_found from None
        # Checked without a lock (reading the file takes a while); now lock the dataset for the rest of
        # the transaction: a DELETE that came first has removed it, one that comes later sees this job.
        if store.lock_dataset(session, dataset.id) is None:
            raise not_found
        return dataset

    def undo(self, session: Session, settings: Settings) -> None:
        """Nothing of its own: the request's session rolls back."""

    def discard(self) -> None:
        """Nothing received."""


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


# --- reading the request ----------------------------------------------------------------------------


@dataclass
class JobRequest:
    """A POST /jobs request, read and checked on its own: what is left is to check it against its data."""

    queue: str
    config: TrainConfig
    source: UploadedDataset | StoredDataset
    webhook_url: str | None = None
    test_dataset_id: str | None = None  # evaluated when training succeeds (api/model_runs.py)


async def read_job_request(request: Request, settings: Settings) -> JobRequest:
    """The request's queue, config and dataset; 413/415/422 for a body that is not a job request."""
    if is_multipart(request):
        queue, raw_config, source, webhook_url, test_dataset_id = await _read_form(request, settings)
    else:
        queue, raw_config, source, webhook_url, test_dataset_id = await _read_json(request)
    try:
        queue_name = resolve_queue(settings, queue)
        if webhook_url is not None:
            await run_in_threadpool(check_webhook_url, settings, webhook_url)  # resolves the host
        if raw_config is None:  # only a form can leave it out: JobCreate requires it
            raise ProblemError(
                422,
                "no 'config' part: send the training config as a JSON string in form field 'config'",
                code="invalid_request",
                errors=[{"loc": ["body", "config"], "msg": "field required", "type": "missing"}],
            )
        config = parse_train_config(raw_config)
        check_model_size(config, settings)
    except BaseException:
        source.discard()
        raise
    await source.inspect(settings)
    return JobRequest(
        queue=queue_name,
        config=config,
        source=source,
        webhook_url=webhook_url,
        test_dataset_id=test_dataset_id,
    )


def check_webhook_url(settings: Settings, url: str) -> None:
    """422 at ``body.webhook_url`` unless this server signs webhooks and may call ``url``."""
    if not settings.webhook_secret:
        reason = "this server does not send webhooks (no JOBFORMER_WEBHOOK_SECRET): leave webhook_url out"
    else:
        try:
            webhooks.check_url(url, settings.webhook_allowed_hosts)
            return
        except webhooks.WebhookRefused as e:
            reason = str(e)
    raise ProblemError(
        422,
        f"webhook_url: {reason}",
        code="invalid_webhook_url",
        errors=[{"loc": ["body", "webhook_url"], "msg": reason, "type": "value_error"}],
    )


async def _read_form(
    request: Request, settings: Settings
) -> tuple[str | None, str | None, UploadedDataset, str | None, str | None]:
    upload, fields = await receive_upload(
        request, settings, text_fields=("config", "queue", "webhook_url", "test_dataset_id")
    )
    return (
        fields.get("queue"),
        fields.get("config"),
        UploadedDataset(upload),
        fields.get("webhook_url"),
        fields.get("test_dataset_id") or None,
    )


async def _read_json(
    request: Request,
) -> tuple[str | None, dict[str, Any], StoredDataset, str | None, str | None]:
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
            format_problems(problems),
            code="validation_error",
            title="Invalid request",
            errors=problems,
        ) from None
    return body.queue, body.config, StoredDataset(body.dataset_id), body.webhook_url, body.test_dataset_id


# --- recording and enqueueing -----------------------------------------------------------------------


async def submit_job(
    request: Request, session: Session, settings: Settings, owner: str | None
) -> tuple[Job, list[str]]:
    """Read, check, record and enqueue the job of a POST /jobs; the job and the warnings to show."""
    await run_in_threadpool(check_active_limit, session, settings, owner)
    job_request = await read_job_request(request, settings)
    job = await run_in_threadpool(create_job, session, settings, owner, job_request)
    warnings = await enqueue(session, settings, job)
    log.info("job %s queued (dataset %s)", job.id, job.dataset_id, extra={"job_id": job.id})
    return job, warnings


def create_job(session: Session, settings: Settings, owner: str | None, job_request: JobRequest) -> Job:
    """Check the config against its dataset and record the job, committed (nothing is left behind when
    it is refused)."""
    source = job_request.source
    dataset = source.dataset(session, settings, job_request.config, owner)
    try:
        # a finished job's id becomes its best checkpoint's directory (docs/design.md, "Subword tokens and init_from")
        job_request.config = resolve_init_from(session, settings, job_request.config, owner)
        if job_request.test_dataset_id is not None:
            config = job_request.config.model_dump(mode="json")
            check_test_dataset(session, job_request.test_dataset_id, config, owner)
        return _commit_job(session, settings, dataset, owner, job_request)
    except BaseException:
        source.undo(session, settings)
        raise


def _commit_job(
    session: Session, settings: Settings, dataset: Dataset, owner: str | None, job_request: JobRequest
) -> Job:
    """Record the job (queued on its queue, with its resolved config) and commit, so a worker can find
    it once enqueued. The per-key limit is counted in the same transaction under the key's lock, so
    concurrent requests never pass it together (core.db.store.create_job)."""
    try:
        job = store.create_job(
            session,
            dataset_id=dataset.id,
            config=job_request.config.model_dump(mode="json"),
            owner=owner,
            max_attempts=settings.max_attempts,
            queue=job_request.queue,
            active_limit=settings.max_active_jobs_per_key,
        )
    except store.ActiveJobLimit as e:
        raise _too_many_active(e.active, settings) from None
    job.webhook_url = job_request.webhook_url
    job.test_dataset_id = job_request.test_dataset_id
    session.commit()
    return job


async def enqueue(session: Session, settings: Settings, job: Job) -> list[str]:
    """Send the committed job's id to its queue; the warnings to show (none when it was sent).

    If the broker is down the job stays queued and the workers' reaper re-sends queued jobs whose message
    is missing (broker/), so the answer is a 202 with a warning rather than an error for a job that does
    exist."""
    try:
        needs = broker.job_needs(job.config)  # its capacity queue (docs/design.md, "Queues")
        await run_in_threadpool(broker.enqueue_job, job.id, job.queue, needs=needs, settings=settings)
    except Exception as e:
        log.error("job %s: enqueue failed: %s", job.id, e, extra={"job_id": job.id})
        reason = e.__class__.__name__

        def _note() -> None:
            store.add_event(session, job.id, "warning", f"could not reach the broker: {reason}")
            session.commit()

        await run_in_threadpool(_note)
        return [BROKER_DOWN_WARNING]
    return []
