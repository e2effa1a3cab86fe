"""A claimed job on many processes (docs/design.md, "A job on many processes in the service").

The pool child that claimed the job launches torchrun (``core.ml.distributed.launch_command``: one node,
c10d rendezvous on 127.0.0.1 at a free port, no restarts) with the rank entry ``worker.rank_main`` and
waits. What a rank needs of the claim (job id, lease epoch, worker name, config, resume point) goes in a
small JSON file named by ``SPEC_ENV``. Rank 0 heartbeats, records and writes the end under the claimed
epoch (every write fenced, "One owner per job"); the pool child writes nothing after the claim:

- a SIGTERM to the worker reaches the pool child (``worker.lifecycle``), which creates the stop file that
  rank 0's recorder polls: every rank stops at the same step, rank 0 saves a checkpoint and hands the job
  back;
- a rank that dies makes torchrun end the others and exit non-zero: rank 0 writes no end state, the job's
  heartbeat stops and the reaper requeues it after the heartbeat timeout; the next attempt resumes;
- torchrun dies with the pool child (PR_SET_PDEATHSIG), and whatever of its process tree outlives it is
  killed when the pool child returns: no orphans.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from core.settings import Settings
from worker.lifecycle import shutdown_requested
from worker.recorder import Heartbeat

log = logging.getLogger(__name__)

SPEC_ENV = "JOBFORMER_RANK_SPEC"  # the JSON file a rank reads its job from
_PR_SET_PDEATHSIG = 1


def run_on_processes(
    job_id: str, name: str, claimed: dict[str, Any], processes: int, settings: Settings
) -> str:
    """Run the claimed job on ``processes`` ranks and wait; returns rank 0's outcome (as ``run_job``), or
    "attempt_failed" when a rank died (nothing written: the reaper requeues the job)."""
    from core.ml.distributed import launch_command, launch_env

    work = Path(tempfile.mkdtemp(prefix=f"jobformer-{job_id}-e{claimed['epoch']}-"))
    stop_file, result_file = work / "stop", work / "result.json"
    spec = {
        "job_id": job_id,
        "worker": name,
        "stop_file": str(stop_file),
        "result_file": str(result_file),
        "claimed": {**claimed, "started_at": claimed["started_at"].isoformat()},
    }
    (work / "spec.json").write_text(json.dumps(spec))
    env = {
        **launch_env(processes, str(claimed["config"].get("device", "auto"))),
        SPEC_ENV: str(work / "spec.json"),
    }
    command = launch_command(processes, "worker.rank_main", [])
    log.info("job %s: launching %d processes", job_id, processes, extra={"job_id": job_id})
    tree: dict[int, str] = {}
    # The pool child keeps the lease until torchrun exits (its ranks take seconds to start), and hands its
    # last renewal to rank 0's heartbeat, which self-fences from there ("One owner per job").
    heartbeat = Heartbeat(
        job_id,
        name,
        settings.heartbeat_seconds,
        epoch=claimed["epoch"],
        lease_seconds=settings.lease_bound_seconds,
        renewed_at=claimed["renewed_at"],
    )
    heartbeat.start()
    launcher = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        rc = _wait(launcher, stop_file, tree, heartbeat, work / "renewed.json")
        outcome = json.loads(result_file.read_text())["outcome"] if result_file.exists() else None
    finally:
        heartbeat.stop()
        _kill_tree(launcher, tree)
        shutil.rmtree(work, ignore_errors=True)
    if outcome is None:
        log.error(
            "job %s: a process of the job failed (torchrun exit status %s); no end recorded, the job is "
            "requeued once its heartbeat times out",
            job_id,
            rc,
            extra={"job_id": job_id},
        )
        return "attempt_failed"
    return str(outcome)


def _wait(
    launcher: subprocess.Popen, stop_file: Path, tree: dict[int, str], heartbeat: Heartbeat, renewed: Path
) -> int:
    """Wait for torchrun, noting its process tree and the lease's last renewal (``RENEWED``, for rank
    0); a shutdown request becomes the ranks' stop file."""
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return launcher.wait(timeout=0.5)
        tree.update(_tree(launcher.pid))
        if heartbeat.lease_held():
            renewed.with_suffix(".tmp").write_text(json.dumps(heartbeat._renewed))
            renewed.with_suffix(".tmp").replace(renewed)
        if shutdown_requested() and not stop_file.exists():
            log.info("stop requested: asking the job's processes to checkpoint and hand the job back")
            stop_file.touch()


def _die_with_parent() -> None:  # in the launcher, before exec
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _tree(root: int) -> dict[int, str]:
    """``root``'s live descendants (Linux /proc), each with its start time (a reused pid is not killed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            start = _start_time(child)
            if child not in found and start is not None:
                found[child] = start
                stack.append(child)
    return found


def _kill_tree(launcher: subprocess.Popen, tree: dict[int, str]) -> None:
    """SIGKILL torchrun and every process of its tree still alive (ranks run in sessions of their own)."""
    if launcher.poll() is None:
        tree.update(_tree(launcher.pid))
        with contextlib.suppress(ProcessLookupError):
            launcher.kill()
        launcher.wait()
    for pid, start in tree.items():
        if _start_time(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
