"""The texts and labels a config takes from a file: its columns resolved, every row turned into a
(text, label) example, and ``load_texts``.

A config column is a name, or a 0-based index (an int, or a digit string when no column has that name).

Blank lines in CSV files are not rows. Rows with an empty (whitespace-only) text, or for classification
an empty label, are skipped and counted. Labels are stripped of surrounding whitespace; texts are kept
as they are. When a header has unnamed columns right after the text column and a row has values there
(text with unquoted delimiters spilled over, as in the widely circulated Kaggle ``spam.csv``), they are
joined back into the text with the delimiter, and a warning counts the rows.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.ml.config import TrainConfig
from core.ml.data.read import (
    DatasetInfo,
    _column_names,
    _header_row,
    _headerless_columns,
    _records,
    _with_restarts,
)
from core.ml.data.sniff import FileFormat, _detect
from core.ml.errors import DataError, Problem, format_problems

log = logging.getLogger(__name__)


@dataclass
class TextData:
    """The texts (and labels, for classification) of a file, in file order."""

    texts: list[str]  # text to text: the sources
    labels: list[str] | None
    rows: int
    skipped_rows: int
    format: FileFormat
    warnings: list[str] = field(default_factory=list)
    targets: list[str] | None = None  # text to text: the target of each source


def _resolve_column(
    columns: list[str], ref: str | int, loc: list[str | int], kind: str
) -> tuple[int | None, Problem | None]:
    """The index of column ``ref`` (a name, an int index, or a digit string), or the problem."""
    if isinstance(ref, str) and ref in columns:
        return columns.index(ref), None
    if kind == "text" and ref in ("text", 0, "0"):
        return 0, None
    have = ", ".join(columns)
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        i = int(ref)
        if 0 <= i < len(columns):
            return i, None
        return None, Problem(
            loc,
            f"column index {i} is out of range; the file has {len(columns)} "
            f"column{'s' if len(columns) != 1 else ''}: {have}",
        )
    hint = " (read as plain text: no consistent delimiter found)" if kind == "text" else ""
    return None, Problem(loc, f"column {ref!r} not found; the file has: {have}{hint}")


@dataclass
class _Columns:
    text: int
    label: int | None
    spill: list[int]  # unnamed columns right after the text column
    pair: bool = False  # text to text: ``text`` is the source column, ``label`` the target column


def _resolve_columns(
    info: DatasetInfo, config: TrainConfig, header: list[str] | None
) -> tuple[_Columns | None, list[Problem]]:
    problems: list[Problem] = []
    if config.task == "text_to_text":  # the source is read as the text, the target as the label
        return _resolve_pair(info, config, header)
    text, p = _resolve_column(info.columns, config.text_column, ["config", "text_column"], info.format.kind)
    if p:
        problems.append(p)
    label = None
    if config.task == "classification":
        ref = config.label_column if config.label_column is not None else "label"
        label, p = _resolve_column(info.columns, ref, ["config", "label_column"], info.format.kind)
        if p:
            problems.append(p)
        if text is not None and label is not None and text == label:
            problems.append(
                Problem(
                    ["config", "label_column"],
                    f"label_column and text_column are the same column ({info.columns[text]!r}); "
                    "pick two different columns",
                )
            )
    if problems or text is None:
        return None, problems
    spill: list[int] = []
    if header is not None:
        j = text + 1
        while j < len(header) and not header[j].strip() and j != label:
            spill.append(j)
            j += 1
    return _Columns(text, label, spill), problems


def _resolve_pair(
    info: DatasetInfo, config: TrainConfig, header: list[str] | None
) -> tuple[_Columns | None, list[Problem]]:
    """Text to text: the source and target columns (docs/design.md, "Text to text")."""
    assert config.source_column is not None and config.target_column is not None
    kind = "pair" if info.format.kind != "text" else "text"
    problems: list[Problem] = []
    source, p = _resolve_column(info.columns, config.source_column, ["config", "source_column"], kind)
    problems += [p] if p else []
    target, p = _resolve_column(info.columns, config.target_column, ["config", "target_column"], kind)
    problems += [p] if p else []
    if source is not None and source == target:
        problems.append(
            Problem(
                ["config", "target_column"],
                f"source_column and target_column are the same column ({info.columns[source]!r}); "
                "pick two different columns",
            )
        )
    if info.format.kind == "text" or len(info.columns) < 2:
        problems = [
            Problem(
                ["config", "source_column"],
                f"text to text needs two columns (source and target), the file has {len(info.columns)}: "
                f"{', '.join(info.columns)}; upload a CSV or TSV with one pair per row",
            )
        ]
    if problems or source is None or target is None:
        return None, problems
    return _Columns(source, target, [], pair=True), problems


@dataclass
class _Counts:
    rows: int = 0
    empty_text: int = 0
    missing_label: int = 0
    spilled: int = 0
    first_empty: int | None = None
    first_missing: int | None = None
    first_spilled: int | None = None

    @property
    def skipped(self) -> int:
        return self.empty_text + self.missing_label

    def warnings(self, info_columns: list[str], cols: _Columns, delimiter: str | None) -> list[str]:
        out = []
        text_name = info_columns[cols.text]
        text_word, label_word = ("source", "target") if cols.pair else ("text", "label")
        if self.empty_text:
            out.append(
                f"{self.empty_text:,} rows with an empty {text_word} in column {text_name!r} skipped "
                f"(first at line {self.first_empty})"
            )
        if self.missing_label and cols.label is not None:
            out.append(
                f"{self.missing_label:,} rows with an empty {label_word} in column "
                f"{info_columns[cols.label]!r} skipped (first at line {self.first_missing})"
            )
        if self.spilled:
            out.append(
                f"{self.spilled:,} rows had text spilling into the unnamed columns after {text_name!r} "
                f"(first at line {self.first_spilled}); joined back with {delimiter!r}"
            )
        return out


def _examples(
    path: Path, fmt: FileFormat, cols: _Columns, counts: _Counts, keep_empty: bool = False
) -> Iterator[tuple[str, str | None]]:
    """(text, label) of every usable row, counting the skipped ones in ``counts``.

    ``keep_empty`` keeps empty lines of a plain-text file for language modelling: there a blank line is
    part of the text (paragraph breaks), and dropping it would change the token stream.
    """
    records = _records(path, fmt)
    if fmt.header:
        next(records, None)
    joiner = fmt.delimiter or ""
    for line, rec in records:
        counts.rows += 1
        text = rec[cols.text] if cols.text < len(rec) else ""
        if cols.spill:
            extra = [rec[j] for j in cols.spill if j < len(rec)]
            while extra and not extra[-1]:
                extra.pop()
            if extra:
                text = joiner.join([text, *extra])
                counts.spilled += 1
                counts.first_spilled = counts.first_spilled or line
        label = None
        if cols.label is not None:
            label = rec[cols.label].strip() if cols.label < len(rec) else ""
        if not text.strip() and not keep_empty:
            counts.empty_text += 1
            counts.first_empty = counts.first_empty or line
            continue
        if label == "":
            counts.missing_label += 1
            counts.first_missing = counts.first_missing or line
            continue
        yield text, label


def load_texts(path: str | Path, config: TrainConfig, *, file_format: FileFormat | None = None) -> TextData:
    """The texts (and string labels for classification) of the file, skipping empty texts and labels.

    ``file_format`` skips detection (the format a dataset was stored with). Raises DataError naming the
    column or row at fault, with ``problems`` for config columns that do not fit the file.
    """
    path = Path(path)
    warnings: list[str] = []
    if file_format is None:
        fmt, warnings = _detect(path)
    else:
        fmt = file_format
    holder: dict[str, _Counts | _Columns | list[str]] = {}

    def run(fmt: FileFormat) -> tuple[list[str], list[str]]:
        header = _header_row(path, fmt)
        if fmt.kind == "text":
            columns = ["text"]
        elif header is not None:
            columns = _column_names(header)
        else:  # the same columns inspect_file found at upload, even when the first row is ragged
            columns = _headerless_columns(Counter(len(rec) for _, rec in _records(path, fmt)))
        info = DatasetInfo(fmt, columns, 0, [])
        cols, problems = _resolve_columns(info, config, header)
        if cols is None:
            raise DataError(format_problems(problems), problems=problems)
        counts = _Counts()
        texts: list[str] = []
        labels: list[str] = []
        keep_empty = config.task == "language_modeling" and fmt.kind == "text"
        for text, label in _examples(path, fmt, cols, counts, keep_empty):
            texts.append(text)
            if label is not None:
                labels.append(label)
        holder.update(counts=counts, cols=cols, columns=columns)
        return texts, labels

    (texts, labels), fmt = _with_restarts(path, fmt, warnings, run)
    counts: _Counts = holder["counts"]  # type: ignore[assignment]
    cols: _Columns = holder["cols"]  # type: ignore[assignment]
    warnings += counts.warnings(holder["columns"], cols, fmt.delimiter)  # type: ignore[arg-type]
    if not any(t.strip() for t in texts):
        column = "source_column" if cols.pair else "text_column"
        raise DataError(
            f"no usable rows: all {counts.rows:,} rows have an empty {'source or target' if cols.pair else 'text or label'}",
            problems=[
                Problem(
                    ["config", column],
                    "no row with both a source and a target"
                    if cols.pair
                    else "no non-empty text in this column",
                )
            ],
        )
    for w in warnings:
        log.warning("%s: %s", path.name, w)
    return TextData(
        texts=texts,
        labels=labels if config.task == "classification" else None,
        rows=counts.rows,
        skipped_rows=counts.skipped,
        format=fmt,
        warnings=warnings,
        targets=labels if cols.pair else None,
    )
