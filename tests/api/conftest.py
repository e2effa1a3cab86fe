"""Fixtures for the API tests: an app on a migrated database (SQLite and PostgreSQL), a tmp data dir, and a
dedicated Redis database and queue (jobs are really sent to Redis; no worker consumes them here)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from core.settings import Settings, get_settings

TEST_BROKER_URL = "redis://127.0.0.1:6379/15"

SPAM_CSV = "label,text\n" + "".join(
    f"{'spam' if i % 3 == 0 else 'ham'},{'win a free prize now' if i % 3 == 0 else 'see you at lunch'} {i}\n"
    for i in range(60)
)


def purge_queue(queue: str) -> None:
    client = redis.Redis.from_url(TEST_BROKER_URL)
    try:
        keys = [queue, *client.scan_iter(match=f"*{queue}*")]
        client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def make_settings(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Settings]]:
    """Build Settings for this test's database, data dir and Redis queue (``**overrides`` as env values).

    The broker functions default to the process settings (get_settings), so they are set through the
    environment too.
    """
    queue = f"test-api-{uuid.uuid4().hex[:10]}"

    def make(**overrides: str) -> Settings:
        env = {
            "JOBFORMER_DATA_DIR": str(tmp_path / "data"),
            "JOBFORMER_DATABASE_URL": db_url,
            "JOBFORMER_BROKER_URL": TEST_BROKER_URL,
            "JOBFORMER_QUEUE_NAME": queue,
            "JOBFORMER_API_KEYS": "",
            **{f"JOBFORMER_{k.upper()}": str(v) for k, v in overrides.items()},
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        return get_settings()

    yield make
    get_settings.cache_clear()
    purge_queue(queue)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def spam_csv() -> bytes:
    """60 rows, header ``label,text``, two classes (20 spam, 40 ham)."""
    return SPAM_CSV.encode()


@pytest.fixture
def upload(client: TestClient) -> Callable[..., dict]:
    """POST /datasets with ``content`` and assert 201; returns the dataset."""

    def do(content: bytes, filename: str = "data.csv", headers: dict | None = None) -> dict:
        r = client.post("/datasets", files={"file": (filename, content, "text/csv")}, headers=headers)
        assert r.status_code == 201, r.text
        return r.json()

    return do


def queued_ids(queue: str) -> list[str]:
    """Task ids waiting in ``queue`` on the test Redis (kombu's JSON envelope)."""
    import json

    client = redis.Redis.from_url(TEST_BROKER_URL)
    try:
        return [json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()
