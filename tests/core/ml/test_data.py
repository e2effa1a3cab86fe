"""core.ml.data: format detection, loading, config checks and the split, on tiny files and the real ones."""

from __future__ import annotations

import codecs
import random
from collections import Counter
from pathlib import Path

import pytest

from core.ml.config import TrainConfig
from core.ml.data import (
    MAX_FIELD_CHARS,
    SAMPLE_BYTES,
    FileFormat,
    check_config,
    inspect_file,
    load_texts,
    split_indices,
)
from core.ml.errors import DataError

REVIEWS = [
    ("pos", "a great movie, loved every minute"),
    ("neg", "boring and far too long"),
    ("pos", "wonderful acting and a clever plot"),
    ("neg", "I walked out after an hour"),
    ("pos", "the best film I saw this year"),
    ("neg", "terrible dialogue, flat characters"),
]


def write(tmp_path: Path, content: str | bytes, name: str = "data.csv") -> Path:
    p = tmp_path / name
    if isinstance(content, str):
        p.write_text(content, encoding="utf-8", newline="")
    else:
        p.write_bytes(content)
    return p


def table(delimiter: str, header: bool = True, rows=REVIEWS) -> str:
    lines = [f"label{delimiter}text"] if header else []
    for label, text in rows:
        if delimiter in text:
            text = f'"{text}"'
        lines.append(f"{label}{delimiter}{text}")
    return "\n".join(lines) + "\n"


def cls_config(**kw) -> TrainConfig:
    return TrainConfig(task="classification", **kw)


# ---------------------------------------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize("delimiter", [",", "\t", ";", "|"])
def test_delimiter_and_header_detected(tmp_path, delimiter):
    info = inspect_file(write(tmp_path, table(delimiter)))
    assert info.format == FileFormat("csv", delimiter, "utf-8", True, True)
    assert info.columns == ["label", "text"]
    assert info.rows == 6
    assert info.preview[0] == {"label": "pos", "text": "a great movie, loved every minute"}
    assert len(info.preview) == 5
    assert info.warnings == []


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_headerless_columns_are_indexes(tmp_path, delimiter):
    info = inspect_file(write(tmp_path, table(delimiter, header=False)))
    assert info.format.header is False
    assert info.columns == ["0", "1"]
    assert info.rows == 6
    assert info.preview[1] == {"0": "neg", "1": "boring and far too long"}


def test_numeric_label_column_under_a_header(tmp_path):
    rows = "\n".join(f"{i % 2},review number {i} was fine" for i in range(8))
    info = inspect_file(write(tmp_path, "label,review\n" + rows + "\n"))
    assert (info.format.header, info.columns, info.rows) == (True, ["label", "review"], 8)
    info = inspect_file(write(tmp_path, rows + "\n"))
    assert (info.format.header, info.columns, info.rows) == (False, ["0", "1"], 8)


def test_utf8_bom_is_removed_from_the_first_name(tmp_path):
    info = inspect_file(write(tmp_path, codecs.BOM_UTF8 + table(",").encode()))
    assert info.format.encoding == "utf-8-sig"
    assert info.columns == ["label", "text"]
    assert info.warnings == []


def test_cp1252_fallback_is_announced(tmp_path):
    content = table(",").replace("wonderful", "caf\u00e9 wonderful").encode("cp1252")
    path = write(tmp_path, content)
    info = inspect_file(path)
    assert info.format.encoding == "cp1252"
    assert info.warnings == ["not valid UTF-8 (byte 0xe9 on line 4): decoded as cp1252"]
    data = load_texts(path, cls_config())
    assert data.texts[2] == "caf\u00e9 wonderful acting and a clever plot"
    assert data.warnings == ["not valid UTF-8 (byte 0xe9 on line 4): decoded as cp1252"]


def test_cp1252_byte_after_the_sample_restarts_the_pass(tmp_path):
    filler = "".join(f"pos,review {i} is long enough to fill the sample quickly\n" for i in range(2000))
    assert len(filler) > SAMPLE_BYTES
    content = ("label,text\n" + filler).encode() + b"neg,na\xefve plot\n"
    info = inspect_file(write(tmp_path, content))
    assert info.format.encoding == "cp1252"
    assert info.rows == 2001
    assert info.warnings == ["not valid UTF-8 (byte 0xef on line 2002): decoded as cp1252"]


