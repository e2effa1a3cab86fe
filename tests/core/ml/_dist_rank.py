"""A rank of the data-parallel tests: ``python -m torch.distributed.run ... -m tests.core.ml._dist_rank --
CONFIG_JSON DATA OUT RESULT_JSON [STOP_AT]``. Trains with the Trainer on this rank's share; rank 0 writes
the curve (every train-loss and validation point) to RESULT_JSON, and asks for a stop at step STOP_AT."""

from __future__ import annotations

import json
import sys

import torch

from core.ml.config import TrainConfig
from core.ml.distributed import Dist
from core.ml.trainer import Trainer
from tests.core.ml._tiny import Recorder


def main(config_json: str, data: str, out: str, result_path: str, stop_at: str = "") -> None:
    torch.set_num_threads(1)
    dist = Dist.from_env()
    rec = Recorder(stop_at=int(stop_at) if stop_at else None)
    trainer = Trainer(TrainConfig.model_validate_json(config_json), data, out, rec, dist=dist)
    dist.init(trainer.device)
    try:
        result = trainer.run()
    finally:
        dist.teardown()
    if dist.is_main:
        points = [[p.step, p.key, p.value] for p in rec.metrics if p.key != "train_tokens_per_second"]
        with open(result_path, "w", encoding="utf-8") as f:
            json.dump(
                {"points": points, "steps": result.steps, "status": result.status, "events": rec.kinds()}, f
            )


if __name__ == "__main__":
    from core.ml.distributed import exit_rank

    main(*sys.argv[1:])
    exit_rank(0)
