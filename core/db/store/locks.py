"""Locks held until the transaction ends, for checks that must not race (docs/design.md, "Storage")."""

from __future__ import annotations

import hashlib

from sqlalchemy import false, func, select, update
from sqlalchemy.orm import Session

from core.db.models import Dataset


def lock_key(s: Session, key: str) -> None:
    """Hold ``key`` until the transaction ends, so that a check and the write that depends on it are one
    step for every transaction that takes the same key (docs/design.md, "Storage").

    PostgreSQL: a transaction-level advisory lock on a 64-bit hash of ``key`` (a collision only makes two
    unrelated transactions wait for each other). SQLite: its single write lock, which covers every key; a
    write that changes nothing takes it, and the reads after it see every committed write (the reads
    before it ran outside any transaction). Callers take dataset, then content, then owner keys, so two
    transactions never wait for each other in a cycle."""
    if s.get_bind().dialect.name == "postgresql":
        digest = hashlib.sha256(key.encode()).digest()
        s.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True))))
    else:
        s.execute(update(Dataset).where(false()).values(id=Dataset.id))
