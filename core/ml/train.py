"""``train()``: what the worker, the CLI and the benchmarks call to train a model. The loop itself is the
``Trainer`` (``core.ml.trainer``, docs/design.md, "The training loop"): this wrapper keeps the callers'
one function and its result type.

    data -> tokens -> vocabulary (training split only) -> tensors -> model -> AdamW loop
         -> evaluation + checkpoint (every ``eval_every`` steps and at each epoch end) -> TrainResult
"""

from __future__ import annotations

from pathlib import Path

from core.ml.callbacks import Callbacks
from core.ml.config import TrainConfig
from core.ml.optim import lr_at
from core.ml.state import TrainResult
from core.ml.trainer import Trainer

__all__ = ["TrainResult", "lr_at", "train"]


def train(
    config: TrainConfig,
    data_path: str | Path,
    out_dir: str | Path,
    callbacks: Callbacks | None = None,
    *,
    lease_epoch: int | None = None,
    resume_from: str | Path | None = "latest",
) -> TrainResult:
    """Train a model as ``config`` says on the file ``data_path``, writing checkpoints under ``out_dir``.

    Resumes from the latest checkpoint in ``out_dir`` when there is one (same step counter, same loss
    curve; event "resumed"). Raises ConfigError, DataError, DivergedError or CheckpointError, and
    OwnershipLost when ``callbacks.may_write()`` turns False. ``lease_epoch``: the service worker's lease
    on the job, which scopes checkpoint names and pruning (``core.ml.checkpoint``). ``resume_from``: a
    checkpoint directory to resume from, None to start afresh, or "latest" (the newest in ``out_dir``).
    """
    trainer = Trainer(config, data_path, out_dir, callbacks, lease_epoch=lease_epoch, resume_from=resume_from)
    return trainer.run()
