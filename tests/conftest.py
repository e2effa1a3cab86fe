"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from tests.integration.procs import Service

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public datasets in ../shared/data (read-only; never copied into the repo)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the tests read the real datasets from ../shared/data")
    return SHARED_DATA


# ---------------------------------------------------------------------------------------------- databases
# PostgreSQL: one fresh database per test session (a unique name, so parallel runs never collide),
# migrated with Alembic and dropped at the end. SQLite: a migrated file copied per test.
PG_ADMIN_URL = os.environ.get("JOBFORMER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
_TABLES = ("metric_points", "events", "checkpoints", "jobs", "datasets")


def _pg_admin_connect():  # type: ignore[no-untyped-def]
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {PG_ADMIN_URL} is required by the tests (set JOBFORMER_TEST_PG_URL): {exc}"
        )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database for this test session (dropped afterwards)."""
    import migrations

    name = f"jobformer_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _pg_admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        migrations.upgrade(url)
        yield url
    finally:
        from core.db import session as db_session

        for key in [k for k in db_session._engines if k[1].endswith("/" + name)]:
            db_session._engines.pop(key).dispose()
        with _pg_admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import migrations

    path = tmp_path_factory.mktemp("sqlite-template") / "jobformer.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path, _sqlite_template: Path) -> str:
    """URL of a fresh, migrated SQLite file for this test."""
    path = tmp_path / "jobformer.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty database, once per backend: SQLite (fresh file) and PostgreSQL (the session's
    database, its tables emptied before the test)."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    url = request.getfixturevalue("pg_url")
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY CASCADE")
    return url


@pytest.fixture
def db_sessionmaker(db_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on ``db_url`` (an engine of its own, disposed after the test)."""
    from core.db.session import make_engine

    engine = make_engine(db_url)
    try:
        yield sessionmaker(engine, expire_on_commit=False)
    finally:
        engine.dispose()


@pytest.fixture
def db_session(db_sessionmaker: sessionmaker[Session]) -> Iterator[Session]:
    """One session on ``db_url``; the test commits what it wants to keep."""
    with db_sessionmaker() as s:
        yield s


@pytest.fixture
def one_torch_thread():
    """Torch on one thread: recorded numbers do not depend on the core count, and tiny models run faster
    without thread hand-offs on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------ the whole service
@pytest.fixture
def service_options() -> dict:
    """Keyword arguments of ``start_service`` for the ``service`` fixture; a module (or a folder's conftest)
    that needs API keys, calm heartbeats or more workers overrides this fixture."""
    return {}


@pytest.fixture
def service(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, service_options: dict
) -> Iterator[Service]:
    """A real `jobformer serve` and `jobformer worker` (subprocesses) on the session's PostgreSQL database,
    emptied, and the shared Redis (tests/integration/procs.py, ``start_service``)."""
    from tests.integration.procs import start_service

    with start_service(tmp_path, pg_url, monkeypatch, **service_options) as svc:
        yield svc
