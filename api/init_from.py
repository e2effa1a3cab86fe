"""``config.init_from`` in POST /jobs (docs/design.md, "Subword tokens and init_from"): the id of a finished
job of the same owner, turned into its best checkpoint's directory before the job is recorded, so the
worker reads a path (core/ml/init_from.py). Everything that would fail there is a 422 at the field here,
before anything is queued: not a job id (the API takes no paths), another owner's or an unknown job, a job
that has not succeeded, and a checkpoint whose task, model shapes or tokenizer do not fit the config (each
field named)."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.archives import checkpoint_dir
from api.deps import ID_PATTERN
from core.db.models import Checkpoint, Job, JobStatus
from core.ml import checkpoint as ckpt
from core.ml.config import TrainConfig
from core.ml.errors import CheckpointError, ConfigError, Problem
from core.ml.init_from import fit_problems
from core.settings import Settings

LOC: list[str | int] = ["config", "init_from"]


def _refuse(msg: str) -> ConfigError:
    return ConfigError(f"init_from: {msg}", problems=[Problem(LOC, msg)])


def resolve_init_from(
    session: Session, settings: Settings, config: TrainConfig, owner: str | None
) -> TrainConfig:
    """``config`` with ``init_from`` (a job id) replaced by that job's best checkpoint directory; the
    config itself when it has none. Raises ConfigError (422) naming init_from or the fields that differ."""
    ref = config.init_from
    if ref is None:
        return config
    if not re.fullmatch(ID_PATTERN, ref):
        raise _refuse("give the id of a finished job of yours (a checkpoint directory is for the CLI)")
    job = session.get(Job, ref)
    if job is None or (owner is not None and job.owner != owner):
        raise _refuse(f"no job {ref} of yours: give the id of a job of yours that succeeded")
    if job.status != JobStatus.SUCCEEDED:
        raise _refuse(f"job {ref} is {job.status}, not succeeded: wait for it to finish, or pick another job")
    c = session.scalar(
        select(Checkpoint)
        .where(Checkpoint.job_id == job.id)
        .order_by(Checkpoint.is_best.desc(), Checkpoint.step.desc())
        .limit(1)
    )
    if c is None:
        raise _refuse(f"job {ref} has no checkpoint left to start from; pick another job")
    directory = checkpoint_dir(settings.data_dir, c)
    try:
        saved = ckpt.load_checkpoint(directory)
    except (CheckpointError, OSError, ValueError) as e:
        raise _refuse(f"job {ref}'s checkpoint {c.name} cannot be read ({e}); pick another job") from None
    problems = fit_problems(config, saved.config)
    if problems:
        details = "; ".join(f"{'.'.join(map(str, p.loc[1:]))}: {p.msg}" for p in problems)
        raise ConfigError(f"init_from job {ref} does not fit this config: {details}", problems=problems)
    return config.model_copy(update={"init_from": str(directory)})
