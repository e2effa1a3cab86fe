"""One engine per process, re-created after fork (docs/design.md, "Storage").

SQLite gets WAL and a busy timeout so the API and a worker can share the file; PostgreSQL gets
pre-ping so a restarted server costs one failed query, not a dead pool, and an idle-in-transaction
timeout: a process frozen between two statements of a transaction (SIGSTOP, a paused VM) would otherwise
hold its row locks for ever, and the reaper's update of that job's row would wait on them for ever.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from core.settings import get_settings

_engines: dict[tuple[int, str], Engine] = {}


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain postgresql:// URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def idle_transaction_timeout_ms() -> int:
    """How long PostgreSQL lets a session sit idle inside a transaction before ending it: one heartbeat
    timeout (at least 10 s), so a frozen worker's locks go before the reaper needs its job's row."""
    return int(max(get_settings().heartbeat_timeout_seconds, 10.0) * 1000)


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        connect_args={"options": f"-c idle_in_transaction_session_timeout={idle_transaction_timeout_ms()}"},
    )


def get_engine(url: str | None = None) -> Engine:
    """The engine for ``url`` (default: the settings' database) in this process."""
    url = url or get_settings().resolved_database_url
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = make_engine(url)
    return engine


def forget_inherited_engines() -> None:
    """In a forked child: drop the engines inherited from the parent without closing the parent's
    connections (they stay the parent's); this process makes its own on first use."""
    pid = os.getpid()
    for key, engine in list(_engines.items()):
        if key[0] != pid:
            engine.dispose(close=False)
            del _engines[key]


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A short transaction: commit on success, roll back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
