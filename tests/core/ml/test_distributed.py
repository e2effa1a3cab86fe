"""One job on many processes (docs/design.md, "One job on many processes"): 2 ranks under torchrun follow
the 1-process loss curve, resume from the same checkpoint, and `jobformer train --nproc` launches them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from core.ml.config import TrainConfig
from core.ml.distributed import Dist, launch_command, launch_env, micro_batches
from core.ml.tasks import Batch
from core.ml.train import train
from tests.core.ml._tiny import TINY_MODEL, Recorder, write_sentiment_csv, write_text_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Dropout 0: each rank draws its own dropout masks, so with dropout the curves agree in distribution only.
MODEL = {**TINY_MODEL, "dropout": 0.0}


def _lm_config(**training) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "task": "language_modeling",
            "tokenizer": {"kind": "char"},
            "model": MODEL,
            "training": {
                "batch_size": 8,
                "warmup_steps": 5,
                "learning_rate": 3e-3,
                "eval_every": 10,
                **training,
            },
        }
    )


def _on_ranks(nproc: int, config: TrainConfig, data, out, tmp_path, stop_at: int | None = None) -> dict:
    result = tmp_path / f"result-{nproc}.json"
    args = [config.model_dump_json(), str(data), str(out), str(result), str(stop_at or "")]
    cmd = launch_command(nproc, "tests.core.ml._dist_rank", args)
    done = subprocess.run(cmd, env=launch_env(nproc), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(result.read_text())


def _curve(points) -> dict[tuple[int, str], float]:
    return {(step, key): value for step, key, value in points}


def test_a_rank_takes_its_share_of_every_micro_batch():
    x = torch.arange(10).repeat_interleave(3).view(10, 3)
    batch = Batch(x, torch.arange(10), 30)
    shares = [micro_batches(batch, "classification", Dist(r, 2), accum=2) for r in range(2)]
    rows = [[m.y.tolist() for m, _ in s] for s in shares]
    assert rows == [[[0, 1, 2], [3, 4]], [[5, 6, 7], [8, 9]]]
    # DDP averages over the 2 ranks: the shares of one step sum to the whole batch's loss.
    assert sum(w for s in shares for _, w in s) == pytest.approx(1.0)
    # A last batch shorter than the ranks: the rank without rows makes a zero-weight pass (DDP needs one).
    (only,) = micro_batches(Batch(x[:1], torch.arange(1), 3), "classification", Dist(1, 2), accum=1)
    assert only[1] == 0.0


@pytest.mark.integration
def test_two_processes_follow_the_loss_curve_of_one(tmp_path):
    """Language modelling, 40 steps, the same seed: the train loss every 10 steps and the validation metrics
    of 2 ranks against 1 process. Tolerance 1e-4 relative: the ranks' gradients are summed by an all-reduce
    (and the loss by another) in another order than one process sums its batch, a ~1e-7 difference per step
    that 40 AdamW steps grow to ~1e-6; a wrong share (a rank training on the whole batch, or gradients
    not averaged) moves the curve by more than 1e-2 from step 10 on."""
    data = write_text_file(tmp_path / "docs.txt")
    config = _lm_config(max_steps=40)
    rec = Recorder()
    single = train(config, data, tmp_path / "one", rec)
    assert single.metrics["val_loss"] < rec.metrics[0].value  # it learned: below the first train loss
    two = _on_ranks(2, config, data, tmp_path / "two", tmp_path)
    one_curve, two_curve = _curve([[p.step, p.key, p.value] for p in rec.metrics]), _curve(two["points"])
    keys = [k for k in one_curve if k[1] != "train_tokens_per_second"]
    assert sorted(k for k in two_curve) == sorted(keys) and len(keys) >= 8
    for key in keys:
        assert two_curve[key] == pytest.approx(one_curve[key], rel=1e-4), key


@pytest.mark.integration
def test_every_rank_resumes_from_the_checkpoint_rank_0_wrote(tmp_path):
    """2 ranks stopped at step 20 (rank 0's stop request reaches rank 1), then 2 ranks resumed from rank 0's
    checkpoint: the curve of 40 steps straight."""
    data = write_text_file(tmp_path / "docs.txt")
    first = _on_ranks(2, _lm_config(max_steps=40), data, tmp_path / "run", tmp_path, stop_at=20)
    assert (first["steps"], first["status"]) == (20, "stopped")
    second = _on_ranks(2, _lm_config(max_steps=40), data, tmp_path / "run", tmp_path)
    assert second["steps"] == 40 and "resumed" in second["events"]
    rec = Recorder()
    train(_lm_config(max_steps=40), data, tmp_path / "straight", rec)
    straight = _curve([[p.step, p.key, p.value] for p in rec.metrics])
    resumed = _curve(second["points"])
    assert min(step for step, _ in resumed) > 20  # the second run trained steps 21 to 40 only
    for key, value in resumed.items():
        assert value == pytest.approx(straight[key], rel=1e-4), key


CLI_CONFIG = {
    "task": "classification",
    "model": MODEL,
    "training": {"max_steps": 20, "batch_size": 16, "warmup_steps": 2, "learning_rate": 3e-3},
}


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cli.main", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


@pytest.mark.integration
def test_jobformer_train_nproc_2_writes_the_run_of_one_process(tmp_path):
    data = write_sentiment_csv(tmp_path / "s.csv")
    config = json.dumps(CLI_CONFIG)
    two = _cli(str(data), "-c", config, "-o", str(tmp_path / "two"), "--nproc", "2", "--json", "-q")
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads(two.stdout.strip().splitlines()[-1])  # rank 0 alone prints
    assert len(two.stdout.strip().splitlines()) == 1
    one = train(TrainConfig.model_validate(CLI_CONFIG), data, tmp_path / "one")
    assert summary["steps"] == 20
    for name, value in one.metrics.items():
        assert summary["metrics"][name] == pytest.approx(value, rel=1e-4), name
    names = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one" / "checkpoints").iterdir())


def test_a_batch_the_processes_cannot_share_is_refused(tmp_path):
    data = write_sentiment_csv(tmp_path / "s.csv")
    config = json.dumps({**CLI_CONFIG, "training": {**CLI_CONFIG["training"], "batch_size": 15}})
    r = _cli(str(data), "-c", config, "-o", str(tmp_path / "run"), "--nproc", "2")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: training.batch_size (15) must be divisible by the number of processes (2): each takes an "
        "equal share of the global batch; use 14 or 16"
    )
    assert not (tmp_path / "run").exists()
