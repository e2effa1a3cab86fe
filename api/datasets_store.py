"""Dataset files: an upload received, inspected, moved into the content-addressed store and recorded; a
deleted dataset's file removed with its commit (docs/design.md, "Data flow" and "Storage").

POST /datasets stores an upload on its own; POST /jobs with a file stores it in the job's transaction
(api/submission.py). Either way the content's lock is held from the move until the commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from api.uploads import StoredUpload, move_into_store, receive_multipart
from core.db import store
from core.db.models import Dataset
from core.ml.data import DatasetInfo, inspect_file
from core.settings import Settings

log = logging.getLogger(__name__)

MB = 1024 * 1024


def max_upload_bytes(settings: Settings) -> int:
    return settings.max_upload_mb * MB


async def receive_upload(
    request: Request, settings: Settings, text_fields: tuple[str, ...] = ()
) -> tuple[StoredUpload, dict[str, str]]:
    """The multipart body's ``file``, streamed to a temp file within JOBFORMER_MAX_UPLOAD_MB, and its
    ``text_fields`` (api/uploads.py)."""
    form = await receive_multipart(
        request,
        tmp_dir=settings.data_dir / "tmp",
        max_bytes=max_upload_bytes(settings),
        text_fields=text_fields,
    )
    assert form.file is not None  # receive_multipart requires it
    return form.file, form.fields


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
    """Move the checked file into the content-addressed store and add its row (flushed, not committed).

    The content's lock is held from before the move until the caller's commit or rollback: a deletion of
    the last dataset with the same content cannot remove the file this row is about to point at. When the
    caller rolls back instead, ``discard_stored_file`` removes the file again unless another row uses it."""
    store.lock_content(session, upload.sha256)
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


def record_upload(
    session: Session, settings: Settings, upload: StoredUpload, info: DatasetInfo, owner: str | None
) -> Dataset:
    """Store the inspected upload as a dataset of its own and commit; on any failure nothing is left."""
    try:
        d = store_dataset(session, settings, upload, info, owner)
    except BaseException:
        upload.discard()
        raise
    try:
        session.commit()
    except BaseException:
        session.rollback()
        discard_stored_file(session, settings, d.sha256, d.path)
        raise
    log.info("dataset %s stored: %s, %d rows, sha256 %s", d.id, d.filename, d.rows, d.sha256[:12])
    return d


def commit_removing_file(session: Session, settings: Settings, rel: str | None) -> None:
    """Commit, and remove the dataset file ``rel`` (relative to the data directory; None: nothing) with
    that commit. The file is moved aside before the commit and put back if the commit fails, so no row
    that stays live points at a missing file; the caller holds the content's lock (``store.lock_content``)
    until the commit, so no identical upload reuses the file in between."""
    if rel is None:
        session.commit()
        return
    root = settings.data_dir.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):  # a recorded path must never reach outside the data dir
        log.error("dataset file %s is outside the data dir: left alone", rel)
        session.commit()
        return
    aside_dir = settings.data_dir / "tmp"
    aside_dir.mkdir(parents=True, exist_ok=True)
    aside = aside_dir / f"deleted-{uuid.uuid4().hex}"
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        session.commit()
        return
    try:
        session.commit()
    except BaseException:
        os.replace(aside, path)
        raise
    aside.unlink(missing_ok=True)


def discard_stored_file(session: Session, settings: Settings, sha256: str, rel: str) -> None:
    """After a rolled-back ``store_dataset``: remove the file it moved into the store, unless a live
    dataset uses the same content. Best effort: a failure leaves an unused file, never a broken row."""
    try:
        store.lock_content(session, sha256)
        unused = not store.live_datasets_with_content(session, sha256)
        commit_removing_file(session, settings, rel if unused else None)
    except Exception as e:  # noqa: BLE001 - the request's own error is the one to answer
        log.warning("could not remove the unused dataset file %s: %s", rel, e)
        with contextlib.suppress(Exception):
            session.rollback()
