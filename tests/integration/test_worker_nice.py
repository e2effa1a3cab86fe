"""`jobformer worker` runs below the API's priority: a real worker process and its pool child (where a job
trains) are `--nice` (default 10) nicer than the process that started them, so on a shared machine a
request never waits behind a training step (docs/design.md, "Live updates")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.procs import descendants, service_environment, start_worker, wait_for

pytestmark = [pytest.mark.integration]


def niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


@pytest.mark.parametrize(("args", "added"), [((), 10), (("--nice", "3"), 3)])
def test_the_worker_and_its_job_children_yield_the_cpu(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], added: int
) -> None:
    base = niceness(0)
    if base + added > 19:
        pytest.fail(f"the test runs at niceness {base}: too nice already to see {added} more")
    with service_environment(tmp_path, pg_url, monkeypatch):
        monkeypatch.delenv("JOBFORMER_WORKER_NICE", raising=False)
        worker = start_worker(tmp_path, env=dict(os.environ), args=args)
        try:
            # The prefork pool's child is the process that runs a job's training.
            children = wait_for(lambda: descendants(worker.pid), "the worker's pool child", procs=(worker,))
            assert niceness(worker.pid) == base + added
            assert {niceness(pid) for pid in children} == {base + added}
        finally:
            worker.stop()
