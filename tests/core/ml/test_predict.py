"""Predictor: load a run or a checkpoint, classify texts, generate text."""

from __future__ import annotations

import pytest

from core.ml.errors import ConfigError
from core.ml.predict import Predictor
from core.ml.train import train
from tests.core.ml._tiny import lm_config, write_text_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_classify_from_a_run_directory(classifier_run):
    run, result = classifier_run
    p = Predictor.load(run)
    assert p.task == "classification"
    assert str(p.path) == result.checkpoint  # a run directory means its best checkpoint
    out = p.classify(["the food was really great", "awful and cold", "superb"])
    assert [o["label"] for o in out] == ["pos", "neg", "pos"]
    for o in out:
        assert set(o["probabilities"]) == {"neg", "pos"}
        assert sum(o["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert o["probabilities"][o["label"]] > 0.5


def test_classify_from_a_checkpoint_directory_gives_the_same_answer(classifier_run):
    run, result = classifier_run
    a = Predictor.load(run).classify(["nice meal", "so bland"])
    b = Predictor.load(result.checkpoint).classify(["nice meal", "so bland"])
    assert a == b


def test_long_and_empty_texts_are_fine(classifier_run):
    run, _ = classifier_run
    out = Predictor.load(run).classify(["", "great " * 500, "unknownword"])
    assert len(out) == 3


def test_generate_is_seeded_and_stops_at_max_new_tokens(lm_run):
    p = Predictor.load(lm_run)
    assert p.task == "language_modeling"
    a = p.generate("the ", max_new_tokens=30, seed=1)
    assert a == p.generate("the ", max_new_tokens=30, seed=1)
    assert len(a) <= 30
    assert set(a) <= set("abcdefghijklmnopqrstuvwxyz \n")  # characters of the training text
    greedy = p.generate("the ", max_new_tokens=20, temperature=0)
    assert greedy == p.generate("the ", max_new_tokens=20, top_k=1, seed=5)
    assert p.generate("", max_new_tokens=5, seed=0) == p.generate("", max_new_tokens=5, seed=0)


def test_wrong_task_is_refused(classifier_run, lm_run):
    with pytest.raises(ConfigError, match="generate\\(\\) needs a language_modeling model"):
        Predictor.load(classifier_run[0]).generate("x")
    with pytest.raises(ConfigError, match="classify\\(\\) needs a classification model"):
        Predictor.load(lm_run).classify(["x"])


def test_a_directory_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory nor a run"):
        Predictor.load(tmp_path)


def test_a_checkpoint_of_another_model_architecture_is_refused(lm_run, tmp_path):
    """Weights saved for an older model (GELU MLP, no "architecture" in meta.json) would load without an
    error and predict nonsense: loading and resuming refuse them, naming the fix."""
    import json
    import shutil

    from core.ml import checkpoint as ckpt
    from core.ml.errors import CheckpointError
    from core.ml.model import ARCHITECTURE

    run = tmp_path / "old"
    shutil.copytree(lm_run, run)
    latest = ckpt.latest_checkpoint(run)
    meta = json.loads((latest / ckpt.META_FILE).read_text())
    assert meta["architecture"] == ARCHITECTURE  # written by train
    del meta["architecture"]
    (latest / ckpt.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="architecture 1 .*Train it again") as e:
        Predictor.load(latest)
    assert e.value.code == "incompatible_checkpoint"
    with pytest.raises(CheckpointError, match="architecture 1"):
        train(lm_config(max_steps=40), write_text_file(tmp_path / "t.txt"), run)  # resume from it