def test_utf16_with_bom_is_decoded(tmp_path):
    path = write(tmp_path, table("\t").encode("utf-16"))
    info = inspect_file(path)
    assert info.format == FileFormat("csv", "\t", "utf-16", True, True)
    assert info.rows == 6
    assert load_texts(path, cls_config()).labels == [r[0] for r in REVIEWS]


def test_literal_quotes_in_a_tsv_turn_quoting_off(tmp_path):
    # Like the SMS Spam Collection: messages that start with '"' and never close it.
    rows = [("ham", '"Hi there, are you ok?'), ("spam", "WIN a prize now"), ("ham", 'He said "no" twice')]
    rows += [("ham", f"plain message {i}") for i in range(5)] + [("ham", '"Trailing quote"" odd')]
    path = write(tmp_path, "".join(f"{a}\t{b}\n" for a, b in rows), "sms.tsv")
    info = inspect_file(path)
    assert info.format == FileFormat("csv", "\t", "utf-8", False, False)
    assert info.rows == 9
    data = load_texts(path, cls_config(text_column=1, label_column=0))
    assert data.texts == [b for _, b in rows]


def test_literal_quotes_after_the_sample_restart_the_pass(tmp_path):
    clean = "".join(f"ham\tplain message number {i} without quotes\n" for i in range(2000))
    assert len(clean) > SAMPLE_BYTES
    content = clean + 'ham\t"Oh no, he said\nspam\tWIN now\nham\tbye\n'
    path = write(tmp_path, content, "late.tsv")
    info = inspect_file(path)
    assert info.format == FileFormat("csv", "\t", "utf-8", False, False)
    assert info.rows == 2003
    assert info.warnings == [
        'line 2001: a quote (") opened a field that ran over line ends; '
        "the file was read with quotes as ordinary characters"
    ]
    data = load_texts(path, cls_config(text_column=1, label_column=0))
    assert data.texts[-3:] == ['"Oh no, he said', "WIN now", "bye"]
    assert data.warnings == info.warnings


def test_quoted_csv_fields_keep_delimiters_and_line_breaks(tmp_path):
    content = 'label,text\npos,"good, really\nreally good"\n' + table(",", header=False)
    path = write(tmp_path, content)
    info = inspect_file(path)
    assert info.format == FileFormat("csv", ",", "utf-8", True, True)
    assert info.rows == 7
    assert load_texts(path, cls_config()).texts[0] == "good, really\nreally good"


def test_plain_text_one_document_per_line(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    path = write(tmp_path, text, "input.txt")
    info = inspect_file(path)
    assert info.format == FileFormat("text", None, "utf-8", False, False)
    assert info.columns == ["text"]
    assert info.rows == 5
    for column in ("text", 0, "0"):
        config = TrainConfig(task="language_modeling", text_column=column)
        assert check_config(path, config) == []
        data = load_texts(path, config)
        assert data.texts == [
            "First Citizen:",
            "Before we proceed any further, hear me speak.",
            "",  # a blank line is a paragraph break: kept for language modelling
            "All:",
            "Speak, speak.",
        ]
        assert (data.rows, data.skipped_rows, data.labels) == (5, 0, None)


def test_empty_and_duplicate_header_names(tmp_path):
    info = inspect_file(write(tmp_path, "a,,a,b\n1,x,2,y\n3,z,4,w\n5,q,6,v\n"))
    assert info.columns == ["a", "column_1", "column_2", "b"]


def test_text_spilling_into_unnamed_columns_is_joined_back(tmp_path):
    content = (
        "v1,v2,,,\r\n"
        + "".join(f"{label},{text},,,\r\n" for label, text in REVIEWS if "," not in text)
        + "spam,Call now, PO Box 12, London,\r\n"
        + 'ham,"Hi, see you",,,\r\n'
    )
    path = write(tmp_path, content)
    info = inspect_file(path)
    assert info.columns == ["v1", "v2", "column_2", "column_3", "column_4"]
    data = load_texts(path, cls_config(text_column="v2", label_column="v1"))
    assert data.texts[-2:] == ["Call now, PO Box 12, London", "Hi, see you"]
    assert data.warnings == [
        "1 rows had text spilling into the unnamed columns after 'v2' (first at line 6); joined back with ','"
    ]


# ---------------------------------------------------------------------------------------------------------
# Bad files


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"  \n\n \r\n", "the file contains only whitespace"),
        (b"label,text\n", "the file has a header (label, text) but no data rows"),
        (b"label,text\r\n\r\n", "the file has a header (label, text) but no data rows"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00binary", "the file looks binary (NUL byte at offset 5)"),
        (b"\xff\xfe\x00\x00a\x00\x00\x00", "the file is UTF-32 encoded, which is not supported"),
    ],
)
def test_unreadable_files(tmp_path, content, message):
    with pytest.raises(DataError) as e:
        inspect_file(write(tmp_path, content))
    assert e.value.code == "invalid_data"
    assert str(e.value).startswith(message)


