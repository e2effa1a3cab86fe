"""Uploaded datasets: recorded, locked while a job is created on them, deleted (or hidden while ended
jobs refer to them) without racing a job or an identical upload. Each function takes a ``Session`` first
and only flushes: the caller commits."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db.models import ACTIVE_STATES, Dataset, Job, new_id, utcnow
from core.db.store.locks import lock_key


class DatasetInUse(Exception):
    """A dataset cannot be deleted while jobs that have not ended use it."""

    def __init__(self, dataset_id: str, job_ids: list[str]) -> None:
        super().__init__(f"dataset {dataset_id} is used by active job(s) {', '.join(job_ids)}")
        self.dataset_id, self.job_ids = dataset_id, job_ids


def lock_dataset(s: Session, dataset_id: str) -> Dataset | None:
    """Lock dataset ``dataset_id`` for the rest of the transaction and return it, or None when it is gone
    (deleted, or deleted by a transaction that held the lock first). A job created in the same transaction
    cannot lose its dataset: deletion takes the same lock and then sees the job."""
    lock_key(s, f"dataset:{dataset_id}")
    d = s.get(Dataset, dataset_id, populate_existing=True)
    return d if d is not None and d.deleted_at is None else None


def lock_content(s: Session, sha256: str) -> None:
    """Lock the content-addressed file ``sha256`` for the rest of the transaction: take it before moving
    an upload into place and keep it until its row is committed, so a deletion of the last row with that
    content cannot remove the file in between (it takes the same lock)."""
    lock_key(s, f"content:{sha256}")


def live_datasets_with_content(s: Session, sha256: str) -> int:
    """How many datasets not deleted share the file with content ``sha256``."""
    return (
        s.scalar(
            select(func.count())
            .select_from(Dataset)
            .where(Dataset.sha256 == sha256, Dataset.deleted_at.is_(None))
        )
        or 0
    )


def create_dataset(
    s: Session,
    *,
    owner: str | None,
    filename: str,
    size_bytes: int,
    sha256: str,
    path: str,
    format: dict,
    rows: int,
    columns: list,
    preview: list,
) -> Dataset:
    """Record an uploaded file (already stored at ``path``, relative to the data directory)."""
    dataset = Dataset(
        id=new_id(),
        owner=owner,
        filename=filename,
        size_bytes=size_bytes,
        sha256=sha256,
        path=path,
        format=format,
        rows=rows,
        columns=columns,
        preview=preview,
        created_at=utcnow(),
    )
    s.add(dataset)
    s.flush()
    return dataset


def delete_dataset(s: Session, dataset_id: str) -> str | None:
    """Delete dataset ``dataset_id``: the row goes or, when jobs that ended refer to it, stays hidden as
    their record (``deleted_at``). Raises ``LookupError`` when it is already gone and ``DatasetInUse``
    while a job that has not ended uses it (nothing changed).

    Returns the path of its file (relative to the data directory) when no live dataset uses that file any
    more, else None. The caller removes that file before committing: this holds the dataset's and the
    content's locks, so neither a job (``lock_dataset``) nor an identical upload (``lock_content``) can
    start using the file until the commit."""
    d = lock_dataset(s, dataset_id)
    if d is None:
        raise LookupError(f"dataset {dataset_id} not found")
    jobs = s.execute(
        select(Job.id, Job.status).where(Job.dataset_id == d.id).order_by(Job.created_at.desc())
    ).all()
    active = [j.id for j in jobs if j.status in ACTIVE_STATES]
    if active:
        raise DatasetInUse(d.id, active)
    if jobs:
        d.deleted_at = utcnow()
    else:
        s.delete(d)
    s.flush()
    lock_content(s, d.sha256)
    return d.path if not live_datasets_with_content(s, d.sha256) else None
