"""Datasets: upload (streamed, checked, content-addressed), list, get, delete.

Receiving, inspecting and storing the file is api/datasets_store.py; the answers are built in api/views.py.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Request, Response
from fastapi import Path as PathParam
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from api.datasets_store import commit_removing_file, inspect_upload, receive_upload, record_upload
from api.deps import ID_PATTERN, Limit, Offset, OwnerDep, SessionDep, SettingsDep, get_owned_dataset
from api.errors import ProblemError, problem_responses
from api.schemas import DatasetPublic, DatasetsPublic
from api.views import dataset_public
from core.db import store
from core.db.models import Dataset

log = logging.getLogger(__name__)

router = APIRouter(prefix="/datasets", tags=["datasets"])

DatasetId = Annotated[
    str,
    PathParam(pattern=ID_PATTERN, description="A dataset id.", examples=["9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"]),
]

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


def not_found(dataset_id: str) -> ProblemError:
    return ProblemError(404, f"dataset {dataset_id} not found", code="not_found")


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
    upload, _ = await receive_upload(request, settings)
    info = await run_in_threadpool(inspect_upload, upload, settings)
    return dataset_public(await run_in_threadpool(record_upload, session, settings, upload, info, owner))


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
    if get_owned_dataset(session, dataset_id, owner) is None:
        raise not_found(dataset_id)
    # One transaction under the dataset's and the content's locks (core.db.store.delete_dataset): a
    # POST /jobs on this dataset, or an upload of the same content, waits for it and then sees the result.
    # Finished jobs keep their dataset_id (and their results, checkpoints, config): the row stays as their
    # record, hidden from the API; the file goes with the last live row of that content.
    try:
        unused_file = store.delete_dataset(session, dataset_id)
    except LookupError:
        raise not_found(dataset_id) from None
    except store.DatasetInUse as e:
        raise ProblemError(
            409,
            f"dataset {dataset_id} is used by active job(s) {', '.join(e.job_ids[:5])}; cancel them first",
            code="dataset_in_use",
        ) from None
    commit_removing_file(session, settings, unused_file)
    log.info("dataset %s deleted", dataset_id)
    return Response(status_code=204)