def test_binary_junk_without_nul(tmp_path):
    rng = random.Random(0)
    junk = bytes(rng.choice([*range(1, 9), *range(14, 32), *range(128, 256)]) for _ in range(4000))
    with pytest.raises(DataError, match=r"^the file looks binary \(\d+ control characters"):
        inspect_file(write(tmp_path, junk))


def test_nul_byte_after_the_sample(tmp_path):
    filler = "".join(f"pos,review {i} is long enough\n" for i in range(3000))
    content = ("label,text\n" + filler).encode() + b"neg,bad\x00bytes\n"
    with pytest.raises(DataError, match="^line 3002: contains a NUL byte; the file looks binary$"):
        inspect_file(write(tmp_path, content))


def test_a_20_mb_line_is_refused_not_read(tmp_path):
    path = tmp_path / "huge.txt"
    with open(path, "w") as f:
        f.write("label,text\npos,ok\n")
        f.write("x" * (20 * 1024 * 1024))
        f.write("\n")
    with pytest.raises(DataError) as e:
        inspect_file(path)
    assert str(e.value).startswith(f"line 3: longer than {MAX_FIELD_CHARS:,} characters (field too large)")


def test_a_20_mb_single_line_file(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("word " * (4 * 1024 * 1024))
    with pytest.raises(DataError, match=r"^line 1: longer than [\d,]+ characters \(field too large\)"):
        inspect_file(path)


def test_unbalanced_quote_swallowing_the_file_is_a_clear_error(tmp_path):
    path = tmp_path / "quote.csv"
    good = table(",") + table(",", header=False) * 400  # past the detection sample
    assert len(good) > SAMPLE_BYTES
    with open(path, "w") as f:
        f.write(good + 'pos,"never closed\n')
        f.write("more text, and more\n" * (MAX_FIELD_CHARS // 20 + 10))
    with pytest.raises(DataError) as e:
        inspect_file(path)
    assert str(e.value) == (
        f"line 2408: a field is longer than {MAX_FIELD_CHARS:,} characters (field too large); "
        'an unbalanced quote (") can make a field swallow the lines after it'
    )


def test_ragged_beyond_repair(tmp_path):
    good = table(",") + table(",", header=False) * 320
    assert len(good) > SAMPLE_BYTES
    content = good + "pos,fine,1,2\n" * 600
    with pytest.raises(DataError) as e:
        inspect_file(write(tmp_path, content))
    assert str(e.value) == (
        "ragged rows: 600 of 2,526 rows do not have 2 fields (first at line 1928, 4 fields); "
        "check the delimiter and the quoting of the file"
    )


def test_a_few_ragged_rows_are_a_warning(tmp_path):
    content = table(",") + "neg\n" + table(",", header=False)
    info = inspect_file(write(tmp_path, content))
    assert info.rows == 13
    assert info.warnings == [
        "1 of 13 rows do not have 2 fields (first at line 8, 1 fields); "
        "missing fields are read as empty, extra fields are ignored"
    ]


@pytest.mark.parametrize("first_row", ["pos", "pos,an extra,field here"], ids=["fewer", "more"])
def test_headerless_ragged_first_row_reads_the_same_columns_everywhere(tmp_path, first_row):
    # issue 8: the upload took the most common row's width, the worker's reader the first row's, so a
    # short first row passed POST /jobs and failed in the worker ("column index 1 is out of range").
    path = write(tmp_path, first_row + "\n" + table(",", header=False) * 3)
    info = inspect_file(path)
    assert (info.format.header, info.columns, info.rows) == (False, ["0", "1"], 19)
    width = first_row.count(",") + 1
    assert info.warnings == [
        f"1 of 19 rows do not have 2 fields (first at line 1, {width} fields); "
        "missing fields are read as empty, extra fields are ignored"
    ]
    config = cls_config(text_column=1, label_column=0)
    assert check_config(path, config) == []
    data = load_texts(path, config)
    assert data.texts[-18:] == [t for _, t in REVIEWS] * 3
    assert len(data.texts) == (18 if width == 1 else 19)  # a missing text is skipped, extra fields ignored
    # and an index past the common width is refused by both, with the same message
    past = cls_config(text_column=2, label_column=0)
    msg = "column index 2 is out of range; the file has 2 columns: 0, 1"
    assert [p.msg for p in check_config(path, past)] == [msg]
    with pytest.raises(DataError, match=f"^config.text_column: {msg}$"):
        load_texts(path, past)


def test_max_rows(tmp_path):
    path = write(tmp_path, table(","))
    assert inspect_file(path, max_rows=6).rows == 6
    with pytest.raises(DataError, match="^the file has more than 5 rows, the limit$"):
        inspect_file(path, max_rows=5)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        inspect_file(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------------------
# Loading and checking a config


def test_empty_texts_and_labels_are_skipped_and_counted(tmp_path):
    content = table(",") + "pos,   \nneg,\n,no label here\n  ,also none\n"
    path = write(tmp_path, content)
    data = load_texts(path, cls_config())
    assert (data.rows, data.skipped_rows, len(data.texts)) == (10, 4, 6)
    assert data.labels == [r[0] for r in REVIEWS]
    assert data.warnings == [
        "2 rows with an empty text in column 'text' skipped (first at line 8)",
        "2 rows with an empty label in column 'label' skipped (first at line 10)",
    ]


def test_columns_by_index(tmp_path):
    path = write(tmp_path, table("\t", header=False))
    for text_col, label_col in [(1, 0), ("1", "0")]:
        data = load_texts(path, cls_config(text_column=text_col, label_column=label_col))
        assert data.texts == [r[1] for r in REVIEWS]
        assert data.labels == [r[0] for r in REVIEWS]
    headed = write(tmp_path, table(","), "headed.csv")
    assert load_texts(headed, cls_config(text_column=1, label_column=0)).labels == [r[0] for r in REVIEWS]


def test_load_texts_with_a_missing_column_raises(tmp_path):
    with pytest.raises(DataError) as e:
        load_texts(write(tmp_path, table(",")), cls_config(text_column="txt"))
    assert str(e.value) == "config.text_column: column 'txt' not found; the file has: label, text"
    assert [p.loc for p in e.value.problems] == [["config", "text_column"]]


def test_check_config_fits(tmp_path):
    assert check_config(write(tmp_path, table(",")), cls_config()) == []


def test_check_config_reports_every_problem(tmp_path):
    path = write(tmp_path, table(","))
    config = cls_config(text_column="txt", label_column=7)
    problems = [p.as_dict() for p in check_config(path, config)]
    assert problems == [
        {
            "loc": ["config", "text_column"],
            "msg": "column 'txt' not found; the file has: label, text",
            "type": "value_error",
        },
        {
            "loc": ["config", "label_column"],
            "msg": "column index 7 is out of range; the file has 2 columns: label, text",
            "type": "value_error",
        },
    ]


def test_check_config_same_column_by_name_and_index(tmp_path):
    problems = check_config(write(tmp_path, table(",")), cls_config(text_column="text", label_column=1))
    assert [(p.loc, p.msg) for p in problems] == [
        (
            ["config", "label_column"],
            "label_column and text_column are the same column ('text'); pick two different columns",
        )
    ]


def test_check_config_one_label(tmp_path):
    path = write(tmp_path, table(",", rows=[("pos", t) for _, t in REVIEWS]))
    assert [(p.loc, p.msg) for p in check_config(path, cls_config())] == [
        (
            ["config", "label_column"],
            "column 'label' has only one distinct label ('pos'); classification needs at least 2",
        )
    ]


def test_check_config_too_few_rows(tmp_path):
    path = write(tmp_path, "label,text\npos,just one good row here\nneg,   \n")
    assert [(p.loc, p.msg) for p in check_config(path, cls_config())] == [
        (
            ["config", "label_column"],
            "column 'label' has only one distinct label ('pos'); classification needs at least 2",
        ),
        (
            ["config", "training", "val_fraction"],
            "only 1 usable row (1 skipped: empty text or label): "
            "at least 2 are needed so that training and validation each get one",
        ),
    ]


def test_check_config_unknown_language_and_plain_text_columns(tmp_path):
    path = write(tmp_path, "just some prose\nand more of it\n", "doc.txt")
    config = cls_config(tokenizer={"language": "qq"})
    assert [(p.loc, p.msg) for p in check_config(path, config)] == [
        (
            ["config", "tokenizer", "language"],
            "unknown spaCy language 'qq'; use a code such as 'en', 'de', 'fr', 'es', 'zh', "
            "or tokenizer.kind 'char'",
        ),
        (
            ["config", "label_column"],
            "column 'label' not found; the file has: text (read as plain text: no consistent delimiter found)",
        ),
    ]


# ---------------------------------------------------------------------------------------------------------
# Split


def test_split_is_seeded_and_deterministic():
    train, val = split_indices(100, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert sorted(train + val) == list(range(100))
    assert (train, val) == split_indices(100, 0.1, seed=0)
    assert val != split_indices(100, 0.1, seed=1)[1]
    assert val != sorted(val)  # shuffled, not the tail of the file


def test_split_is_stratified():
    labels = ["a"] * 80 + ["b"] * 17 + ["c"] * 2 + ["d"]
    train, val = split_indices(100, 0.1, seed=3, labels=labels)
    assert sorted(train + val) == list(range(100))
    assert Counter(labels[i] for i in val) == {"a": 8, "b": 2, "c": 1}
    assert (train, val) == split_indices(100, 0.1, seed=3, labels=labels)


def test_split_edge_cases():
    assert split_indices(2, 0.1, seed=0) in [([0], [1]), ([1], [0])]
    with pytest.raises(DataError, match="need at least 2 rows"):
        split_indices(1, 0.1, seed=0)


def test_split_keeps_every_class_in_training():
    # A class of one trains and is not validated; a class of two gives one to each side.
    for n_b, val_b in [(1, 0), (2, 1)]:
        labels = ["a"] * 30 + ["b"] * n_b
        train, val = split_indices(len(labels), 0.1, seed=0, labels=labels)
        assert {labels[i] for i in train} == {"a", "b"}
        assert [labels[i] for i in val].count("b") == val_b


def test_split_refuses_labels_that_each_occur_once():
    # issue 8: every value unique (an id column as label_column) left validation without a known class
    # and the worker failed with internal_error; now a DataError names label_column.
    with pytest.raises(DataError) as e:
        split_indices(3, 0.5, seed=0, labels=["a", "b", "c"])
    assert e.value.code == "invalid_data"
    assert str(e.value) == (
        "label_column: every value of the label column is unique (3 distinct values, each in one row), so it "
        "looks like an id column: a class needs at least 2 rows, one to train on and one to validate; set "
        "label_column to the column that holds the classes"
    )
    assert [p.loc for p in e.value.problems] == [["config", "label_column"]]


def test_check_config_refuses_an_id_column_as_label(tmp_path):
    rows = "".join(f"{i},review number {i} of thirty\n" for i in range(30))
    path = write(tmp_path, "id,text\n" + rows)
    assert [(p.loc, p.msg) for p in check_config(path, cls_config(label_column="id"))] == [
        (
            ["config", "label_column"],
            "every value of column 'id' is unique (30 distinct values, each in one row), so it looks like an "
            "id column: a class needs at least 2 rows, one to train on and one to validate; set label_column "
            "to the column that holds the classes",
        )
    ]


def test_check_config_accepts_a_rare_class_that_trains(tmp_path):
    rows = [("pos", t) for _, t in REVIEWS] * 5 + [("neg", "boring")]
    assert check_config(write(tmp_path, table(",", rows=rows)), cls_config()) == []


# ---------------------------------------------------------------------------------------------------------
# The real files (../shared/data, see SOURCES.md)


def test_sms_spam_collection(shared_data):
    path = shared_data / "sms_spam" / "SMSSpamCollection.tsv"
    info = inspect_file(path)
    assert info.format == FileFormat("csv", "\t", "utf-8", False, False)
    assert (info.columns, info.rows, info.warnings) == (["0", "1"], 5574, [])
    config = cls_config(text_column=1, label_column=0)
    assert check_config(path, config, info) == []
    data = load_texts(path, config)
    assert (data.rows, data.skipped_rows, len(data.texts)) == (5574, 0, 5574)
    assert Counter(data.labels) == {"ham": 4827, "spam": 747}
    assert sum(t.startswith('"') for t in data.texts) > 0


def test_spam_kaggle_cp1252(shared_data):
    path = shared_data / "dirty" / "spam_kaggle_cp1252.csv"
    info = inspect_file(path)
    assert info.format == FileFormat("csv", ",", "cp1252", True, True)
    assert info.columns == ["v1", "v2", "column_2", "column_3", "column_4"]
    assert info.rows == 5572
    assert info.warnings == ["not valid UTF-8 (byte 0xe5 on line 7): decoded as cp1252"]
    config = cls_config(text_column="v2", label_column="v1")
    data = load_texts(path, config)
    assert (data.rows, data.skipped_rows) == (5572, 0)
    assert Counter(data.labels) == {"ham": 4825, "spam": 747}
    assert data.warnings[0] == "not valid UTF-8 (byte 0xe5 on line 7): decoded as cp1252"
    assert data.warnings[1].startswith("50 rows had text spilling into the unnamed columns after 'v2'")


def test_waimai_is_shuffled_and_stratified(shared_data):
    path = shared_data / "chinese" / "waimai_10k.csv"
    info = inspect_file(path)
    assert info.format == FileFormat("csv", ",", "utf-8", True, True)
    assert (info.columns, info.rows) == (["label", "review"], 11987)
    config = cls_config(text_column="review", tokenizer={"language": "zh"})
    assert check_config(path, config, info) == []
    data = load_texts(path, config)
    assert Counter(data.labels) == {"0": 7987, "1": 4000}
    train, val = split_indices(len(data.texts), 0.1, seed=0, labels=data.labels)
    assert Counter(data.labels[i] for i in val) == {"0": 799, "1": 400}
    assert len(train) == 11987 - 1199
    # The file is sorted by label: a shuffled split mixes them in both halves.
    assert {data.labels[i] for i in val[:50]} == {"0", "1"}


def test_tiny_shakespeare_as_plain_text(shared_data):
    path = shared_data / "tiny_shakespeare" / "input.txt"
    info = inspect_file(path)
    assert info.format == FileFormat("text", None, "utf-8", False, False)
    assert (info.columns, info.rows) == (["text"], 40000)
    assert info.preview[0] == {"text": "First Citizen:"}
    data = load_texts(path, TrainConfig(task="language_modeling"))
    # Blank lines are paragraph breaks, part of the text for language modelling: nothing is skipped, and
    # the lines joined back give the file exactly.
    assert (data.rows, data.skipped_rows, len(data.texts)) == (40000, 0, 40000)
    assert "\n".join(data.texts) + "\n" == path.read_text(encoding="utf-8")
