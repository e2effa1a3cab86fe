"""Faults (issue 4, "Faults: nothing lost, nothing run twice"), each with the real processes.

Real `jobformer worker` (and `jobformer serve`) subprocesses, real Redis, real PostgreSQL; no eager mode,
no mocked broker. The test starts, kills and restarts Redis (a `redis-server` of its own), cuts PostgreSQL
off through a TCP proxy it controls, fills the worker's disk (a tmpfs) and races two workers.
Each test says in its docstring which bug it would catch.

SIGKILL of a worker mid-job (resumed from its checkpoint by another worker) and the plain SIGTERM
hand-off are in ``test_worker.py``; the SIGTERM case here adds a second worker already waiting.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch

import broker as queue
from api.jobviews import STALE_SECONDS
from core.ml.predict import Predictor
from core.settings import get_settings
from tests.integration.procs import (
    Proc,
    RedisServer,
    TcpProxy,
    create_job,
    descendants,
    free_port,
    job_checkpoints,
    job_curves,
    job_events,
    job_row,
    job_step,
    poll_until,
    start_api,
    start_worker,
    tiny_config,
    wait_for,
)

pytestmark = pytest.mark.integration

ENDED = {"succeeded", "failed", "cancelled"}


def _status(job_id: str) -> str:
    return job_row(job_id).status


def _kinds(job_id: str) -> list[str]:
    return [kind for kind, _, _ in job_events(job_id)]


LOSS_NOTICE_SECONDS = 5


def _lost_connections(worker: Proc) -> int:
    """How many times the worker's consumer saw its broker connection break."""
    return worker.log_tail(2_000_000).count("Connection to broker lost")


def _wait_for_worker(condition: Callable[[], object], what: str, worker: Proc) -> None:
    """``wait_for``, and if it times out, the worker's thread stacks in its log first (Celery's SIGUSR1 handler
    prints them): a worker that stopped consuming shows where it is stuck."""
    if not poll_until(condition, 180):
        worker.signal(signal.SIGUSR1)
        time.sleep(2)
        wait_for(condition, what, timeout=1, procs=(worker,))


def _online(n: int) -> bool:
    queue._workers_cache.clear()
    return queue.workers_online() == n


# ------------------------------------------------------------------------------------------ 1. diverging


def test_diverging_job_fails_with_code_diverged(env: dict[str, str], tmp_path: Path) -> None:
    """An absurd learning rate: the job ends ``failed``/``diverged`` naming the step and the field to change.

    Would catch: a loss that explodes going unnoticed (the job "succeeds" with a useless model), a
    divergence surfacing as ``internal_error``, or a message that does not say where and what to change.
    The API refuses 1e4 up front (``training.learning_rate`` <= 10, checked here too); 10, the largest it
    accepts, still explodes this tiny Transformer within 30 steps, so that is what goes to the worker."""
    from pydantic import ValidationError

    from core.ml.config import TrainConfig, problems_from_validation_error

    with pytest.raises(ValidationError) as refused:
        TrainConfig.model_validate(tiny_config(learning_rate=1e4))
    assert [p.loc for p in problems_from_validation_error(refused.value)] == [["training", "learning_rate"]]

    # The Transformer alone: the n-gram bag (a linear model over hashed n-grams) separates this easy data
    # even at learning rate 10 instead of exploding, and the detector is what is under test here.
    config = tiny_config(learning_rate=10.0, warmup_steps=0, max_steps=300, eval_every=1000)
    job_id = create_job(
        Path(env["JOBFORMER_DATA_DIR"]), {**config, "model": {**config["model"], "ngrams": 0}}
    )
    worker = start_worker(tmp_path)
    try:
        queue.enqueue_job(job_id)
        wait_for(lambda: _status(job_id) in ENDED, "the job to end", procs=(worker,))
        job = job_row(job_id)
        assert (job.status, job.error_code, job.attempts) == ("failed", "diverged", 1), worker.log_tail()
        # The loss is checked every 10 steps and must be over 10x its first value 3 checks in a row.
        assert re.fullmatch(
            r"training diverged at step 30: the loss is [0-9.e+]+, over 10x its first value 0\.\d+; "
            r"lower training\.learning_rate \(now 10\), e\.g\. to 1",
            job.error_message,
        ), job.error_message
        assert job_curves(job_id) == {"train_loss": [10, 20]}  # recorded up to the step that failed
        assert job_checkpoints(job_id) == []
        events = job_events(job_id)
        assert [k for k, _, _ in events][-2:] == ["error", "failed"]
        assert events[-2][1] == job.error_message and events[-2][2] == {"code": "diverged"}
    finally:
        worker.stop()


