"""Fixtures of the API client commands' tests: a real API server (uvicorn in a thread, real HTTP) on the
test's SQLite file, its data dir and a queue of its own on the test Redis. No worker runs: a test plays one
through the store, or its jobs stay queued."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import uvicorn

from api.main import create_app
from core.settings import get_settings
from tests.integration.procs import free_port

TEST_BROKER_URL = "redis://127.0.0.1:6379/15"
CSV = "label,text\n" + "".join(
    f"{'spam' if i % 3 == 0 else 'ham'},{'win a prize' if i % 3 == 0 else 'see you'} {i}\n" for i in range(40)
)


@pytest.fixture
def api_keys() -> str:
    """The server's JOBFORMER_API_KEYS: none, an open server; a module that needs keys overrides this."""
    return ""


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_keys: str) -> Iterator[str]:
    """The base URL of the running server; the test's os.environ has its settings (the CLI's own
    JOBFORMER_API_KEY and JOBFORMER_URL removed)."""
    queue = f"test-cli-{uuid.uuid4().hex[:10]}"
    env = {
        "JOBFORMER_DATA_DIR": str(tmp_path / "data"),
        "JOBFORMER_DATABASE_URL": sqlite_url,
        "JOBFORMER_BROKER_URL": TEST_BROKER_URL,
        "JOBFORMER_QUEUE_NAME": queue,
        "JOBFORMER_API_KEYS": api_keys,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("JOBFORMER_API_KEY", raising=False)
    monkeypatch.delenv("JOBFORMER_URL", raising=False)
    get_settings.cache_clear()
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(create_app(get_settings()), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    get_settings.cache_clear()
    client = redis.Redis.from_url(TEST_BROKER_URL)
    client.delete(queue)
    client.close()


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """40 rows, header ``label,text``, two classes (14 spam, 26 ham)."""
    path = tmp_path / "spam.csv"
    path.write_text(CSV)
    return path
