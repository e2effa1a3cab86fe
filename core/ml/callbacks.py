"""How the training loop reports. The service records these in its database; the CLI draws a progress bar.

The loop calls every method from its own thread, between steps. Implementations must be quick (throttle
expensive writes themselves) and must not raise: an exception from a callback stops the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Progress:
    step: int
    total_steps: int
    epoch: int
    total_epochs: int
    percent: float
    eta_seconds: float | None
    tokens_per_second: float | None
    train_loss: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MetricPoint:
    step: int
    epoch: int
    split: str  # "train" or "val"
    name: str  # "loss", "accuracy", "f1_macro", "perplexity", "tokens_per_second"
    value: float

    @property
    def key(self) -> str:
        """The flat name used in `metrics`: ``train_loss``, ``val_f1_macro``, ..."""
        return f"{self.split}_{self.name}"


@dataclass
class CheckpointInfo:
    name: str  # directory name under <out>/checkpoints, e.g. "step-00000100"
    path: str  # absolute path of that directory
    step: int
    epoch: int
    metrics: dict[str, float]
    size_bytes: int
    is_best: bool
    pruned: list[str] = field(default_factory=list)  # names of checkpoints deleted by this save


class Callbacks:
    """No-op base: subclass and override what you need."""

    def on_progress(self, progress: Progress) -> None:
        """After every step (the implementation throttles)."""

    def on_metrics(self, points: list[MetricPoint]) -> None:
        """Train loss (every few steps) and validation metrics (each evaluation)."""

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        """After a checkpoint directory was written atomically (and older ones pruned)."""

    def on_event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Something a person wants in the job's log: 'data_loaded', 'epoch_end', 'warning', 'early_stop'..."""

    def should_stop(self) -> bool:
        """Polled every few steps; True stops the run cleanly after saving a checkpoint."""
        return False

    def may_write(self) -> bool:
        """Asked every step and right before a checkpoint is renamed into place. False: the run no longer
        owns its output (a service worker lost its job's lease); the loop raises ``OwnershipLost`` at once
        and writes nothing more, not even a checkpoint."""
        return True


class CallbackList(Callbacks):
    def __init__(self, *callbacks: Callbacks) -> None:
        self.callbacks = [c for c in callbacks if c is not None]

    def on_progress(self, progress: Progress) -> None:
        for c in self.callbacks:
            c.on_progress(progress)

    def on_metrics(self, points: list[MetricPoint]) -> None:
        for c in self.callbacks:
            c.on_metrics(points)

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        for c in self.callbacks:
            c.on_checkpoint(info)

    def on_event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        for c in self.callbacks:
            c.on_event(kind, message, data)

    def should_stop(self) -> bool:
        return any(c.should_stop() for c in self.callbacks)

    def may_write(self) -> bool:
        return all(c.may_write() for c in self.callbacks)
