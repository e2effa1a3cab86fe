"""What a training run carries from step to step, and what it returns (docs/design.md, "The training loop").

``TrainingState`` holds the loop's counters: the step, the best evaluation so far, the divergence checks
and the partial train-loss average. The Trainer writes it into trainer_state.pt beside the optimizer's
state and the RNG states, with the keys ``trainer_state_dict`` lists; a resume reads them back through
``TrainingState.from_state_dict``. The keys are those the loop wrote before the Trainer existed (a
checkpoint saved by an older jobformer resumes), and every value is a tensor or a plain container, so
``torch.load(weights_only=True)`` reads the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

Status = Literal["completed", "early_stopped", "stopped", "time_limit"]


@dataclass
class TrainingState:
    """The loop's counters. ``loss_sum`` is a tensor between train-loss reads (no device sync per step)
    and a float in a checkpoint."""

    step: int = 0
    epoch: int = 0
    best: dict | None = None  # {"step", "metric", "value", "checkpoint"} of the best evaluation
    evals_since_best: int = 0
    first_loss: float | None = None  # the loss before any update: the reference for divergence
    high_loss_checks: int = 0  # train-loss reads in a row above DIVERGE_FACTOR * first_loss
    loss_sum: float | torch.Tensor = 0.0  # the train losses since the last read ...
    loss_count: int = 0  # ... and how many
    last_val: dict[str, float] = field(default_factory=dict)  # the latest evaluation's metrics
    train_loss: float | None = None  # the latest train-loss read

    def state_dict(self) -> dict[str, Any]:
        """The counters as plain values, under their trainer_state.pt keys."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "best": self.best,
            "evals_since_best": self.evals_since_best,
            "first_loss": self.first_loss,
            "high_loss_checks": self.high_loss_checks,
            "loss_sum": float(self.loss_sum),
            "loss_count": self.loss_count,
            "last_val": dict(self.last_val),
            "train_loss": self.train_loss,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrainingState:
        """The counters of a trainer_state.pt dict (other keys, such as the optimizer's, are ignored)."""
        return cls(
            step=state["step"],
            epoch=state["epoch"],
            best=state["best"],
            evals_since_best=state["evals_since_best"],
            first_loss=state["first_loss"],
            high_loss_checks=state["high_loss_checks"],
            loss_sum=state["loss_sum"],
            loss_count=state["loss_count"],
            last_val=dict(state["last_val"]),
            train_loss=state["train_loss"],
        )

    def metrics(self) -> dict[str, float]:
        """The latest train loss and validation metrics: what a checkpoint and the result report."""
        return {**({"train_loss": self.train_loss} if self.train_loss is not None else {}), **self.last_val}


def trainer_state_dict(
    state: TrainingState, *, optimizer: dict, scheduler: dict, data_rng: torch.Tensor, rng: dict
) -> dict[str, Any]:
    """The whole of trainer_state.pt: the optimizer, the schedule (recorded for a reader; it is a pure
    function of the step), the counters, the data generator's state and the global RNG states."""
    return {
        "optimizer": optimizer,
        "scheduler": scheduler,
        **state.state_dict(),
        "data_rng": data_rng,
        "rng": rng,
    }


@dataclass
class TrainResult:
    """What ``train`` returns. ``checkpoint`` is the best checkpoint's absolute path (the latest if no
    evaluation ran); ``best`` is ``{"step", "metric", "value", "checkpoint"}`` (checkpoint = name)."""

    status: Status
    steps: int
    epoch: int
    metrics: dict[str, float]
    best: dict | None
    tokens_per_second: float
    data: dict
    checkpoint: str | None

    def as_dict(self) -> dict:
        return asdict(self)
