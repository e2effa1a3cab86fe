"""Datasets: upload (streamed, checked, content-addressed), list, get, delete."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import OwnerDep, SessionDep, SettingsDep
from api.errors import ProblemError, problem_responses
from api.schemas import DatasetPublic, DatasetsPublic
from api.uploads import StoredUpload, move_into_store, receive_multipart
from core.db import store
from core.db.models import ACTIVE_STATES, Dataset, Job, utcnow
from core.ml.data import DatasetInfo, inspect_file
from core.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/datasets", tags=["datasets"])

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
DatasetId = Annotated[
    str,
    PathParam(pattern=ID_PATTERN, description="A dataset id.", examples=["9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"]),
]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000, description="Items to skip.")]

MB = 1024 * 1024

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                },
                "example": {"file": "label,text\nham,see you at lunch\nspam,WIN a prize now\n..."},
            }
        },
    }
}


def dataset_public(d: Dataset) -> DatasetPublic:
    fmt = dict(d.format or {})
    warnings = fmt.pop("warnings", [])
    return DatasetPublic(
        id=d.id,
        filename=d.filename,
        size_bytes=d.size_bytes,
        sha256=d.sha256,
        format=fmt,  # type: ignore[arg-type]
        rows=d.rows,
        columns=[str(c) for c in d.columns],
        preview=[{str(k): str(v) for k, v in row.items()} for row in d.preview],
        warnings=list(warnings),
        created_at=d.created_at,
    )


def get_owned_dataset(session: Session, dataset_id: str, owner: str | None) -> Dataset | None:
    """The dataset if it exists and belongs to ``owner`` (anyone's when auth is off)."""
    d = session.get(Dataset, dataset_id)
    if d is None or d.deleted_at is not None or (owner is not None and d.owner != owner):
        return None
    return d


def not_found(dataset_id: str) -> ProblemError:
    return ProblemError(404, f"dataset {dataset_id} not found", code="not_found")


def max_upload_bytes(settings: Settings) -> int:
    return settings.max_upload_mb * MB


def inspect_upload(upload: StoredUpload, settings: Settings) -> DatasetInfo:
    """inspect_file on the received temp file; on DataError the temp file is dropped (nothing stored)."""
    try:
        return inspect_file(upload.path, max_rows=settings.max_rows)
    except BaseException:
        upload.discard()
        raise


def store_dataset(
    session: Session, settings: Settings, upload: StoredUpload, info: DatasetInfo, owner: str | None
) -> Dataset:
    """Move the checked file into the content-addressed store and add its row (flushed, not committed)."""
    rel = move_into_store(upload, settings.data_dir)
    fmt: dict[str, Any] = {**info.format.as_dict(), "warnings": list(info.warnings)}
    return store.create_dataset(
        session,
        owner=owner,
        filename=upload.filename,
        size_bytes=upload.size_bytes,
        sha256=upload.sha256,
        path=rel,
        format=fmt,
        rows=info.rows,
        columns=[str(c) for c in info.columns],
        preview=info.preview,
    )


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    summary="Upload a dataset (CSV/TSV or plain text)",
    description=(
        "Multipart field `file`. The upload is streamed to disk and hashed; it is refused with 413 as soon as "
        "it passes `JOBFORMER_MAX_UPLOAD_MB`. The file is checked (encoding, delimiter, header, columns, rows) "
        "and stored by SHA-256. Example: `curl -F file=@spam.tsv http://127.0.0.1:8000/datasets`."
    ),
    openapi_extra=UPLOAD_BODY,
    responses=problem_responses(401, 413, 415, 422),
)
async def upload_dataset(
    request: Request, settings: SettingsDep, session: SessionDep, owner: OwnerDep
) -> DatasetPublic:
    form = await receive_multipart(
        request, tmp_dir=settings.data_dir / "tmp", max_bytes=max_upload_bytes(settings)
    )
    assert form.file is not None
    upload = form.file
    info = await run_in_threadpool(inspect_upload, upload, settings)

    def _record() -> Dataset:
        try:
            d = store_dataset(session, settings, upload, info, owner)
            session.commit()
        except BaseException:
            upload.discard()
            raise
        log.info("dataset %s stored: %s, %d rows, sha256 %s", d.id, d.filename, d.rows, d.sha256[:12])
        return d

    return dataset_public(await run_in_threadpool(_record))


@router.get(
    "",
    response_model=DatasetsPublic,
    summary="List datasets, newest first",
    responses=problem_responses(401),
)
def list_datasets(
    session: SessionDep, owner: OwnerDep, limit: Limit = 100, offset: Offset = 0
) -> DatasetsPublic:
    where = [Dataset.deleted_at.is_(None), *([Dataset.owner == owner] if owner is not None else [])]
    count = session.scalar(select(func.count()).select_from(Dataset).where(*where)) or 0
    rows = session.scalars(
        select(Dataset)
        .where(*where)
        .order_by(Dataset.created_at.desc(), Dataset.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return DatasetsPublic(data=[dataset_public(d) for d in rows], count=count)


@router.get(
    "/{dataset_id}",
    response_model=DatasetPublic,
    summary="One dataset",
    responses=problem_responses(401, 404),
)
def get_dataset(dataset_id: DatasetId, session: SessionDep, owner: OwnerDep) -> DatasetPublic:
    d = get_owned_dataset(session, dataset_id, owner)
    if d is None:
        raise not_found(dataset_id)
    return dataset_public(d)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Delete a dataset (409 while a job uses it)",
    responses=problem_responses(401, 404, 409),
)
def delete_dataset(
    dataset_id: DatasetId, session: SessionDep, owner: OwnerDep, settings: SettingsDep
) -> Response:
    d = get_owned_dataset(session, dataset_id, owner)
    if d is None:
        raise not_found(dataset_id)
    jobs = session.execute(
        select(Job.id, Job.status).where(Job.dataset_id == d.id).order_by(Job.created_at.desc())
    ).all()
    active = [j.id for j in jobs if j.status in ACTIVE_STATES]
    if active:
        raise ProblemError(
            409,
            f"dataset {d.id} is used by active job(s) {', '.join(active[:5])}; cancel them first",
            code="dataset_in_use",
        )
    sha, rel = d.sha256, d.path
    if jobs:
        # Finished jobs keep their dataset_id (and their results, checkpoints, config): the row stays as
        # their record, hidden from the API; only the file goes.
        d.deleted_at = utcnow()
    else:
        session.delete(d)
    session.commit()
    # Content-addressed: the file is shared by every live row with the same content; remove it with the last.
    others = (
        session.scalar(
            select(func.count())
            .select_from(Dataset)
            .where(Dataset.sha256 == sha, Dataset.deleted_at.is_(None))
        )
        or 0
    )
    if not others:
        path = (settings.data_dir / rel).resolve()
        if path.is_relative_to(settings.data_dir.resolve()):
            Path(path).unlink(missing_ok=True)
    log.info("dataset %s deleted", dataset_id)
    return Response(status_code=204)
