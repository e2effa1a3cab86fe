"""Tiny data and configs for the model/loop tests (a few hundred rows, models of a few thousand weights)."""

from __future__ import annotations

import random
from pathlib import Path

from core.ml.callbacks import Callbacks
from core.ml.config import TrainConfig

POSITIVE = ["good", "great", "fine", "lovely", "excellent", "nice", "tasty", "superb"]
NEGATIVE = ["bad", "awful", "poor", "terrible", "nasty", "sad", "bland", "cold"]
FILLER = [
    "the",
    "a",
    "meal",
    "food",
    "was",
    "is",
    "very",
    "really",
    "quite",
    "and",
    "but",
    "so",
    "it",
    "this",
    "our",
]


def write_sentiment_csv(path: Path, rows: int = 240, seed: int = 0) -> Path:
    """A CSV (text,label) where one sentiment word among filler decides the label: learnable in ~50 steps."""
    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(rows):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(FILLER, rng.randint(2, 7)) + [rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_text_file(path: Path, lines: int = 150, seed: int = 0) -> Path:
    """Plain text, one document per line, from a tiny vocabulary (for character language models)."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 10))) for _ in range(lines)]
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


TINY_MODEL = {
    "d_model": 16,
    "n_heads": 2,
    "n_layers": 1,
    "dim_feedforward": 32,
    "max_length": 16,
    "ngram_buckets": 1024,  # the classifier's n-gram bag (default 2), small; other tasks ignore it
}


def classification_config(**training) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "task": "classification",
            "model": {**TINY_MODEL, "dropout": 0.1},
            "training": {"epochs": 2, "batch_size": 16, "warmup_steps": 5, "learning_rate": 3e-3, **training},
        }
    )


def lm_config(**training) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "task": "language_modeling",
            "tokenizer": {"kind": "char"},
            "model": {**TINY_MODEL, "dropout": 0.1},
            "training": {
                "max_steps": 30,
                "batch_size": 8,
                "warmup_steps": 5,
                "learning_rate": 3e-3,
                **training,
            },
        }
    )


class Recorder(Callbacks):
    """Callbacks that keep everything, and can ask the loop to stop after a given step."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.progress = []
        self.metrics = []
        self.checkpoints = []
        self.events = []

    def on_progress(self, progress) -> None:
        self.progress.append(progress)

    def on_metrics(self, points) -> None:
        self.metrics.extend(points)

    def on_checkpoint(self, info) -> None:
        self.checkpoints.append(info)

    def on_event(self, kind, message, data=None) -> None:
        self.events.append((kind, message, data))

    def should_stop(self) -> bool:
        return self.stop_at is not None and bool(self.progress) and self.progress[-1].step >= self.stop_at

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.events]
