"""The Trainer's parts (docs/design.md, "The training loop"): the layout of trainer_state.pt, a checkpoint
written before the Trainer existed resuming exactly, the tasks' batches, the phases, the encoding that
training and prediction share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from core.ml import checkpoint as ckpt
from core.ml.config import TrainConfig
from core.ml.data import load_texts, split_indices
from core.ml.predict import Predictor
from core.ml.state import TrainingState
from core.ml.tasks import encode_rows, make_task, pad_rows
from core.ml.tokenize import Vocab, build_tokenizer
from core.ml.train import train
from core.ml.trainer import Trainer
from tests.core.ml._tiny import (
    Recorder,
    classification_config,
    lm_config,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Written by the loop before the Trainer (commit a4e91e1, core/ml/train.py as one function):
#   train(lm_config(max_steps=20, eval_every=4), write_text_file(p / "docs.txt"), p / "run", Recorder(stop_at=5))
# with torch on one thread: stopped at step 5, after an evaluation at step 4 (so best and last_val are set)
# and with 5 steps in the partial train-loss average.
PRE_TRAINER_CHECKPOINT = Path(__file__).parent / "fixtures" / "pre_trainer_lm" / "step-00000005"
# trainer_state.pt's keys, in the order the one-function loop wrote them.
STATE_KEYS = [
    "optimizer",
    "scheduler",
    "step",
    "epoch",
    "best",
    "evals_since_best",
    "first_loss",
    "high_loss_checks",
    "loss_sum",
    "loss_count",
    "last_val",
    "train_loss",
    "data_rng",
    "rng",
]


def _train_points(rec: Recorder) -> list[tuple[int, float]]:
    return [(p.step, p.value) for p in rec.metrics if p.key == "train_loss"]


def _val_points(rec: Recorder) -> list[tuple[int, str, float]]:
    return [(p.step, p.key, p.value) for p in rec.metrics if p.split == "val"]


def test_trainer_state_keeps_the_layout_of_earlier_versions(text_file, tmp_path):
    train(lm_config(max_steps=20, eval_every=4), text_file, tmp_path / "run", Recorder(stop_at=5))
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(tmp_path / "run"))  # weights_only=True
    old = torch.load(PRE_TRAINER_CHECKPOINT / ckpt.STATE_FILE, weights_only=True)
    assert list(state) == list(old) == STATE_KEYS
    counters = TrainingState.from_state_dict(state)
    assert (counters.step, counters.loss_count, counters.best["step"]) == (5, 5, 4)
    assert counters.state_dict() == {k: state[k] for k in STATE_KEYS[2:12]}
    assert TrainingState.from_state_dict(old).state_dict() == {k: old[k] for k in STATE_KEYS[2:12]}


def test_a_checkpoint_saved_before_the_trainer_resumes_exactly(text_file, tmp_path, monkeypatch):
    """A job resumed after the upgrade: the old loop's 5 steps, then 15 more here, give the weights and
    the loss curve of 20 straight steps of the Trainer. The checkpoint predates the language model's
    logit factor (core/ml/model.py, LOGIT_SCALE): it goes on at the 1x it was trained with, so the straight
    run here is built at 1x too."""
    import core.ml.model

    config = lm_config(max_steps=20, eval_every=4)
    straight = Recorder()
    with monkeypatch.context() as m:
        m.setattr(core.ml.model, "LOGIT_SCALE", 1.0)
        train(config, text_file, tmp_path / "straight", straight)

    run = tmp_path / "resumed"
    shutil.copytree(PRE_TRAINER_CHECKPOINT, run / "checkpoints" / PRE_TRAINER_CHECKPOINT.name)
    rec = Recorder()
    result = train(config, text_file, run, rec)
    assert rec.kinds()[:2] == ["data_loaded", "resumed"]
    assert rec.progress[0].step == 6
    assert (result.status, result.steps) == ("completed", 20)
    a = ckpt.load_weights(tmp_path / "straight" / "checkpoints" / "step-00000020")
    b = ckpt.load_weights(run / "checkpoints" / "step-00000020")
    assert float(b["logit_scale"]) == 1.0  # saved with the factor its weights were trained with
    # Close rather than bitwise equal: the fixture's first 5 steps ran on another machine, whose float
    # rounding may differ in the last bit (test_train.py's test_resume_is_exact is the bitwise one). A key
    # misread (the generator, the partial loss average, the optimizer) moves these by far more.
    # The keys' bias is left out: attention is blind to it (q . (k + b) adds one constant to every score
    # of a query, which the softmax removes), so its gradient is zero up to rounding, and AdamW, which
    # divides by that gradient's own size, moves it by the rounding's sign: another CPU, another value.
    assert a.keys() == b.keys()
    for k in a:
        x, y = b[k], a[k]
        if k.endswith("attn.qkv.bias"):
            d = x.numel() // 3
            x, y = torch.cat((x[:d], x[2 * d :])), torch.cat((y[:d], y[2 * d :]))
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6, msg=k)
    # Step 10's train loss averages steps 6-10 and the 5 the old loop left in the checkpoint.
    assert [s for s, _ in _train_points(rec)] == [s for s, _ in _train_points(straight)] == [10, 20]
    assert [v for _, v in _train_points(rec)] == pytest.approx(
        [v for _, v in _train_points(straight)], rel=1e-5
    )
    later = [p for p in _val_points(straight) if p[0] > 5]
    assert [p[:2] for p in _val_points(rec)] == [p[:2] for p in later]
    assert [p[2] for p in _val_points(rec)] == pytest.approx([p[2] for p in later], rel=1e-5)


def _task(config: TrainConfig, path: Path):
    data = load_texts(path, config)
    return make_task(
        config, data, build_tokenizer(config.tokenizer).tokenize(data.texts), torch.device("cpu")
    )


def test_a_classification_batch_depends_only_on_the_seed_and_the_step(sentiment_csv):
    config = classification_config()
    walked, fresh = _task(config, sentiment_csv), _task(config, sentiment_csv)
    assert walked.steps_per_epoch == 14 and walked.labels == ["neg", "pos"]
    batches = [walked.batch(step) for step in range(20)]
    later = fresh.batch(17)  # a resume in the middle of epoch 2 draws the same rows
    assert torch.equal(later.x, batches[17].x) and torch.equal(later.y, batches[17].y)
    rows_of_epoch = torch.cat([b.y for b in batches[:14]])
    assert len(rows_of_epoch) == 216  # every training row once per epoch
    assert not torch.equal(batches[0].y, batches[14].y)  # another order in the next epoch


def test_a_language_model_batch_depends_on_the_saved_generator(text_file):
    config = lm_config()
    a, b = _task(config, text_file), _task(config, text_file)
    a.batch(0)
    b.data_rng.set_state(a.data_rng.get_state())
    x, y = a.batch(1), b.batch(1)
    assert torch.equal(x.x, y.x) and torch.equal(x.x[:, 1:], x.y[:, :-1])  # targets: inputs shifted by one
    assert x.x.shape == (8, 16) and x.tokens == 8 * 16


def test_the_phases_can_be_driven_one_at_a_time(sentiment_csv, tmp_path):
    """setup, a few train_steps and a save leave a checkpoint that train() resumes like its own."""
    config = classification_config(max_steps=6)
    trainer = Trainer(config, sentiment_csv, tmp_path / "run")
    trainer.setup()
    assert (trainer.state.step, trainer.total_steps, trainer.task.metric) == (0, 6, "val_f1_macro")
    for _ in range(3):
        assert trainer.train_step() > 0
    trainer.save(False, trainer.state.metrics())
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-00000003"

    rec = Recorder()
    resumed = train(config, sentiment_csv, tmp_path / "run", rec)
    straight = train(config, sentiment_csv, tmp_path / "straight")
    assert rec.progress[0].step == 4
    assert resumed.metrics == straight.metrics


def test_prediction_encodes_as_training_does(sentiment_csv, tmp_path):
    vocab = Vocab([*Vocab.SPECIALS, "good", "food"])
    rows = encode_rows(vocab, [["good", "food", "good", "x"], []], max_length=3)
    assert rows == [[vocab.cls_id, 4, 5], [vocab.cls_id]]  # <cls> + max_length - 1 tokens; unknown: <unk>
    x, lengths = pad_rows(rows)
    assert x.tolist() == [[2, 4, 5], [2, 0, 0]] and lengths.tolist() == [3, 1]

    config = classification_config(max_steps=14)
    train(config, sentiment_csv, tmp_path / "run")
    task = _task(config, sentiment_csv)  # the same split and vocabulary as the run's
    predictor = Predictor.load(tmp_path / "run")
    assert predictor.vocab == task.vocab and predictor.labels == task.labels
    with torch.inference_mode():
        logits, _ = predictor.model(task.val_x)
    expected = [task.labels[i] for i in logits.argmax(-1).tolist()]
    data = load_texts(sentiment_csv, config)
    _, val_idx = split_indices(
        len(data.texts), config.training.val_fraction, config.training.seed, data.labels
    )
    val_texts = [data.texts[i] for i in val_idx]
    assert [o["label"] for o in predictor.classify(val_texts)] == expected
