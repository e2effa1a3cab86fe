"""Micro-batches (training.grad_accum_steps) and activation recomputation (model.gradient_checkpointing)
give the plain path's gradients (docs/design.md, "One job on many processes")."""

from __future__ import annotations

import pytest
import torch

from core.ml.config import TrainConfig, config_from_dict
from core.ml.distributed import accumulate_gradients
from core.ml.errors import ConfigError
from core.ml.train import train
from core.ml.trainer import Trainer
from tests.core.ml._tiny import TINY_MODEL, Recorder, write_sentiment_csv, write_text_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(task: str, *, dropout: float = 0.0, checkpointing: bool = False, **training) -> TrainConfig:
    base = {
        "classification": {"task": "classification"},
        "language_modeling": {"task": "language_modeling", "tokenizer": {"kind": "char"}},
        "text_to_text": {"task": "text_to_text"},
    }[task]
    return TrainConfig.model_validate(
        {
            **base,
            "model": {
                **TINY_MODEL,
                "n_layers": 2,
                "dropout": dropout,
                "gradient_checkpointing": checkpointing,
            },
            "training": {"batch_size": 16, "warmup_steps": 5, "learning_rate": 3e-3, **training},
        }
    )


def _pairs_csv(path):
    words = ["red", "green", "blue", "cat", "dog", "big", "small", "house", "tree", "car"]
    rows = ["source,target"]
    for i in range(80):
        src = " ".join(words[(i * k) % len(words)] for k in range(1, 2 + i % 5))
        rows.append(f"{src},{' '.join(reversed(src.split()))} end")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path):
    return {
        "classification": write_sentiment_csv(tmp_path / "sentiment.csv"),
        "language_modeling": write_text_file(tmp_path / "docs.txt"),
        "text_to_text": _pairs_csv(tmp_path / "pairs.csv"),
    }


def _gradients(config: TrainConfig, data_path, out) -> dict[str, torch.Tensor]:
    """The gradients of the first step's batch, as the Trainer computes them."""
    trainer = Trainer(config, data_path, out)
    trainer.setup()
    batch = trainer.task.batch(0)
    accumulate_gradients(
        trainer.net, batch, config.task, trainer.dist, config.training.grad_accum_steps, trainer.autocast
    )
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("task", ["classification", "language_modeling", "text_to_text"])
def test_four_micro_batches_give_the_gradients_of_one_batch(task, data, tmp_path):
    """Each micro-batch's loss is weighted by its share of the batch's loss terms: for text to text, whose
    loss averages over a varying number of non-padding target tokens, equal weights would not match."""
    plain = _gradients(_config(task), data[task], tmp_path / "a")
    micro = _gradients(_config(task, grad_accum_steps=4), data[task], tmp_path / "b")
    assert plain.keys() == micro.keys() and len(plain) > 4
    for name in plain:
        # Float sums in another order: equal to ~1e-7 of the gradient's scale, not bit for bit.
        assert torch.allclose(plain[name], micro[name], rtol=1e-4, atol=1e-6), name


def test_a_short_run_with_micro_batches_follows_the_plain_loss_curve(data, tmp_path):
    path = data["classification"]
    plain_rec, micro_rec = Recorder(), Recorder()
    plain = train(_config("classification", epochs=6, learning_rate=1e-2), path, tmp_path / "a", plain_rec)
    micro = train(
        _config("classification", epochs=6, learning_rate=1e-2, grad_accum_steps=4),
        path,
        tmp_path / "b",
        micro_rec,
    )
    # It learned: one sentiment word decides the label, the majority class is near 50%.
    assert plain.metrics["val_accuracy"] > 0.8
    a = [(p.step, p.value) for p in plain_rec.metrics if p.key == "train_loss"]
    b = [(p.step, p.value) for p in micro_rec.metrics if p.key == "train_loss"]
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) >= 3
    # 84 AdamW steps amplify the ~1e-7 differences of each step's summation order; 1e-3 is far below
    # the loss's change between two points (> 0.01) and far above that drift.
    for (step, x), (_, y) in zip(a, b, strict=True):
        assert y == pytest.approx(x, rel=1e-3), step
    assert micro.metrics["val_accuracy"] == pytest.approx(plain.metrics["val_accuracy"], abs=0.02)


@pytest.mark.parametrize("task", ["classification", "language_modeling", "text_to_text"])
def test_gradient_checkpointing_gives_the_same_gradients(task, data, tmp_path):
    """With dropout on: the recomputed forward pass replays the saved RNG state, so the masks match too."""
    plain = _gradients(_config(task, dropout=0.1), data[task], tmp_path / "a")
    recomputed = _gradients(_config(task, dropout=0.1, checkpointing=True), data[task], tmp_path / "b")
    assert plain.keys() == recomputed.keys()
    for name in plain:
        assert torch.allclose(plain[name], recomputed[name], rtol=1e-5, atol=1e-7), name


def test_a_run_resumes_with_gradient_checkpointing_turned_on(data, tmp_path):
    """A training choice, not part of the weights: switching it does not block the resume."""
    path = data["language_modeling"]
    train(_config("language_modeling", max_steps=4), path, tmp_path / "run")
    rec = Recorder()
    result = train(_config("language_modeling", max_steps=8, checkpointing=True), path, tmp_path / "run", rec)
    assert "resumed" in rec.kinds() and result.steps == 8


def test_more_micro_batches_than_examples_is_refused_at_the_field():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"task": "classification", "training": {"batch_size": 4, "grad_accum_steps": 8}})
    (problem,) = e.value.problems
    assert problem.loc == ["training", "grad_accum_steps"]
    assert "make it at most batch_size" in problem.msg
