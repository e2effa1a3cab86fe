"""One rank of a job on many processes, run by torchrun (``worker.distributed``; docs/design.md, "A job on
many processes in the service"). Rank 0 heartbeats under the claimed lease epoch, records progress,
metrics and checkpoints and writes the end (``worker.tasks``); the other ranks train without writing.

A rank that fails in a way the job did not cause (an internal error: a peer died and a collective broke)
exits non-zero without an end state: the attempt fails, the reaper requeues the job and it resumes.
"""

from __future__ import annotations

import json
import logging
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def main() -> int:
    # torchrun ends the ranks with SIGTERM when one dies: go at once (the stop file is the clean stop).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import os

    import torch

    from core import logs
    from core.ml.distributed import Dist
    from core.ml.threads import set_cpu_thread_defaults
    from worker.distributed import SPEC_ENV

    spec = json.loads(Path(os.environ[SPEC_ENV]).read_text())
    claimed: dict[str, Any] = spec["claimed"]
    claimed["started_at"] = datetime.fromisoformat(claimed["started_at"])
    claimed["renewed_at"] = tuple(claimed["renewed_at"])
    set_cpu_thread_defaults()
    dist = Dist.from_env()
    from worker import tasks

    logs.configure(tasks.settings.log_format)
    logs.job_context(spec["job_id"], claimed["attempt"])
    try:
        outcome = _rank0(spec, claimed, dist) if dist.is_main else _other(spec, claimed, dist)
        if outcome is not None and dist.is_main:
            Path(spec["result_file"]).write_text(json.dumps({"outcome": outcome}))
        if not torch.distributed.is_initialized():  # ended before training: meet the others once, so no
            dist.init(torch.device("cpu"))  # rank waits for a peer that is gone
    finally:
        dist.teardown()
    return 0 if outcome is not None else 1


def _rank0(spec: dict[str, Any], claimed: dict[str, Any], dist: Any) -> str | None:
    from worker import tasks

    job_id, name, settings = spec["job_id"], spec["worker"], tasks.settings
    stop_file = Path(spec["stop_file"])
    renewed = Path(spec["stop_file"]).with_name("renewed.json")  # the pool child's last renewal
    if renewed.exists():
        claimed["renewed_at"] = tuple(json.loads(renewed.read_text()))
    heartbeat, recorder = tasks.start_recording(job_id, name, claimed, settings, stop_file.exists)
    try:
        end = tasks._train(job_id, claimed, recorder, settings, dist=dist)
        if end.get("error_code") == "internal_error":
            log.error("job %s: this attempt failed; no end recorded (the job is requeued)", job_id)
            return None
        if recorder.may_write():
            recorder.flush(attempts=12)
        return tasks._record_end(job_id, name, end, recorder, settings)
    finally:
        heartbeat.stop()


def _other(spec: dict[str, Any], claimed: dict[str, Any], dist: Any) -> str | None:
    """A rank other than 0: the same Trainer with no callbacks (it writes nothing)."""
    from core.ml.config import TrainConfig
    from core.ml.errors import JobformerError
    from core.ml.trainer import Trainer
    from worker import tasks

    settings = tasks.settings
    try:
        config = TrainConfig.model_validate(claimed["config"])
        if claimed["data_path"] is None:
            return "skipped"  # rank 0 records the failure
        trainer = Trainer(
            config,
            settings.data_dir / claimed["data_path"],
            settings.jobs_dir / spec["job_id"],
            None,
            lease_epoch=claimed["epoch"],
            resume_from=claimed["resume_dir"],
            dist=dist,
        )
        dist.init(trainer.device)
        trainer.run()
    except (JobformerError, ValueError) as exc:  # the same data and config fail rank 0 the same way
        log.info("rank %d: %s (rank 0 records it)", dist.rank, exc)  # (pydantic's errors are ValueErrors)
        return "skipped"
    return "trained"


if __name__ == "__main__":
    from core.ml.distributed import exit_rank

    exit_rank(main())
