"""Workers take only jobs they can run (docs/design.md, "Queues" and "Memory"): a job asking for 2
processes waits in its queue's capacity queue ``<queue>.p2``, which a worker offering 1 process
(JOBFORMER_WORKER_PROCESSES=1) does not consume; a job needing 10 GiB waits in ``<queue>.m12``, which a
worker offering 5 GiB (JOBFORMER_WORKER_MEMORY_GB) does not consume. The API says why each waits; a big
enough worker, started later, runs it. Real API (in process), real `jobformer worker` processes,
PostgreSQL and Redis.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import broker
from api.main import create_app
from core.settings import get_settings
from tests.integration.procs import (
    job_events,
    job_row,
    make_dataset,
    start_worker,
    tiny_config,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _worker_env(processes: int, memory_gb: float = 64) -> dict[str, str]:
    return {
        **os.environ,
        "JOBFORMER_WORKER_PROCESSES": str(processes),
        "JOBFORMER_WORKER_MEMORY_GB": str(memory_gb),
    }


def test_a_two_process_job_waits_for_a_worker_that_can_run_it(env: dict[str, str], tmp_path: Path) -> None:
    """Would catch: a 1-process worker claiming a 2-process job (routing ignored, or a message in the
    plain queue run anyway), a job nobody can serve failing instead of waiting, no warning, or the job
    never picked up when a big enough worker comes online."""
    settings = get_settings()
    queue = settings.queue_name
    rows = make_dataset(settings.data_dir)
    body = (settings.data_dir / rows["path"]).read_bytes()
    small = start_worker(tmp_path, "small", env=_worker_env(1))
    big = None
    try:
        with TestClient(create_app(settings)) as api:
            dataset = api.post("/datasets", files={"file": ("tiny.csv", body, "text/csv")}).json()
            config = tiny_config(max_steps=40, eval_every=20)
            two = api.post(
                "/jobs",
                json={"dataset_id": dataset["id"], "config": {**config, "resources": {"processes": 2}}},
            ).json()
            wait_for(
                lambda: broker.offers_online(queue, settings=settings) == [broker.Offer(1, 64.0)],
                "the 1-process worker online",
                procs=(small,),
            )
            # A message for the 2-process job in the plain queue too (sent by hand): the small worker must
            # pass it on to the capacity queue rather than run it.
            broker.enqueue_job(two["id"], queue, settings=settings)
            one = api.post("/jobs", json={"dataset_id": dataset["id"], "config": config}).json()
            wait_for(lambda: job_row(one["id"]).status == "succeeded", "the 1-process job", procs=(small,))
            wait_for(
                lambda: "sent to its capacity queue unclaimed" in small.log_tail(200_000),
                "the small worker to pass the hand-sent message on",
                procs=(small,),
            )

            job = job_row(two["id"])
            assert (job.status, job.attempts, job.worker) == ("queued", 0, None)
            assert not [k for k, _m, _d in job_events(two["id"]) if k in ("started", "resumed")]
            waiting = broker.queued_message_ids(broker.capacity_queue(queue, 2), settings=settings)
            assert two["id"] in waiting
            warnings = api.get(f"/jobs/{two['id']}").json()["warnings"]
            assert any("resources.processes=2" in w and "can run is 1" in w for w in warnings), warnings

            big = start_worker(tmp_path, "big", env=_worker_env(2))
            wait_for(
                lambda: job_row(two["id"]).status in ("succeeded", "failed"),
                "the 2-process job on the 2-process worker",
                timeout=240,
                procs=(small, big),
            )
            job = job_row(two["id"])
            assert (job.status, job.attempts) == ("succeeded", 1), (job.error_message, big.log_tail())
            assert f"job {two['id']} claimed by" in big.log_tail(10**6)
            assert f"job {two['id']} claimed by" not in small.log_tail(10**6)
            assert "launching 2 processes" in big.log_tail(10**6)
            assert api.get(f"/jobs/{two['id']}").json()["warnings"] == []
    finally:
        small.stop()
        if big is not None:
            big.stop()


def test_a_job_waits_for_a_worker_with_the_memory_for_it(env: dict[str, str], tmp_path: Path) -> None:
    """Would catch: a worker without the memory claiming the job (memory not routed, or a message in the
    plain queue run anyway), no warning, or the job never picked up by a worker with enough memory."""
    settings = get_settings()
    queue = settings.queue_name
    rows = make_dataset(settings.data_dir)
    body = (settings.data_dir / rows["path"]).read_bytes()
    small = start_worker(tmp_path, "small", env=_worker_env(1, memory_gb=5))
    big = None
    try:
        with TestClient(create_app(settings)) as api:
            dataset = api.post("/datasets", files={"file": ("tiny.csv", body, "text/csv")}).json()
            config = {**tiny_config(max_steps=20, eval_every=20), "resources": {"memory_gb": 10}}
            job = api.post("/jobs", json={"dataset_id": dataset["id"], "config": config}).json()
            wait_for(
                lambda: broker.offers_online(queue, settings=settings) == [broker.Offer(1, 5.0)],
                "the 5 GiB worker online",
                procs=(small,),
            )
            broker.enqueue_job(job["id"], queue, settings=settings)  # by hand, in the plain queue
            wait_for(
                lambda: "sent to its capacity queue unclaimed" in small.log_tail(200_000),
                "the small worker to pass the hand-sent message on",
                procs=(small,),
            )
            row = job_row(job["id"])
            assert (row.status, row.attempts, row.worker) == ("queued", 0, None)
            assert job["id"] in broker.queued_message_ids(f"{queue}.m12", settings=settings)
            [warning] = api.get(f"/jobs/{job['id']}").json()["warnings"]
            assert "resources.memory_gb=10 GiB" in warning and "5.0 GiB" in warning, warning

            big = start_worker(tmp_path, "big", env=_worker_env(1, memory_gb=16))
            wait_for(
                lambda: job_row(job["id"]).status in ("succeeded", "failed"),
                "the job on the 16 GiB worker",
                timeout=240,
                procs=(small, big),
            )
            row = job_row(job["id"])
            assert (row.status, row.attempts) == ("succeeded", 1), (row.error_message, big.log_tail())
            assert f"job {job['id']} claimed by" in big.log_tail(10**6)
            assert f"job {job['id']} claimed by" not in small.log_tail(10**6)
            assert api.get(f"/jobs/{job['id']}").json()["warnings"] == []
    finally:
        small.stop()
        if big is not None:
            big.stop()
