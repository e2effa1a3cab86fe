"""Reading training data: CSV, TSV and plain text, detected from the bytes, streamed, never read whole.

The pipeline is ``inspect_file`` (what is this file: encoding, delimiter, header, quoting, columns, rows),
``check_config`` (does a training config fit it: every problem at once), ``load_texts`` (the texts and
labels a run trains on) and ``split_indices`` (the seeded, stratified train/validation split).

Detection works on the first ``SAMPLE_BYTES`` of the file, then one streaming pass reads the rest:

- **Encoding**: a UTF-16 BOM decodes as UTF-16, a UTF-8 BOM as ``utf-8-sig``, valid UTF-8 as ``utf-8``.
  Anything else is decoded as ``cp1252`` (undefined bytes become U+FFFD) with a warning that says so,
  also when the invalid byte only shows up after the sample (the pass restarts once).
- **Delimiter**: among ``, TAB ; |`` the one that gives the most consistent field count (at least two
  fields) over the sample; none consistent means plain text, one document per line, one column "text".
  ``csv.Sniffer`` guesses wrong too often on real data, hence the small scoring heuristic below.
- **Quoting**: on (RFC 4180) unless the sample's quotes are ill-formed (``strict`` parsing fails, or
  quoted parsing merges lines) while every line splits cleanly without quotes: then ``"`` is an ordinary
  character. This is the SMS Spam Collection's case: many messages start with ``"`` and default CSV
  quoting silently merges lines (5,572 rows instead of 5,574).
- **Header**: the first row is a header when, column by column, it does not look like the data below it
  (a word above numbers, a name that is not one of a label column's values, a short name above long texts).
- **Column names**: header names are stripped; an empty or duplicate name becomes ``column_<i>`` (``i`` the
  0-based index), so ``v1,v2,,,`` gives ``v1, v2, column_2, column_3, column_4``. Headerless files name
  their columns ``"0"``, ``"1"``, ... A config column is a name, or a 0-based index (an int, or a digit
  string when no column has that name).

Blank lines in CSV files are not rows. Rows with an empty (whitespace-only) text, or for classification
an empty label, are skipped and counted. Labels are stripped of surrounding whitespace; texts are kept
as they are. When a header has unnamed columns right after the text column and a row has values there
(text with unquoted delimiters spilled over, as in the widely circulated Kaggle ``spam.csv``), they are
joined back into the text with the delimiter, and a warning counts the rows.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import random
import re
import statistics
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from core.ml.config import TrainConfig
from core.ml.errors import DataError, Problem

log = logging.getLogger(__name__)

SAMPLE_BYTES = 64 * 1024
"""Bytes read to detect encoding, delimiter, quoting and header."""

MAX_FIELD_CHARS = 10 * 1024 * 1024
"""Longest line (plain text) or field (CSV) accepted. Set deliberately: Python's csv default (128 KiB) is
too small for long documents, and no limit would let one 500 MB line exhaust memory."""

DELIMITERS = ("\t", ",", ";", "|")  # in order of preference when equally consistent
PREVIEW_ROWS = 5
PREVIEW_CHARS = 500
MIN_CONSISTENCY = 0.9  # share of sample records with the modal field count for a file to count as CSV
MAX_RAGGED_SHARE = 0.2  # more rows than this with the wrong field count: "ragged beyond repair"

csv.field_size_limit(MAX_FIELD_CHARS)


@dataclass
class FileFormat:
    """How a file is read. ``kind`` "text": plain text, one document per line, one column "text"."""

    kind: Literal["csv", "text"]
    delimiter: str | None
    encoding: str
    header: bool
    quoting: bool

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class DatasetInfo:
    """What ``inspect_file`` found. ``preview`` values are cut at ``PREVIEW_CHARS`` characters."""

    format: FileFormat
    columns: list[str]
    rows: int
    preview: list[dict[str, str]]
    warnings: list[str] = field(default_factory=list)


@dataclass
class TextData:
    """The texts (and labels, for classification) of a file, in file order."""

    texts: list[str]
    labels: list[str] | None
    rows: int
    skipped_rows: int
    format: FileFormat
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------
# Detection


def _head(path: Path) -> tuple[bytes, bool]:
    """The first SAMPLE_BYTES of the file and whether that is all of it."""
    try:
        with open(path, "rb") as f:
            head = f.read(SAMPLE_BYTES + 1)
    except FileNotFoundError:
        raise DataError(f"data file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise DataError(f"data file {str(path)!r} is a directory, not a file") from None
    return head[:SAMPLE_BYTES], len(head) <= SAMPLE_BYTES


def _detect_encoding(head: bytes, complete: bool) -> tuple[str, list[str]]:
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise DataError("the file is UTF-32 encoded, which is not supported: save it as UTF-8")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", []
    nul = head.find(b"\x00")
    if nul >= 0:
        raise DataError(
            f"the file looks binary (NUL byte at offset {nul}): upload a CSV, TSV or plain text file"
        )
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", []
    try:
        # final=False: the sample may end inside a multi-byte character.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError as e:
        return "cp1252", [_cp1252_warning(head[e.start], _line_of(head, e.start))]
    return "utf-8", []


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _cp1252_warning(byte: int, line: int | None) -> str:
    where = f" (byte 0x{byte:02x} on line {line})" if line else f" (byte 0x{byte:02x})"
    return f"not valid UTF-8{where}: decoded as cp1252"


def _errors(encoding: str) -> str:
    # cp1252 leaves five bytes undefined; a file we already know is not UTF-8 should still load.
    return "replace" if encoding == "cp1252" else "strict"


def _decode_sample(head: bytes, complete: bool, encoding: str) -> str:
    dec = codecs.getincrementaldecoder(encoding)(errors="replace")
    text = dec.decode(head, final=complete)
    if not complete:
        # Drop the last, probably incomplete line, unless it is the only one (a very long first line).
        cut = max(text.rfind("\n"), text.rfind("\r"))
        if cut > 0:
            text = text[: cut + 1]
    return text


def _check_not_binary(sample: str) -> None:
    nul = sample.find("\x00")
    if nul >= 0:
        raise DataError(
            f"the file looks binary (NUL character at position {nul}): upload a CSV, TSV or plain text file"
        )
    controls = sum(1 for c in sample if ord(c) < 32 and c not in "\t\n\r\f\v\x1b")
    if controls > max(2, len(sample) // 100):
        raise DataError(
            f"the file looks binary ({controls} control characters in its first {len(sample)} characters): "
            "upload a CSV, TSV or plain text file"
        )


def _parse_sample(sample: str, delimiter: str, quoting: bool, strict: bool = False) -> list[list[str]]:
    reader = csv.reader(
        io.StringIO(sample, newline=""),
        delimiter=delimiter,
        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE,
        strict=strict,
    )
    try:
        return [r for r in reader if r and r != [""]]
    except csv.Error:
        if strict:
            raise
        return []  # e.g. a field over the size limit: this reading does not fit


def _consistency(records: list[list[str]]) -> tuple[int, float]:
    """The modal field count and the share of records that have it."""
    if not records:
        return 0, 0.0
    mode, freq = Counter(len(r) for r in records).most_common(1)[0]
    return mode, freq / len(records)


_NUMBER = re.compile(r"^[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?%?$")


def _is_number(s: str) -> bool:
    return bool(_NUMBER.match(s.strip()))


def _looks_like_name(s: str) -> bool:
    s = s.strip()
    return bool(s) and len(s) <= 40 and len(s.split()) <= 4 and not _is_number(s)


def _header_score(first: list[str], rest: list[list[str]]) -> int:
    """Positive when ``first`` reads as column names for the records below it."""
    names = [f.strip() for f in first]
    if not rest:
        return 1 if all(_looks_like_name(n) for n in names if n) and any(names) else -1
    score = 0
    for j, name in enumerate(names):
        if not name:
            continue  # an empty name says nothing (Kaggle's "v1,v2,,,")
        if not _looks_like_name(name):
            score -= 2  # a sentence or a number is data, not a name
            continue
        values = [r[j].strip() for r in rest if j < len(r) and r[j].strip()]
        if not values:
            continue
        distinct = set(values)
        if sum(map(_is_number, values)) >= 0.9 * len(values):
            score += 2  # a word above a column of numbers
        elif len(distinct) < len(values) and len(distinct) <= max(20, len(values) // 5):
            # A label-like column: its header is not one of its values.
            score += -2 if name in distinct else 1
        elif name in distinct:
            score -= 1
        elif len(name) * 2 <= statistics.median(len(v) for v in values):
            score += 1  # a short name above long texts
    non_empty = [n for n in names if n]
    if len(set(non_empty)) < len(non_empty):
        score -= 1
    return score


def _sniff(sample: str) -> tuple[Literal["csv", "text"], str | None, bool, bool]:
    """(kind, delimiter, quoting, header) for a decoded sample."""
    best: tuple[float, int, str, bool, list[list[str]]] | None = None
    for priority, d in enumerate(DELIMITERS):
        if d not in sample:
            continue
        quoted = _parse_sample(sample, d, True)
        plain = _parse_sample(sample, d, False)
        mode_q, cons_q = _consistency(quoted)
        mode_p, cons_p = _consistency(plain)
        quoting = True
        if '"' in sample and mode_p >= 2 and cons_p >= cons_q:
            try:
                _parse_sample(sample, d, True, strict=True)
                well_formed = len(quoted) == len(plain) or cons_p < 1.0
            except csv.Error:
                well_formed = False
            quoting = well_formed
        mode, cons, records = (mode_q, cons_q, quoted) if quoting else (mode_p, cons_p, plain)
        if mode < 2:
            continue
        key = (cons, -priority)
        if best is None or key > best[:2]:
            best = (cons, -priority, d, quoting, records)
    if best is None:
        return "text", None, False, False
    cons, _, d, quoting, records = best
    mode, _ = _consistency(records)
    header = _header_score(records[0], records[1:]) > 0
    # Ragged: still CSV if the first row reads as a header of the modal width, else prose with commas.
    if cons < MIN_CONSISTENCY and not (header and len(records[0]) == mode and cons >= 0.5):
        return "text", None, False, False
    return "csv", d, quoting, header


def _detect(path: Path) -> tuple[FileFormat, list[str]]:
    head, complete = _head(path)
    if not head.strip():
        raise DataError("the file is empty" if not head else "the file contains only whitespace")
    encoding, warnings = _detect_encoding(head, complete)
    sample = _decode_sample(head, complete, encoding)
    if encoding == "utf-16" and not sample.strip():
        raise DataError("the file is empty")
    _check_not_binary(sample)
    kind, delimiter, quoting, header = _sniff(sample)
    return FileFormat(kind, delimiter, encoding, header, quoting), warnings


# ----------------------------------------------------------------------------------------------------------
# Streaming


class _Restart(Exception):
    """The streaming pass found what the sample hid; read again with ``fmt``."""

    def __init__(self, fmt: FileFormat, warning: str):
        self.fmt, self.warning = fmt, warning


def _lines(f: io.TextIOBase, counter: list[int]) -> Iterator[str]:
    """Lines of ``f`` (endings kept), refusing any longer than MAX_FIELD_CHARS without reading it whole."""
    while True:
        line = f.readline(MAX_FIELD_CHARS + 1)
        if not line:
            return
        counter[0] += 1
        if len(line) > MAX_FIELD_CHARS:
            raise DataError(
                f"line {counter[0]}: longer than {MAX_FIELD_CHARS:,} characters (field too large); "
                "is this really a CSV, TSV or one-document-per-line text file?"
            )
        if "\x00" in line:
            raise DataError(f"line {counter[0]}: contains a NUL byte; the file looks binary")
        yield line


def _records(path: Path, fmt: FileFormat) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number where the record starts, fields) for every non-blank record, header included.

    Raises DataError for unreadable content and _Restart when the encoding or the quoting must change.
    """
    counter = [0]
    with open(path, encoding=fmt.encoding, errors=_errors(fmt.encoding), newline="") as f:
        lines = _lines(f, counter)
        try:
            if fmt.kind == "text":
                for line in lines:
                    yield counter[0], [line.rstrip("\r\n")]
                return
            reader = csv.reader(
                lines,
                delimiter=fmt.delimiter or ",",
                quoting=csv.QUOTE_MINIMAL if fmt.quoting else csv.QUOTE_NONE,
            )
            start = 1
            while True:
                try:
                    rec = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    msg = str(e)
                    if fmt.quoting and fmt.delimiter == "\t":
                        raise _Restart(replace(fmt, quoting=False), _literal_quotes_warning(start)) from None
                    if "field larger than field limit" in msg:
                        msg = (
                            f"a field is longer than {MAX_FIELD_CHARS:,} characters (field too large); "
                            'an unbalanced quote (") can make a field swallow the lines after it'
                        )
                    raise DataError(f"line {start}: {msg}") from None
                end = counter[0]
                if (
                    fmt.quoting
                    and fmt.delimiter == "\t"
                    and end > start
                    and any("\t" in v or "\n" in v for v in rec)
                ):
                    # A quoted TSV field that spans lines and holds TABs: the quotes were literal text.
                    raise _Restart(replace(fmt, quoting=False), _literal_quotes_warning(start))
                if rec and rec != [""]:
                    yield start, rec
                start = end + 1
        except UnicodeDecodeError as e:
            if fmt.encoding in ("utf-8", "utf-8-sig"):
                raise _Restart(
                    replace(fmt, encoding="cp1252"), _cp1252_warning(*_first_invalid_utf8(path))
                ) from None
            raise DataError(
                f"line {counter[0] + 1}: cannot be decoded as {fmt.encoding}: {e.reason}"
            ) from None


