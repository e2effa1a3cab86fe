"""``init_from``: a run that starts from another model's weights and vocabulary (docs/design.md, "Subword
tokens and init_from").

``config.init_from`` is a checkpoint directory (or a run directory: its best checkpoint); the API turns a
finished job's id into its best checkpoint's directory before the job is queued. ``load_init`` reads it
through ``checkpoint.load_checkpoint`` and refuses what cannot fit (ConfigError whose problems name the
fields): another task than the ones below, a different tokenizer (the vocabulary is reused as it is), or
model fields that change the weights' shapes or meaning (d_model, n_heads, n_layers, dim_feedforward).
``max_length``, dropout and the training section may change: the positions are a sinusoidal buffer, not
weights.

    classification    from a language model (its backbone; a new head) or a classifier (the head too
                      when the labels are the same)
    language_modeling from a language model (continued training on new text)

``init_weights`` copies the checkpoint's backbone into a freshly built model and returns the names copied.
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.ml import checkpoint as ckpt
from core.ml.config import TrainConfig
from core.ml.errors import ConfigError, Problem

# The task a run may start from, for each task that takes init_from.
SOURCES = {
    "classification": ("classification", "language_modeling"),
    "language_modeling": ("language_modeling",),
}
MODEL_FIELDS = ("d_model", "n_heads", "n_layers", "dim_feedforward")  # the weights' shapes and meaning
TOKENIZER_FIELDS = ("kind", "language", "lowercase")  # what makes the saved vocabulary's tokens


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory ``path`` names: itself, or a run directory's best checkpoint."""
    path = Path(path)
    if (path / ckpt.MODEL_FILE).is_file():
        return path
    best = ckpt.best_checkpoint(path) if path.is_dir() else None
    if best is None:
        msg = f"{str(path)!r} is neither a checkpoint directory nor a run with checkpoints"
        raise ConfigError(f"init_from: {msg}", problems=[Problem(["config", "init_from"], msg)])
    return best


def fit_problems(config: TrainConfig, saved_config: dict) -> list[Problem]:
    """What keeps a model of ``config`` from starting at a checkpoint trained with ``saved_config``
    (empty: it fits). Each problem names the field of ``config`` to change."""
    problems: list[Problem] = []
    source_task = saved_config.get("task")
    allowed = SOURCES.get(config.task, ())
    if source_task not in allowed:
        fix = f"use a {' or '.join(allowed)} model" if allowed else "remove init_from"
        msg = f"a {config.task} model cannot start from a {source_task} checkpoint; {fix}"
        problems.append(Problem(["config", "init_from"], msg))
        return problems
    saved_model = saved_config.get("model") or {}
    current_model = config.model.model_dump()
    for field in MODEL_FIELDS:
        if saved_model.get(field) != current_model[field]:
            msg = f"is {current_model[field]!r}, the init_from checkpoint's is {saved_model.get(field)!r}; set it to that"
            problems.append(Problem(["config", "model", field], msg))
    saved_tok = saved_config.get("tokenizer") or {}
    current_tok = config.tokenizer.model_dump()
    for field in TOKENIZER_FIELDS:
        if saved_tok.get(field) != current_tok[field]:
            msg = (
                f"is {current_tok[field]!r}, the init_from checkpoint's is {saved_tok.get(field)!r}: its "
                "vocabulary is reused, so set it to that"
            )
            problems.append(Problem(["config", "tokenizer", field], msg))
    return problems


def load_init(config: TrainConfig) -> ckpt.SavedRun | None:
    """The checkpoint ``config.init_from`` names, read and checked (None without init_from). Raises
    ConfigError naming the fields that do not fit, or init_from when there is no checkpoint there."""
    if config.init_from is None:
        return None
    saved = ckpt.load_checkpoint(resolve_checkpoint(config.init_from))
    problems = fit_problems(config, saved.config)
    if problems:
        details = "; ".join(f"{'.'.join(map(str, p.loc[1:]))}: {p.msg}" for p in problems)
        raise ConfigError(
            f"init_from {str(saved.path)!r} does not fit this config: {details}", problems=problems
        )
    return saved


def init_weights(model: torch.nn.Module, saved: ckpt.SavedRun, labels: list[str]) -> list[str]:
    """Copy ``saved``'s backbone (and a classifier's head, when ``labels`` are its labels) into ``model``.
    Returns the names of the tensors copied."""
    weights = ckpt.load_weights(saved.path)
    keep_head = bool(labels) and labels == saved.labels
    own = model.state_dict()
    copied = [
        name
        for name, tensor in weights.items()
        if name in own and own[name].shape == tensor.shape and (name.startswith("backbone.") or keep_head)
    ]
    model.load_state_dict({name: weights[name] for name in copied}, strict=False)
    return copied
