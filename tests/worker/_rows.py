"""Rows the worker tests start from: a dataset row that points at no file (the worker's bookkeeping under
test never reads it)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.db import store


def placeholder_dataset(s: Session) -> str:
    """A one-row dataset's id, its file never written."""
    return store.create_dataset(
        s,
        owner=None,
        filename="a.csv",
        size_bytes=1,
        sha256="0" * 64,
        path="datasets/00/x",
        format={},
        rows=1,
        columns=["text"],
        preview=[],
    ).id
