"""A job on many processes in the service (docs/design.md, "A job on many processes in the service"):
``resources.processes`` 2 runs the claimed job through torchrun on a real worker."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import broker as queue
from tests.integration.procs import (
    alive,
    create_job,
    descendants,
    empty_database,
    job_checkpoints,
    job_events,
    job_row,
    job_step,
    service_environment,
    start_worker,
    tiny_config,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[dict[str, str]]:
    empty_database(pg_url)
    with service_environment(tmp_path, pg_url, monkeypatch) as values:
        # The workers here run 2-process jobs whatever the machine's cores (a 1-core runner included).
        monkeypatch.setenv("JOBFORMER_WORKER_PROCESSES", "2")
        yield values


def _config(processes: int, **training: object) -> dict:
    return {**tiny_config(**training), "resources": {"processes": processes}}


def _losses(job_id: str) -> dict[tuple[str, str, int], float]:
    from sqlalchemy import select

    from core.db.models import MetricPoint
    from core.db.session import session_scope

    with session_scope() as s:
        points = s.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id))
        return {(p.split, p.name, p.step): p.value for p in points if not p.name.endswith("per_second")}


def _job_processes(root: int) -> dict[int, str]:
    """torchrun and the ranks under ``root``: pid -> "launcher" or the rank number."""
    found = {}
    for pid in descendants(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"torch.distributed.run" in cmd:
            found[pid] = "launcher"
        elif b"worker.rank_main" in cmd:
            rank = next((e[5:].decode() for e in environ if e.startswith(b"RANK=")), "?")
            found[pid] = rank
    return found


def test_two_process_job_matches_one_process_curve(env: dict[str, str], tmp_path: Path) -> None:
    """The same job on 1 and on 2 processes: both succeed, with the same curve within the CLI test's
    tolerance (tests/core/ml/test_distributed.py: 1e-4 relative; dropout 0), and the model learned.

    Would catch: a rank's share counted twice or not at all, rank 1 writing, a job on 2 processes never
    recording its end."""
    data_dir = Path(env["JOBFORMER_DATA_DIR"])
    one = create_job(data_dir, _config(1, max_steps=60, eval_every=30))
    two = create_job(data_dir, _config(2, max_steps=60, eval_every=30))
    worker = start_worker(tmp_path)
    try:
        queue.enqueue_job(one)
        queue.enqueue_job(two)
        wait_for(
            lambda: {job_row(one).status, job_row(two).status} <= {"succeeded", "failed"},
            "both jobs to end",
            timeout=150,
            procs=(worker,),
        )
        for job_id in (one, two):
            job = job_row(job_id)
            assert (job.status, job.attempts) == ("succeeded", 1), (job.error_message, worker.log_tail())
        a, b = _losses(one), _losses(two)
        assert a.keys() == b.keys() and ("train", "loss", 60) in a
        for key, value in a.items():
            assert b[key] == pytest.approx(value, rel=1e-4), key
        assert a[("val", "accuracy", 60)] > 0.6  # two balanced classes: it beats the majority (0.5)
        assert "launching 2 processes" in worker.log_tail(200_000)
    finally:
        worker.stop()


def test_a_killed_rank_requeues_and_resumes_without_orphans(env: dict[str, str], tmp_path: Path) -> None:
    """SIGKILL rank 1 mid-job: torchrun ends the others, nothing records an end, the reaper requeues the
    job after the heartbeat timeout (6 s here), the second attempt resumes from the checkpoint and
    succeeds; no process of either attempt is left.

    Would catch: a dead rank recorded as the job's failure, a hung rank 0 (waiting on a dead peer) holding
    the job, or ranks left running after the attempt."""
    job_id = create_job(Path(env["JOBFORMER_DATA_DIR"]), _config(2, max_steps=400, eval_every=40))
    worker = start_worker(tmp_path)
    seen: dict[int, str] = {}
    try:
        queue.enqueue_job(job_id)
        wait_for(lambda: job_step(job_id) >= 90, "the job to pass a checkpoint", timeout=90, procs=(worker,))
        seen.update(_job_processes(worker.pid))
        rank1 = [pid for pid, what in seen.items() if what == "1"]
        assert len(rank1) == 1 and "launcher" in seen.values(), seen

        os.kill(rank1[0], signal.SIGKILL)
        wait_for(lambda: job_row(job_id).attempts >= 2, "the job to be requeued and claimed", timeout=60)
        seen.update(_job_processes(worker.pid))
        wait_for(lambda: job_row(job_id).status in {"succeeded", "failed"}, "the job to end", timeout=120)
        job = job_row(job_id)
        assert (job.status, job.attempts) == ("succeeded", 2), (job.error_message, worker.log_tail())
        kinds = [k for k, _, _ in job_events(job_id)]
        assert "resumed" in kinds and kinds.count("succeeded") == 1, kinds
        # Rank 0 records the end and then leaves: the second attempt's processes go a moment later.
        wait_for(lambda: not _job_processes(worker.pid), "the second attempt's processes to end", timeout=30)
        # The first attempt's too, orphans included. A launcher on its way out no longer shows its command
        # line (so the wait above passes) while its /proc entry stays a moment: wait for it, not forever.
        wait_for(lambda: not [pid for pid in seen if alive(pid)], f"no process left of {seen}", timeout=30)
    finally:
        worker.stop()
        for pid in seen:  # never leave a rank behind, even when an assertion failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_hands_a_two_process_job_back_with_a_checkpoint(env: dict[str, str], tmp_path: Path) -> None:
    """SIGTERM to the worker (its main process only, as ``docker stop``): every rank stops at the same
    step, rank 0 saves a checkpoint and hands the job back (``queued``, its attempt given back), the worker
    exits 0 leaving no process; a new worker resumes it from that step to ``succeeded``.

    Would catch: the signal never reaching the ranks (the worker waits for the whole job, or they are
    killed without a checkpoint), a hand-off counted as a lost attempt, ranks outliving their worker."""
    job_id = create_job(Path(env["JOBFORMER_DATA_DIR"]), _config(2, max_steps=400, eval_every=1000))
    first = start_worker(tmp_path, "a")
    seen: dict[int, str] = {}
    try:
        queue.enqueue_job(job_id)
        wait_for(lambda: job_step(job_id) >= 30, "the job to train a few steps", timeout=90, procs=(first,))
        seen.update(_job_processes(first.pid))
        assert sorted(seen.values()) == ["0", "1", "launcher"], seen
        first.signal(signal.SIGTERM)
        assert first.wait(60) == 0, first.log_tail()
        job = job_row(job_id)
        assert (job.status, job.attempts) == ("queued", 0), first.log_tail()  # a hand-off is no lost attempt
        (_name, handed_at, _best, _rel), *_ = job_checkpoints(job_id)[-1:]
        assert 30 <= handed_at < 400
        assert not [pid for pid in seen if alive(pid)], seen
        second = start_worker(tmp_path, "b")
        try:
            wait_for(lambda: job_row(job_id).status in {"succeeded", "failed"}, "the job to end", timeout=90)
            job = job_row(job_id)
            assert (job.status, job.attempts) == ("succeeded", 1), (job.error_message, second.log_tail())
            resumed = [d["step"] for k, _, d in job_events(job_id) if k == "resumed"]
            assert resumed and resumed[0] == handed_at, resumed
        finally:
            second.stop()
    finally:
        first.stop()
        for pid in seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
