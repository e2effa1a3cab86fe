"""The store: every write the service makes to the database, as functions that take a ``Session`` first
and only flush (the caller commits). Used as ``from core.db import store; store.claim_job(...)``.

- ``transitions``: every job state transition (create, cancel, claim, heartbeat, finish, release,
  requeue) and the lease fencing that keeps one owner per job; its docstring tells both.
- ``records``: what a running job records (progress, metric points, events, checkpoints), fenced.
- ``datasets``: uploaded datasets, recorded, locked and deleted.
- ``locks``: the transaction-scoped lock behind checks that must not race.
- ``sweeps``: hyperparameter searches, advanced one step at a time (trials created, pruned, the end).
- ``runs``: evaluations and batch predictions of finished jobs, claimed once, cancelled, ended.
"""

from core.db.store.datasets import (
    DatasetInUse,
    create_dataset,
    delete_dataset,
    live_datasets_with_content,
    lock_content,
    lock_dataset,
)
from core.db.store.records import (
    add_checkpoint,
    add_event,
    add_metrics,
    checkpoint_names,
    forget_checkpoints,
    update_progress,
)
from core.db.store.runs import cancel_run, claim_run, create_run, finish_run, record_progress
from core.db.store.sweeps import (
    Advance,
    advance_sweep,
    cancel_sweep,
    create_sweep,
    prune_trials,
    running_sweep_ids,
    sweep_trials,
)
from core.db.store.transitions import (
    LATEST_ROW,
    ActiveJobLimit,
    LeaseLost,
    claim_job,
    create_job,
    finish_job,
    get_job,
    heartbeat,
    latest_checkpoint_step,
    prune_metrics,
    queued_jobs_older_than,
    release_job,
    request_cancel,
    requeue_stale_jobs,
)

__all__ = [
    "LATEST_ROW",
    "ActiveJobLimit",
    "Advance",
    "DatasetInUse",
    "LeaseLost",
    "add_checkpoint",
    "add_event",
    "add_metrics",
    "cancel_run",
    "claim_run",
    "create_run",
    "finish_run",
    "record_progress",
    "advance_sweep",
    "cancel_sweep",
    "checkpoint_names",
    "claim_job",
    "create_dataset",
    "create_job",
    "create_sweep",
    "delete_dataset",
    "finish_job",
    "forget_checkpoints",
    "get_job",
    "heartbeat",
    "latest_checkpoint_step",
    "live_datasets_with_content",
    "lock_content",
    "lock_dataset",
    "prune_metrics",
    "prune_trials",
    "queued_jobs_older_than",
    "release_job",
    "request_cancel",
    "requeue_stale_jobs",
    "running_sweep_ids",
    "sweep_trials",
    "update_progress",
]
