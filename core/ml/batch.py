"""Batch predictions over a whole file (docs/design.md, "Evaluations and batch predictions").

``predict_file(predictor, src, dst)`` streams the rows of ``src`` (CSV, TSV or text, detected as uploads
are), ``CHUNK_ROWS`` at a time: a chunk is tokenized in one pass, scored in batches of similar length
(``Predictor.probabilities``), and written to ``dst`` in the input order before the next chunk is read, so
memory stays flat in the file's size. The output CSV has the input's columns, then ``predicted_label``
and one ``prob_<label>`` column per class (a classifier) or ``generated_text`` (a language model, each row's
text the prompt; text to text, each row's source decoded greedily, docs/design.md "Text to text": the
text column defaults to the training config's source column). A row with an empty text keeps its place with empty predictions.

When the file turns out to be in another encoding or quoting than its beginning said (``read``'s restarts),
the output is written again from the start.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from core.ml.data.examples import _resolve_column
from core.ml.data.read import _column_names, _header_row, _headerless_columns, _records, _with_restarts
from core.ml.data.sniff import FileFormat, _detect
from core.ml.errors import DataError
from core.ml.predict import Predictor

CHUNK_ROWS = 1024  # rows in memory at once
OnProgress = Callable[[int], None]  # rows written so far


def output_columns(predictor: Predictor, input_columns: list[str]) -> list[str]:
    """The output CSV's header for a file with ``input_columns``."""
    if predictor.task == "classification":
        return [*input_columns, "predicted_label", *(f"prob_{x}" for x in predictor.labels)]
    return [*input_columns, "generated_text"]


def predict_file(
    predictor: Predictor,
    src: str | Path,
    dst: str | Path,
    *,
    text_column: str | int | None = None,
    file_format: FileFormat | None = None,
    on_progress: OnProgress | None = None,
    max_new_tokens: int = 50,
    seed: int | None = 0,
) -> int:
    """Write the predictions for every row of ``src`` to the CSV ``dst``; returns the number of rows.

    ``text_column`` defaults to the training config's. Raises DataError naming the column when the file
    has no such column."""
    src, dst = Path(src), Path(dst)
    warnings: list[str] = []
    fmt = file_format
    if fmt is None:
        fmt, warnings = _detect(src)
    config = predictor.config
    default = config.source_column if config.task == "text_to_text" else config.text_column
    ref = default if text_column is None else text_column

    def run(fmt: FileFormat) -> int:
        columns = _input_columns(src, fmt)
        col, problem = _resolve_column(columns, ref, ["text_column"], fmt.kind)
        if problem is not None:
            raise DataError(problem.msg, problems=[problem])
        records = (rec for _, rec in _records(src, fmt))
        if fmt.header:
            next(records, None)
        done = 0
        with open(dst, "w", encoding="utf-8", newline="") as f:
            out = csv.writer(f)
            out.writerow(output_columns(predictor, columns))
            for chunk in _chunks(records, CHUNK_ROWS):
                rows = [(rec + [""] * len(columns))[: len(columns)] for rec in chunk]
                texts = [r[col] for r in rows]
                out.writerows(
                    r + p for r, p in zip(rows, _predict(predictor, texts, max_new_tokens, seed), strict=True)
                )
                done += len(rows)
                if on_progress is not None:
                    on_progress(done)
        return done

    rows, _ = _with_restarts(src, fmt, warnings, run)
    return rows


def _input_columns(src: Path, fmt: FileFormat) -> list[str]:
    if fmt.kind == "text":
        return ["text"]
    header = _header_row(src, fmt)
    if header is not None:
        return _column_names(header)
    return _headerless_columns(Counter(len(rec) for _, rec in _records(src, fmt)))


def _chunks(items: Iterator[list[str]], n: int) -> Iterator[list[list[str]]]:
    while chunk := list(islice(items, n)):
        yield chunk


def _predict(
    predictor: Predictor, texts: list[str], max_new_tokens: int, seed: int | None
) -> list[list[str]]:
    """The prediction cells of each text, in order."""
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if predictor.task == "classification":
        empty = [""] * (1 + len(predictor.labels))
        out = [empty] * len(texts)
        probs = predictor.probabilities(predictor.tokenizer.tokenize([texts[i] for i in keep]))
        for i, p in zip(keep, probs.tolist(), strict=True):
            best = max(range(len(p)), key=p.__getitem__)
            out[i] = [predictor.labels[best], *(f"{v:.6g}" for v in p)]
        return out
    out = [[""] for _ in texts]
    if predictor.task == "text_to_text":
        for i, text in zip(keep, predictor.text_to_text([texts[i] for i in keep]), strict=True):
            out[i] = [text]
        return out
    for i in keep:
        out[i] = [predictor.generate(texts[i], max_new_tokens=max_new_tokens, seed=seed)]
    return out