def _literal_quotes_warning(line: int) -> str:
    return (
        f'line {line}: a quote (") opened a field that ran over line ends; '
        "the file was read with quotes as ordinary characters"
    )


def _first_invalid_utf8(path: Path) -> tuple[int, int | None]:
    """The first byte that is not valid UTF-8 and its 1-based line (the text layer reads ahead, so its
    position says little), scanning in binary chunks."""
    dec = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                dec.decode(chunk)
            except UnicodeDecodeError as e:
                # e.start counts from the undecoded bytes the decoder kept from the previous chunk.
                pending = len(e.object) - len(chunk)
                return e.object[e.start], line + chunk.count(b"\n", 0, max(0, e.start - pending))
            line += chunk.count(b"\n")
    return 0, None


def _column_names(header: list[str]) -> list[str]:
    names: list[str] = []
    for i, raw in enumerate(header):
        name = raw.strip()
        if not name or name in names:
            name = f"column_{i}"
            while name in names or name in (h.strip() for h in header):
                name += "_"
        names.append(name)
    return names


def _with_restarts(path: Path, fmt: FileFormat, warnings: list[str], run):
    """Run ``run(fmt)`` over the records; on a _Restart switch the format (at most twice) and rerun."""
    for _ in range(3):
        try:
            return run(fmt), fmt
        except _Restart as r:
            log.info("re-reading %s: %s", path, r.warning)
            fmt = r.fmt
            warnings.append(r.warning)
    raise DataError("the file could not be read consistently")  # pragma: no cover - needs 3 restarts


