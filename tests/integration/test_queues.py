"""Queues stay apart (issue 8): a real `jobformer worker -Q cpu` and the API on one PostgreSQL database
with a `cpu` and a `gpu` queue. A `gpu` job, with no `gpu` worker, stays queued with a warning naming its
queue and is never run by the `cpu` worker, whose reaper had several chances to take it; a `cpu` job on
the same database runs.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

import broker as queue
from api.main import create_app
from core.settings import get_settings
from tests.integration.procs import (
    REDIS_URL,
    Proc,
    empty_database,
    job_events,
    job_row,
    make_dataset,
    service_environment,
    tiny_config,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def queues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[dict[str, str]]:
    """Two queues on one emptied PostgreSQL database. The process's (and the API's) default queue is
    `gpu`: the worker consumes `cpu` only because of `-Q`, so its reaper and online mark must follow -Q."""
    empty_database(pg_url)
    base = f"jf-test-{uuid.uuid4().hex[:8]}"
    names = {"cpu": f"{base}-cpu", "gpu": f"{base}-gpu"}
    with service_environment(tmp_path, pg_url, monkeypatch):
        monkeypatch.setenv("JOBFORMER_QUEUE_NAME", names["gpu"])
        monkeypatch.setenv("JOBFORMER_QUEUES", f"{names['cpu']},{names['gpu']}")
        get_settings.cache_clear()
        try:
            yield names
        finally:
            client = redis.Redis.from_url(REDIS_URL)
            try:
                for name in names.values():
                    client.delete(name, *client.scan_iter(match=f"{queue.WORKER_KEY_PREFIX}:{name}:*"))
            finally:
                client.close()


def test_a_gpu_job_never_runs_on_the_cpu_worker(queues: dict[str, str], tmp_path: Path) -> None:
    settings = get_settings()
    rows = make_dataset(settings.data_dir)  # the CSV a test upload would store
    body = (settings.data_dir / rows["path"]).read_bytes()
    config = tiny_config(max_steps=40, eval_every=20)
    with TestClient(create_app(settings)) as api:
        dataset = api.post("/datasets", files={"file": ("tiny.csv", body, "text/csv")}).json()
        gpu_job = api.post(
            "/jobs", json={"dataset_id": dataset["id"], "config": config, "queue": queues["gpu"]}
        ).json()
        worker = Proc(
            [sys.executable, "-m", "cli.main", "worker", "--loglevel", "info", "-Q", queues["cpu"]],
            tmp_path / "worker-cpu.log",
        )
        try:
            cpu_job = api.post(
                "/jobs", json={"dataset_id": dataset["id"], "config": config, "queue": queues["cpu"]}
            ).json()
            assert (gpu_job["queue_name"], cpu_job["queue_name"]) == (queues["gpu"], queues["cpu"])
            wait_for(
                lambda: job_row(cpu_job["id"]).status == "succeeded", "the cpu job to run", procs=(worker,)
            )

            # Give the cpu worker's reaper a few heartbeat timeouts with the gpu job old enough to re-send.
            timeout = settings.heartbeat_timeout_seconds
            created = time.monotonic()
            while time.monotonic() - created < 3 * timeout + 2:
                assert job_row(gpu_job["id"]).status == "queued"
                time.sleep(1.0)

            job = job_row(gpu_job["id"])
            assert (job.status, job.attempts, job.worker, job.started_at) == ("queued", 0, None, None)
            assert [kind for kind, _, _ in job_events(gpu_job["id"])] == ["queued"]
            assert queue.queued_message_ids(queues["gpu"]) == {gpu_job["id"]}  # sent once, by the API
            assert queue.queued_message_ids(queues["cpu"]) == set()
            log = worker.log_tail(200_000)
            assert f"reaper started on jobformer-{worker.pid}@" in log and f"for queue {queues['cpu']}" in log
            assert gpu_job["id"] not in log

            queue._workers_cache.clear()
            assert queue.workers_online(queues["cpu"]) == 1
            assert queue.workers_online(queues["gpu"]) == 0
            view = api.get(f"/jobs/{gpu_job['id']}").json()
            assert view["queue"] == {"position": 1, "workers_online": 0}
            assert view["warnings"] == [
                f"no worker is online for queue '{queues['gpu']}': the job will start when one connects "
                f"(start one with `jobformer worker -Q {queues['gpu']}`)"
            ]
        finally:
            worker.stop()
