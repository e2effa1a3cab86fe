"""``split_indices``: the seeded, stratified train/validation split, and the rule it shares with
``check_config`` so that what the API accepts trains."""

from __future__ import annotations

import random
from collections import Counter

from core.ml.errors import DataError, Problem


def split_indices(
    n: int, val_fraction: float, seed: int, labels: list[str] | None = None
) -> tuple[list[int], list[int]]:
    """(train, validation) indices of ``n`` examples, shuffled with ``seed``; both non-empty.

    With ``labels`` the split is stratified: each class puts ``round(count * val_fraction)`` examples in
    validation, at least 1 for classes with 2 or more examples and none for a class of one, so every
    class is in training. Deterministic: the same arguments give the same lists on every platform
    (``random.Random``). Raises DataError (naming ``label_column``) when every label occurs once: no
    class could be validated, and the column is almost surely an id rather than classes.
    """
    if n < 2:
        raise DataError(f"need at least 2 rows to split into training and validation, got {n}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} examples")
    rng = random.Random(seed)
    if labels is None:
        order = list(range(n))
        rng.shuffle(order)
        k = min(n - 1, max(1, round(n * val_fraction)))
        return order[k:], order[:k]
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    sizes = _validation_sizes(Counter(labels), val_fraction)
    if not sizes:
        msg = _every_label_once(None, len(by_class))
        raise DataError(f"label_column: {msg}", problems=[Problem(["config", "label_column"], msg)])
    train: list[int] = []
    val: list[int] = []
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        k = sizes.get(y, 0)
        val += idx[:k]
        train += idx[k:]
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def _validation_sizes(label_counts: Counter[str], val_fraction: float) -> dict[str, int]:
    """How many examples of each class the stratified split puts in validation (classes with none left
    out). One rule for ``split_indices`` and ``check_config``, so that what the API accepts trains."""
    sizes = {}
    for y, n in label_counts.items():
        if n >= 2:
            sizes[y] = min(n - 1, max(1, round(n * val_fraction)))
    return sizes


def _every_label_once(column: str | None, n: int) -> str:
    name = f"column {column!r}" if column is not None else "the label column"
    return (
        f"every value of {name} is unique ({n:,} distinct values, each in one row), so it looks like an id "
        "column: a class needs at least 2 rows, one to train on and one to validate; set label_column to "
        "the column that holds the classes"
    )
