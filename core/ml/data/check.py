"""``check_config``: does a training config fit a file? Every problem at once, before anything is queued."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from core.ml.config import TrainConfig
from core.ml.data.examples import _Counts, _examples, _resolve_column, _resolve_columns
from core.ml.data.read import DatasetInfo, _header_row, _with_restarts, inspect_file
from core.ml.data.sniff import FileFormat
from core.ml.data.split import _every_label_once, _validation_sizes
from core.ml.errors import Problem

MIN_TEXT_PAIRS = 10  # text to text: fewer usable pairs than this is a 422, not a run that learns nothing


def check_config(path: str | Path, config: TrainConfig, info: DatasetInfo | None = None) -> list[Problem]:
    """Every way ``config`` does not fit the file at ``path``, at once; [] when it fits.

    Checks: the columns exist (a message lists the file's columns), indexes are in range, text and label
    (source and target) columns differ, text to text has at least ``MIN_TEXT_PAIRS`` usable pairs, classification has at least 2 distinct labels and not only labels seen once (an id
    column), and enough usable rows remain for both the training and the validation split. Also the
    tokenizer language. Streams the file once.
    Raises DataError if the file itself cannot be read.
    """
    path = Path(path)
    info = info or inspect_file(path)
    problems: list[Problem] = []
    if config.tokenizer.kind == "spacy":
        from core.ml.tokenize import language_problem

        p = language_problem(config.tokenizer.language)
        if p:
            problems.append(p)
    warnings: list[str] = []

    def run(fmt: FileFormat) -> tuple[list[Problem], _Counts, Counter[str]]:
        header = _header_row(path, fmt)
        cols, col_problems = _resolve_columns(info, config, header)
        counts = _Counts()
        labels: Counter[str] = Counter()
        if cols is None:
            return col_problems, counts, labels
        for _, label in _examples(path, fmt, cols, counts):
            if label is not None:
                labels[label] += 1
        return col_problems, counts, labels

    (col_problems, counts, labels), _ = _with_restarts(path, info.format, warnings, run)
    problems.extend(col_problems)
    if col_problems:
        return problems
    usable = counts.rows - counts.skipped
    skipped = f" ({counts.skipped:,} skipped: empty text or label)" if counts.skipped else ""
    if config.task == "classification":
        label_name = info.columns[_resolve_column(info.columns, config.label_column, [], info.format.kind)[0]]
        if len(labels) >= 2 and not _validation_sizes(labels, config.training.val_fraction):
            problems.append(Problem(["config", "label_column"], _every_label_once(label_name, len(labels))))
        if len(labels) == 1:
            only = next(iter(labels))
            problems.append(
                Problem(
                    ["config", "label_column"],
                    f"column {label_name!r} has only one distinct label ({only!r}); "
                    "classification needs at least 2",
                )
            )
        elif not labels and usable == 0 and counts.missing_label:
            problems.append(Problem(["config", "label_column"], f"column {label_name!r} has no labels"))
        if usable < 2:
            problems.append(
                Problem(
                    ["config", "training", "val_fraction"],
                    f"only {usable} usable row{'s' if usable != 1 else ''}{skipped}: at least 2 are needed "
                    "so that training and validation each get one",
                )
            )
    elif config.task == "text_to_text":
        if usable < MIN_TEXT_PAIRS:
            skipped = f" ({counts.skipped:,} skipped: empty source or target)" if counts.skipped else ""
            problems.append(
                Problem(
                    ["config", "source_column"],
                    f"only {usable} usable pair{'s' if usable != 1 else ''}{skipped}: text to text needs at "
                    f"least {MIN_TEXT_PAIRS}; check source_column and target_column, or add pairs",
                )
            )
    elif usable < 1:
        problems.append(
            Problem(["config", "text_column"], f"no text to train on in column {info.columns[0]!r}{skipped}")
        )
    return problems
