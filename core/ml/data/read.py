"""One streaming pass over a file's records, and ``inspect_file``.

The pass reads the whole file once, line by line, never holding it in memory. When the rest of the file
contradicts what ``core.ml.data.sniff`` saw in its sample (a byte that is not UTF-8, quotes that turn out to
be literal text in a TSV), it restarts with the corrected format (``_with_restarts``) and says so in a
warning.

Column names: header names are stripped; an empty or duplicate name becomes ``column_<i>`` (``i`` the
0-based index), so ``v1,v2,,,`` gives ``v1, v2, column_2, column_3, column_4``. Headerless files name
their columns ``"0"``, ``"1"``, ...
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.ml.data.sniff import MAX_FIELD_CHARS, FileFormat, _cp1252_warning, _detect, _errors
from core.ml.errors import DataError, Problem

log = logging.getLogger(__name__)

PREVIEW_ROWS = 5
PREVIEW_CHARS = 500
MAX_RAGGED_SHARE = 0.2  # more rows than this with the wrong field count: "ragged beyond repair"


@dataclass
class DatasetInfo:
    """What ``inspect_file`` found. ``preview`` values are cut at ``PREVIEW_CHARS`` characters."""

    format: FileFormat
    columns: list[str]
    rows: int
    preview: list[dict[str, str]]
    warnings: list[str] = field(default_factory=list)


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


def _headerless_columns(widths: Counter[int]) -> list[str]:
    """Columns "0", "1", ... of a CSV without a header: as many as its most common row has fields.

    One rule for ``inspect_file`` (what the upload shows and ``check_config`` checks) and ``load_texts``
    (what the worker reads), so a ragged first row cannot make them disagree.
    """
    width = widths.most_common(1)[0][0] if widths else 1
    return [str(i) for i in range(width)]


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
        first_of_width: dict[int, int] = {}  # width -> the line of its first row
        for line, rec in _records(path, fmt):
            if columns is None and fmt.header:
                columns = _column_names(rec)
                continue
            rows += 1
            if max_rows is not None and rows > max_rows:
                raise DataError(f"the file has more than {max_rows:,} rows, the limit")
            widths[len(rec)] += 1
            first_of_width.setdefault(len(rec), line)
            if len(preview) < PREVIEW_ROWS:
                preview.append(rec)
        if rows == 0:
            if columns is not None and fmt.header:
                raise DataError(
                    f"the file has a header ({', '.join(columns)}) but no data rows",
                    problems=[Problem(["file"], "header only: no data rows")],
                )
            raise DataError("the file has no data rows")
        if columns is None:
            columns = _headerless_columns(widths)
        ragged = sum(n for w, n in widths.items() if w != len(columns))
        info_warnings: list[str] = []
        if ragged:
            line, width = min((first, w) for w, first in first_of_width.items() if w != len(columns))
            example = f"first at line {line}, {width} fields"
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


def _first_record(path: Path, fmt: FileFormat) -> list[str]:
    with closing(_records(path, fmt)) as records:
        return next(records, (0, []))[1]


def _header_row(path: Path, fmt: FileFormat) -> list[str] | None:
    return _first_record(path, fmt) if fmt.header else None