def inspect_file(path: str | Path, *, max_rows: int | None = None) -> DatasetInfo:
    """Detect a file's format, count its rows and preview the first ones, streaming it once.

    Raises DataError (code "invalid_data") naming the problem: empty file, header only, binary or NUL
    bytes, a line or field too large, ragged rows beyond repair, more than ``max_rows`` rows.
    """
    path = Path(path)
    fmt, warnings = _detect(path)

    def run(fmt: FileFormat) -> DatasetInfo:
        columns: list[str] | None = ["text"] if fmt.kind == "text" else None
        rows = 0
        preview: list[list[str]] = []
        widths: Counter[int] = Counter()
        first_bad: tuple[int, int] | None = None
        for line, rec in _records(path, fmt):
            if columns is None and fmt.header:
                columns = _column_names(rec)
                continue
            rows += 1
            if max_rows is not None and rows > max_rows:
                raise DataError(f"the file has more than {max_rows:,} rows, the limit")
            widths[len(rec)] += 1
            if len(preview) < PREVIEW_ROWS:
                preview.append(rec)
            if columns is not None and len(rec) != len(columns) and first_bad is None:
                first_bad = (line, len(rec))
        if rows == 0:
            if columns is not None and fmt.header:
                raise DataError(
                    f"the file has a header ({', '.join(columns)}) but no data rows",
                    problems=[Problem(["file"], "header only: no data rows")],
                )
            raise DataError("the file has no data rows")
        if columns is None:  # headerless CSV: as many columns as the most common row
            width = widths.most_common(1)[0][0]
            columns = [str(i) for i in range(width)]
            first_bad = None
        ragged = sum(n for w, n in widths.items() if w != len(columns))
        info_warnings: list[str] = []
        if ragged:
            example = f"first at line {first_bad[0]}, {first_bad[1]} fields" if first_bad else "e.g."
            msg = (
                f"{ragged:,} of {rows:,} rows do not have {len(columns)} fields ({example}); "
                "missing fields are read as empty, extra fields are ignored"
            )
            if ragged > MAX_RAGGED_SHARE * rows and ragged > 2:
                raise DataError(
                    f"ragged rows: {msg.split(';')[0]}; check the delimiter and the quoting of the file"
                )
            info_warnings.append(msg)
        pv = [{c: _short(rec[i]) if i < len(rec) else "" for i, c in enumerate(columns)} for rec in preview]
        return DatasetInfo(fmt, columns, rows, pv, info_warnings)

    info, fmt = _with_restarts(path, fmt, warnings, run)
    info.format = fmt
    info.warnings = warnings + info.warnings
    return info


