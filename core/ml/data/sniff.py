"""What a file is, from its first ``SAMPLE_BYTES``: encoding, delimiter, quoting and header.

The streaming pass (``core.ml.data.read``) then reads the rest, and restarts once with a corrected format
when the rest contradicts the sample.

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
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from core.ml.errors import DataError

SAMPLE_BYTES = 64 * 1024
"""Bytes read to detect encoding, delimiter, quoting and header."""

MAX_FIELD_CHARS = 10 * 1024 * 1024
"""Longest line (plain text) or field (CSV) accepted. Set deliberately: Python's csv default (128 KiB) is
too small for long documents, and no limit would let one 500 MB line exhaust memory."""

DELIMITERS = ("\t", ",", ";", "|")  # in order of preference when equally consistent
MIN_CONSISTENCY = 0.9  # share of sample records with the modal field count for a file to count as CSV

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
