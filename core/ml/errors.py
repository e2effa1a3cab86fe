"""Errors raised by the training library. Every one carries a machine-readable ``code``.

    JobformerError            code: str, message a person can act on
    ├── ConfigError           "invalid_config": an option is impossible; ``problems`` lists every one
    ├── DataError             "invalid_data": the file cannot be read or does not fit the config
    ├── DivergedError         "diverged": the loss went NaN/inf or exploded; names the step
    └── CheckpointError       "checkpoint_write_failed": a checkpoint could not be written (disk full...);
                              "incompatible_checkpoint": saved for another model architecture

The API maps these to problem+json (4xx); the worker maps them to a failed job with the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Problem:
    """One thing wrong with a request: where (``loc``, a path such as ``["config", "text_column"]``) and why."""

    loc: list[str | int]
    msg: str
    type: str = "value_error"

    def as_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


def format_problems(problems: Sequence[Problem], limit: int | None = None) -> str:
    """Problems as one line: ``config.text_column: column 'x' not found; model.d_model: ...``. With
    ``limit``, the first ``limit`` of them and "(and N more)"."""
    shown = problems if limit is None else problems[:limit]
    line = "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in shown)
    return line + (
        f" (and {len(problems) - limit} more)" if limit is not None and len(problems) > limit else ""
    )


@dataclass
class JobformerError(Exception):
    message: str
    code: str = "error"
    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


@dataclass
class ConfigError(JobformerError):
    code: str = "invalid_config"


@dataclass
class DataError(JobformerError):
    code: str = "invalid_data"


@dataclass
class DivergedError(JobformerError):
    code: str = "diverged"
    step: int | None = None


@dataclass
class CheckpointError(JobformerError):
    code: str = "checkpoint_write_failed"


class OwnershipLost(Exception):  # noqa: N818 - a signal to stop, not a failure of the run
    """The run must stop at once and write nothing more: a service worker lost its job's lease, and another
    worker may own the job (and its output directory) now. Not a ``JobformerError``: the job does not fail,
    it simply is not this run's any more. ``jobformer train`` never raises it."""