def _short(value: str) -> str:
    return value if len(value) <= PREVIEW_CHARS else value[:PREVIEW_CHARS] + "…"


# ----------------------------------------------------------------------------------------------------------
# Config against file


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


def _resolve_columns(
    info: DatasetInfo, config: TrainConfig, header: list[str] | None
) -> tuple[_Columns | None, list[Problem]]:
    problems: list[Problem] = []
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
        if self.empty_text:
            out.append(
                f"{self.empty_text:,} rows with an empty text in column {text_name!r} skipped "
                f"(first at line {self.first_empty})"
            )
        if self.missing_label and cols.label is not None:
            out.append(
                f"{self.missing_label:,} rows with an empty label in column {info_columns[cols.label]!r} "
                f"skipped (first at line {self.first_missing})"
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


def _first_record(path: Path, fmt: FileFormat) -> list[str]:
    with closing(_records(path, fmt)) as records:
        return next(records, (0, []))[1]


def _header_row(path: Path, fmt: FileFormat) -> list[str] | None:
    return _first_record(path, fmt) if fmt.header else None


def check_config(path: str | Path, config: TrainConfig, info: DatasetInfo | None = None) -> list[Problem]:
    """Every way ``config`` does not fit the file at ``path``, at once; [] when it fits.

    Checks: the columns exist (a message lists the file's columns), indexes are in range, text and label
    columns differ, classification has at least 2 distinct labels, and enough usable rows remain for both
    the training and the validation split. Also the tokenizer language. Streams the file once.
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
    elif usable < 1:
        problems.append(
            Problem(["config", "text_column"], f"no text to train on in column {info.columns[0]!r}{skipped}")
        )
    return problems


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
        else:
            first = _first_record(path, fmt)
            columns = [str(i) for i in range(max(len(first), 1))]
        info = DatasetInfo(fmt, columns, 0, [])
        cols, problems = _resolve_columns(info, config, header)
        if cols is None:
            raise DataError(
                "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems), problems=problems
            )
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
        raise DataError(
            f"no usable rows: all {counts.rows:,} rows have an empty text or label",
            problems=[Problem(["config", "text_column"], "no non-empty text in this column")],
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
    )


# ----------------------------------------------------------------------------------------------------------
# Split


def split_indices(
    n: int, val_fraction: float, seed: int, labels: list[str] | None = None
) -> tuple[list[int], list[int]]:
    """(train, validation) indices of ``n`` examples, shuffled with ``seed``; both non-empty.

    With ``labels`` the split is stratified: each class puts ``round(count * val_fraction)`` examples in
    validation, at least 1 for classes with 2 or more examples and none for a class of one. Deterministic:
    the same arguments give the same lists on every platform (``random.Random``).
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
    train: list[int] = []
    val: list[int] = []
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        k = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val += idx[:k]
        train += idx[k:]
    if not val:  # every class has one example: fall back to one random example
        val.append(train.pop(rng.randrange(len(train))))
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val