# ---------------------------------------------------------------------------------------- 2. Redis restart


def test_redis_restarted_mid_job_job_finishes_once(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis crashes (SIGKILL) and comes back on the same port while a job trains: the job finishes
    ``succeeded``, run once: one claim, one ``started``, no ``resumed``, ``attempts`` 1, one loss curve.

    Redis runs as compose runs it, with its append-only file (``appendfsync always`` here, so the crash
    loses nothing): the running job's unacked message survives the restart, which is exactly when a broker
    hands a long task out a second time (docs/design.md, "Workers and the broker"). Without persistence the message would simply be gone
    (a lost message is covered by ``test_lost_message_is_resent_and_workers_online``).

    Would catch: a worker that dies or stops consuming when the broker goes away (then the second job
    below never runs), training cancelled on connection loss (``worker_cancel_long_running_tasks_on_
    connection_loss``), or a redelivered message running the job a second time (two claims/starts,
    ``attempts`` 2, points written twice)."""
    server = RedisServer(tmp_path / "redis", persistent=True)
    server.start()
    monkeypatch.setenv("JOBFORMER_BROKER_URL", server.url)
    get_settings.cache_clear()
    data_dir = Path(env["JOBFORMER_DATA_DIR"])
    job_id = create_job(data_dir, tiny_config(max_steps=1500, eval_every=750))
    worker = None
    try:
        worker = start_worker(tmp_path)
        queue.enqueue_job(job_id)
        wait_for(lambda: job_step(job_id) >= 20, "the job to train a few steps", procs=(worker,))
        server.kill(signal.SIGKILL)
        down_at = job_step(job_id)
        # Redis stays down until the worker has seen it go (at once, as a rule: its broadcast connection reads
        # the close) and a moment more, while the worker retries its connection. A worker that has not seen it
        # within LOSS_NOTICE_SECONDS meets the restart unaware: it must notice the dead connection then and
        # reconnect all the same (checked below, with the worker's stacks in the log if it hangs instead).
        noticed = poll_until(lambda: _lost_connections(worker) > 0, LOSS_NOTICE_SECONDS)
        time.sleep(1)
        assert _status(job_id) == "running"  # the restart happens mid-job
        server.start()
        _wait_for_worker(lambda: _status(job_id) in ENDED, "the job to end", worker)
        job = job_row(job_id)
        assert (job.status, job.attempts, job.error_code) == ("succeeded", 1, None), worker.log_tail()
        assert down_at < 1500 and job.result["steps"] == 1500

        # The worker still consumes after the restart: a second job runs on it.
        second = create_job(data_dir, tiny_config(max_steps=10, eval_every=10))
        queue.enqueue_job(second)
        _wait_for_worker(lambda: _status(second) == "succeeded", "a job sent after the restart", worker)
        assert _lost_connections(worker) >= 1, f"noticed while Redis was down: {noticed}"
        assert re.findall(r"job (\w+) claimed by", worker.log_tail(500_000)) == [job_id, second]
        kinds = _kinds(job_id)
        assert (kinds.count("started"), kinds.count("resumed"), kinds.count("requeued")) == (1, 0, 0)
        assert kinds[-1] == "succeeded"
        assert job_curves(job_id)["train_loss"] == list(range(10, 1501, 10))  # each step once
    finally:
        if worker is not None:
            worker.stop()
        server.kill()


# ----------------------------------------------------------------------------------- 3. PostgreSQL outage


def test_postgres_outage_mid_job_api_503_and_metrics_complete(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL goes away for 7 s while a job trains. The API and two workers (one runs the job, one
    waits) each reach it through a TCP proxy of their own that the test cuts: every connection closed, new
    ones refused. During the outage ``GET /jobs/{id}`` answers 503 with ``Retry-After``. The database then
    comes back for the API and the idle worker about 2.5 s before it does for the running one (reconnections
    are never simultaneous); the job ends ``succeeded``, run once, with every metric point.

    The outage is shorter than the running worker's lease (12 s here; the heartbeat timeout 20 s): an
    outage the lease covers is not a lost worker. A longer one makes the worker stop by itself and the job
    move to another (``test_ownership.py``).

    Would catch: a 500, a reset connection or a hang instead of a retryable 503; a worker that drops the
    metric points (or the end state) it could not write, or dies on the first failed write; a worker that
    gives its job up on a short outage (it would be requeued and resumed: attempts 2, ``resumed``)."""
    monkeypatch.setenv("JOBFORMER_HEARTBEAT_TIMEOUT_SECONDS", "20")
    monkeypatch.setenv("JOBFORMER_LEASE_SECONDS", "12")
    get_settings.cache_clear()
    direct = env["JOBFORMER_DATABASE_URL"]
    assert "@127.0.0.1:5432/" in direct
    proxies = [TcpProxy(("127.0.0.1", 5432)).start() for _ in range(3)]  # the API, worker a, worker b

    def through(proxy: TcpProxy) -> dict[str, str]:
        url = direct.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
        return {**os.environ, "JOBFORMER_DATABASE_URL": url}

    job_id = create_job(Path(env["JOBFORMER_DATA_DIR"]), tiny_config(max_steps=200, eval_every=100))
    port = free_port()
    api = start_api(tmp_path, port, env=through(proxies[0]))
    workers = [
        start_worker(tmp_path, name, env=through(p)) for name, p in zip("ab", proxies[1:], strict=True)
    ]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_for(lambda: _get_status(client, "/healthz") == 200, "the API", timeout=60, procs=(api,))
        wait_for(lambda: _online(2), "both workers", procs=tuple(workers))
        queue.enqueue_job(job_id)
        wait_for(lambda: job_step(job_id) >= 20, "the job to train a few steps", procs=tuple(workers))
        assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
        pid = int(job_row(job_id).worker.rsplit(":", 1)[1])
        runner = next(i for i, w in enumerate(workers) if pid in descendants(w.pid))
        worker = workers[runner]

        for proxy in proxies:
            proxy.cut()
        cut_at = time.monotonic()
        # The API answers GET /jobs/{id} from its view cache while an answer is younger than
        # STALE_SECONDS (2 s; docs/design.md, "Live updates"): ask once the last one it could have cached
        # is older than that.
        time.sleep(STALE_SECONDS + 0.5)
        answers = []
        while time.monotonic() - cut_at < 7:
            r = client.get(f"/jobs/{job_id}")
            answers.append((r.status_code, r.headers.get("retry-after"), r.json().get("code")))
            time.sleep(1)
        proxies[0].restore()
        proxies[2 - runner].restore()  # the idle worker: its reaper sees the job's 7 s old heartbeat
        # A few of its reaper passes (every 5 s; the first may come at once), and the running worker's
        # outage stays well inside its 12 s lease (counted from its last renewal, up to 1 s before the cut).
        time.sleep(max(0.0, cut_at + 9.5 - time.monotonic()))
        proxies[1 + runner].restore()

        assert len(answers) >= 4
        assert set(answers) == {(503, "5", "database_unavailable")}, answers
        wait_for(lambda: _status(job_id) in ENDED, "the job to end", procs=tuple(workers))
        r = client.get(f"/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "succeeded"
        job = job_row(job_id)
        assert (job.status, job.attempts, job.error_code) == ("succeeded", 1, None), (
            (job.status, job.attempts, job.error_code),
            worker.log_tail(),
        )
        assert job.result["steps"] == 200 and job.progress["step"] == 200
        # Writes failed during the outage and were retried (not silently skipped).
        assert re.search(r"writing .* failed \(attempt 1/\d+\)", worker.log_tail(500_000)), worker.log_tail()
        curves = job_curves(job_id)
        assert curves["train_loss"] == list(range(10, 201, 10))  # every point, once, in order
        assert curves["val_loss"] == [100, 200]
        kinds = _kinds(job_id)
        assert (kinds.count("started"), kinds.count("resumed"), kinds.count("requeued")) == (1, 0, 0), kinds
        assert kinds[-1] == "succeeded"
        assert "Traceback" not in api.log_tail(100_000)  # nothing unhandled in the API either
    finally:
        client.close()
        for w in workers:
            w.stop()
        api.stop()
        for proxy in proxies:
            proxy.stop()


def _get_status(client: httpx.Client, path: str) -> int | None:
    try:
        return client.get(path).status_code
    except httpx.HTTPError:
        return None


# ----------------------------------------------------------------------------------------- 4. disk full


@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); a real ENOSPC needs a "
            "small filesystem of its own (run as root, or with CAP_SYS_ADMIN)"
        )
    try:
        yield
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(directory: Path) -> int:
    """Write a file in ``directory`` until its filesystem says ENOSPC; returns the bytes written."""
    written = 0
    with open(directory / "filler", "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    written += f.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return written


def test_disk_full_while_writing_checkpoint(env: dict[str, str], tmp_path: Path) -> None:
    """The disk fills up while a job trains: the next checkpoint cannot be written, the job ends ``failed``
    with code ``checkpoint_write_failed`` and a message saying so, and the previous checkpoint is intact.

    A real ENOSPC: the worker's jobs directory is a 32 MB tmpfs mounted for this test (the test runs as
    root in CI and in this sandbox; it skips, saying why, where mounting is not allowed). Once the first
    checkpoint is on disk, the test fills the rest of that filesystem with a file; the next checkpoint
    write fails in the middle of its files.

    Would catch: a half-written checkpoint left behind (or replacing the previous one), a disk-full error
    becoming ``internal_error`` or a job stuck ``running``, a checkpoint row without its files."""
    data_dir = Path(env["JOBFORMER_DATA_DIR"])
    jobs_dir = data_dir / "jobs"
    with _small_tmpfs(jobs_dir, "32m"):
        job_id = create_job(data_dir, tiny_config(max_steps=100_000, eval_every=25))
        worker = start_worker(tmp_path)
        try:
            queue.enqueue_job(job_id)
            wait_for(lambda: job_checkpoints(job_id), "a first checkpoint", procs=(worker,))
            assert _fill(jobs_dir) > 0
            wait_for(lambda: _status(job_id) in ENDED, "the job to fail", procs=(worker,))
            job = job_row(job_id)
            assert (job.status, job.error_code) == ("failed", "checkpoint_write_failed"), worker.log_tail()
            assert re.fullmatch(
                r"could not write checkpoint step-(\d{8})-e1 in \S+/checkpoints: No space left on device; free "
                r"disk space \(or check permissions\) and resume: the previous checkpoints are intact",
                job.error_message,
            ), job.error_message
            failed_step = int(re.search(r"step-(\d{8})", job.error_message).group(1))

            # On disk: exactly the checkpoints with rows, complete; nothing of the failed one, no temp dir.
            rows = job_checkpoints(job_id)
            root = jobs_dir / job_id / "checkpoints"
            assert sorted(p.name for p in root.iterdir()) == sorted(name for name, *_ in rows)
            name, step, _best, rel = rows[-1]
            assert step == failed_step - 25
            latest = data_dir / rel
            state = torch.load(latest / "trainer_state.pt", weights_only=True)
            assert state["step"] == step
            predictor = Predictor.load(latest)
            out = predictor.classify(["good nice 1", "bad grim 2"])
            assert [o["label"] for o in out] == ["pos", "neg"]
        finally:
            worker.stop()


# ------------------------------------------------------------------------------------ 5. two workers race


def test_two_workers_racing_for_one_job_exactly_one_runs_it(env: dict[str, str], tmp_path: Path) -> None:
    """Two idle workers, the same job id sent twice (as a broker redelivery would): each worker receives a
    copy at the same moment, the atomic claim lets exactly one run it, the other refuses its copy.

    Would catch: a claim that is not one conditional UPDATE (read-then-write: both workers see ``queued``
    and both run the job: two ``started``/``resumed`` events, ``attempts`` 2, every point twice)."""
    job_id = create_job(Path(env["JOBFORMER_DATA_DIR"]), tiny_config(max_steps=60, eval_every=30))
    workers = (start_worker(tmp_path, "a"), start_worker(tmp_path, "b"))
    try:
        wait_for(lambda: _online(2), "both workers to be online", procs=workers)
        queue.enqueue_job(job_id)
        queue.enqueue_job(job_id)
        wait_for(lambda: _status(job_id) in ENDED, "the job to end", procs=workers)
        # Both copies were delivered, one to each worker (prefetch 1, late acks: a busy worker takes none).
        wait_for(
            lambda: all(
                f"job {job_id} not claimed" in w.log_tail(200_000)
                or f"job {job_id} claimed by" in w.log_tail(200_000)
                for w in workers
            ),
            "each worker to have handled one copy",
            procs=workers,
        )
        logs = [w.log_tail(200_000) for w in workers]
        claims = [log.count(f"job {job_id} claimed by") for log in logs]
        refusals = [log.count(f"job {job_id} not claimed") for log in logs]
        assert sorted(zip(claims, refusals, strict=True)) == [(0, 1), (1, 0)], (claims, refusals)
        job = job_row(job_id)
        assert (job.status, job.attempts, job.error_code) == ("succeeded", 1, None)
        assert job.worker.rsplit(":", 1)[1] in logs[claims.index(1)]
        kinds = _kinds(job_id)
        assert (kinds.count("started"), kinds.count("resumed")) == (1, 0)
        assert job_curves(job_id)["train_loss"] == list(range(10, 61, 10))
    finally:
        for w in workers:
            w.stop()


# ---------------------------------------------------------------------------------------------- 6. SIGTERM


def test_sigterm_hands_job_to_a_waiting_worker(env: dict[str, str], tmp_path: Path) -> None:
    """SIGTERM to the worker running a job (as ``docker stop`` sends it) while a second worker waits: the job
    saves a loadable checkpoint, goes back to ``queued``, and the waiting worker resumes it from that step
    to ``succeeded``: one curve, ``attempts`` 1 (a hand-off is not a lost attempt).

    Would catch: SIGTERM killing the job without a checkpoint (it restarts from 0 or an older one), the
    job left ``running`` until the reaper's timeout, a hand-off not re-sent to the broker (the waiting
    worker never gets it), or a hand-off counted as a failed attempt."""
    data_dir = Path(env["JOBFORMER_DATA_DIR"])
    job_id = create_job(data_dir, tiny_config(max_steps=1500, eval_every=10_000))
    workers = [start_worker(tmp_path, "a"), start_worker(tmp_path, "b")]
    try:
        wait_for(lambda: _online(2), "both workers", procs=tuple(workers))
        queue.enqueue_job(job_id)
        wait_for(lambda: job_step(job_id) >= 20, "the job to train a few steps", procs=tuple(workers))
        pid = int(job_row(job_id).worker.rsplit(":", 1)[1])
        first, second = workers if pid in descendants(workers[0].pid) else workers[::-1]
        first.signal(signal.SIGTERM)  # the main process only
        assert first.wait(120) == 0, first.log_tail()
        assert job_checkpoints(job_id), first.log_tail()
        wait_for(lambda: _status(job_id) in ENDED, "the second worker to finish it", procs=(second,))
        job = job_row(job_id)
        assert (job.status, job.attempts, job.error_code) == ("succeeded", 1, None)
        assert f"job {job_id} claimed by" in second.log_tail(200_000)
        events = job_events(job_id)
        kinds = [k for k, _, _ in events]
        assert (kinds.count("started"), kinds.count("requeued")) == (1, 1)
        # The hand-off checkpoint: the last one saved before the job went back to the queue (read from the
        # events: the second worker may have saved and pruned before the first one's process exited).
        handed_at = [d["step"] for k, _, d in events[: kinds.index("requeued")] if k == "checkpoint"][-1]
        assert 20 <= handed_at < 1500 and handed_at % 5 == 0
        assert [d["step"] for k, _, d in events if k == "resumed"] == [handed_at, handed_at]
        assert job_curves(job_id)["train_loss"] == list(range(10, 1501, 10))
        # The hand-off checkpoint itself (pruned by now unless it is the best) was loadable: the resume
        # above loaded it. The kept ones load too.
        for _name, _step, _b, kept in job_checkpoints(job_id):
            assert torch.load(data_dir / kept / "trainer_state.pt", weights_only=True)["step"] == _step
    finally:
        for w in workers:
            w.stop()
