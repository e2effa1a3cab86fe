"""Fixtures of the tests that start real processes. The whole service (``jobformer serve`` and workers) is
the ``service`` fixture of tests/conftest.py; a test that starts its workers itself (procs.start_worker)
takes ``env``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.procs import empty_database, service_environment


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[dict[str, str]]:
    """PostgreSQL (the session's database, emptied: a worker's reaper looks at every job in it), the shared
    Redis with a queue of the test's own, a data dir in tmp_path; in os.environ for the workers."""
    empty_database(pg_url)
    with service_environment(tmp_path, pg_url, monkeypatch) as values:
        yield values
