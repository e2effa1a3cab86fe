"""Fixtures of the model tests: the tiny data files (tests/core/ml/_tiny.py) and runs trained once for the
session, each on one torch thread (its numbers do not depend on the core count)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from core.ml.config import TrainConfig
from core.ml.train import train
from tests.core.ml._tiny import classification_config, lm_config, write_sentiment_csv, write_text_file


@pytest.fixture
def sentiment_csv(tmp_path: Path) -> Path:
    return write_sentiment_csv(tmp_path / "sentiment.csv")


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    return write_text_file(tmp_path / "docs.txt")


def _on_one_thread(run: Callable[[], Any]) -> Any:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run()
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def classifier_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """``(run directory, TrainResult)`` of a classifier of the sentiment file (6 epochs, d_model 64) that
    learned it: validation accuracy 1.0."""
    tmp = tmp_path_factory.mktemp("clf")
    base = classification_config(epochs=6, learning_rate=2e-3).model_dump()
    config = TrainConfig.model_validate({**base, "model": {**base["model"], "d_model": 64, "n_heads": 4}})
    result = _on_one_thread(lambda: train(config, write_sentiment_csv(tmp / "s.csv"), tmp / "run"))
    assert result.metrics["val_accuracy"] == 1.0
    return tmp / "run", result


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a language model of the tiny text file (``lm_config()``)."""
    tmp = tmp_path_factory.mktemp("lm")
    _on_one_thread(lambda: train(lm_config(), write_text_file(tmp / "t.txt"), tmp / "run"))
    return tmp / "run"
