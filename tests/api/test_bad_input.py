"""The bad-input corpus of issue 4: every case gets its exact 4xx and a message naming the problem,
never a 5xx, and nothing stored before is lost."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import anyio
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.ml.config import ModelConfig
from core.settings import Settings

GOOD = "".join(f"{'spam' if i % 3 == 0 else 'ham'},message number {i} here\n" for i in range(40))
GOOD_CSV = ("label,text\n" + GOOD).encode()


@pytest.fixture
def earlier(client: TestClient) -> dict:
    """A dataset uploaded before the bad input: it must still be there afterwards."""
    r = client.post(
        "/datasets", files={"file": ("earlier.csv", b"label,text\n" + b"ham,keep me\nspam,me too\n" * 20)}
    )
    assert r.status_code == 201, r.text
    return r.json()


def assert_nothing_lost(client: TestClient, settings: Settings, earlier: dict, datasets: int = 1) -> None:
    listed = client.get("/datasets").json()
    assert listed["count"] == datasets
    assert earlier["id"] in [d["id"] for d in listed["data"]]
    stored = settings.data_dir / "datasets" / earlier["sha256"][:2] / earlier["sha256"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == earlier["sha256"]
    # refused uploads leave no temp files behind
    tmp = settings.data_dir / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def assert_problem(r, status: int, *needles: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"].startswith("https://")
    text = body["detail"] + " " + json.dumps(body.get("errors", []))
    for needle in needles:
        assert needle in text, (needle, body)
    assert "Traceback" not in r.text
    return body


# --- files refused at upload -------------------------------------------------------------------------

FILE_CASES = [
    ("empty", b"", "the file is empty"),
    ("header_only", b"label,text\n", "no data rows"),
    ("binary_junk", bytes(range(256)) * 40, "looks binary"),
    ("utf16_without_bom", ("label,text\n" + GOOD).encode("utf-16-le"), "looks binary"),
    ("nul_bytes", b"label,text\nham,hel\x00lo\nspam,win\n", "NUL byte"),
    ("one_line_of_30_mb", b"label,text\nham," + b"x" * (30 * 1024 * 1024) + b"\n", "longer than"),
]


@pytest.mark.parametrize("content,needle", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_files_are_refused_at_upload(client, settings, earlier, content, needle):
    r = client.post("/datasets", files={"file": ("bad.csv", content, "text/csv")})
    body = assert_problem(r, 422, needle)
    assert body["code"] == "invalid_data"
    assert_nothing_lost(client, settings, earlier)


def test_too_many_rows_is_refused(make_settings):
    settings = make_settings(max_rows="10")
    with TestClient(create_app(settings)) as client:
        r = client.post("/datasets", files={"file": ("big.csv", GOOD_CSV)})
        assert_problem(r, 422, "10")
        assert client.get("/datasets").json()["count"] == 0


# --- files accepted with a warning (repairable), or decoded correctly ----------------------------------


def test_ragged_rows_are_repaired_with_a_warning_naming_the_line(client):
    content = ("label,text\n" + GOOD[:200] + "ham,a,b,c\nspam\n" + GOOD[200:]).encode()
    r = client.post("/datasets", files={"file": ("ragged.csv", content)})
    assert r.status_code == 201, r.text
    assert r.json()["warnings"] == [
        "3 of 42 rows do not have 2 fields (first at line 9, 5 fields); missing fields are read as empty, "
        "extra fields are ignored"
    ]


def test_unterminated_quote_is_read_literally_with_a_warning(client):
    content = ("label,text\n" + GOOD[:200] + 'ham,"this never ends\n' + GOOD[200:]).encode()
    r = client.post("/datasets", files={"file": ("quote.csv", content)})
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["format"]["quoting"] is False and d["rows"] == 41
    assert "do not have 2 fields" in d["warnings"][0]


def test_utf16_with_bom_is_decoded(client):
    r = client.post("/datasets", files={"file": ("u16.csv", ("label,text\n" + GOOD).encode("utf-16"))})
    assert r.status_code == 201, r.text
    assert r.json()["columns"] == ["label", "text"] and r.json()["rows"] == 40
    assert r.json()["format"]["encoding"] == "utf-16"


# --- files that do not fit the config: refused by POST /jobs (multipart form) -----------------------------

FIT_CASES = [
    (
        "single_class",
        b"label,text\n" + b"ham,hello there\n" * 30,
        {"task": "classification"},
        [["config", "label_column"]],
        "only one distinct label ('ham')",
    ),
    (
        # issue 8: every label seen once trained into an internal_error in the worker
        "id_column_as_label",
        b"id,text\n" + b"".join(b"%d,message number %d here\n" % (i, i) for i in range(40)),
        {"task": "classification", "label_column": "id"},
        [["config", "label_column"]],
        "every value of column 'id' is unique (40 distinct values, each in one row), so it looks like an id "
        "column: a class needs at least 2 rows, one to train on and one to validate; set label_column to the "
        "column that holds the classes",
    ),
    (
        "too_few_rows",
        b"label,text\nham,hi there friend\n",
        {"task": "classification"},
        [["config", "label_column"], ["config", "training", "val_fraction"]],
        "only 1 usable row",
    ),
    (
        "missing_text_column",
        GOOD_CSV,
        {"task": "classification", "text_column": "body"},
        [["config", "text_column"]],
        "column 'body' not found; the file has: label, text",
    ),
    (
        "missing_label_column",
        GOOD_CSV,
        {"task": "classification", "label_column": "category"},
        [["config", "label_column"]],
        "column 'category' not found; the file has: label, text",
    ),
    (
        "column_index_out_of_range",
        GOOD.encode(),
        {"task": "classification", "text_column": 5, "label_column": 0},
        [["config", "text_column"]],
        "5",
    ),
]


@pytest.mark.parametrize(
    "content,config,locs,needle", [c[1:] for c in FIT_CASES], ids=[c[0] for c in FIT_CASES]
)
def test_files_that_do_not_fit_the_config_are_refused_before_queueing(
    client, settings, earlier, content, config, locs, needle
):
    r = client.post("/jobs", files={"file": ("d.csv", content)}, data={"config": json.dumps(config)})
    body = assert_problem(r, 422, needle)
    assert [e["loc"] for e in body["errors"]] == locs
    assert client.get("/jobs").json()["count"] == 0
    assert_nothing_lost(client, settings, earlier)


# --- configs refused (JSON form, a good dataset) ---------------------------------------------------------

HUGE_MODEL = {"d_model": 8192, "n_heads": 64, "n_layers": 96, "dim_feedforward": 65536}

CONFIG_CASES: list[tuple[str, object, list, str]] = [
    ("not_an_object", "classification", [["body", "config"]], "valid dictionary"),
    ("missing_task", {}, [["config", "task"]], "Field required"),
    (
        "unknown_task",
        {"task": "translation"},
        [["config", "task"]],
        "'classification', 'language_modeling' or 'text_to_text'",
    ),
    (
        "wrong_types",
        {"task": "classification", "training": {"epochs": "many", "batch_size": [1]}},
        [["config", "training", "epochs"], ["config", "training", "batch_size"]],
        "valid integer",
    ),
    (
        "unknown_fields",
        {"task": "classification", "optimizer": "sgd", "model": {"layers": 2}},
        [["config", "optimizer"], ["config", "model", "layers"]],
        "unknown field; remove it or check its spelling",
    ),
    (
        "negative_values",
        {"task": "classification", "training": {"learning_rate": -1, "epochs": -3}},
        [["config", "training", "epochs"], ["config", "training", "learning_rate"]],
        "greater than",
    ),
    (
        "absurd_values",
        {"task": "classification", "training": {"batch_size": 10**9, "val_fraction": 5}},
        [["config", "training", "batch_size"], ["config", "training", "val_fraction"]],
        "less than",
    ),
    (
        # issue 8: a dotted code made spaCy import a submodule of spacy.lang and answered 500
        "dotted_language_code",
        {"task": "classification", "tokenizer": {"language": "ja.tag_map"}},
        [["config", "tokenizer", "language"]],
        "unknown spaCy language 'ja.tag_map'; use a code such as 'en'",
    ),
    (
        "heads_do_not_divide",
        {"task": "classification", "model": {"d_model": 100, "n_heads": 3}},
        [["config", "model"]],
        "divisible",
    ),
]


@pytest.mark.parametrize(
    "config,locs,needle", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_bad_configs_are_refused_naming_the_field(client, settings, earlier, config, locs, needle):
    r = client.post("/jobs", json={"dataset_id": earlier["id"], "config": config})
    body = assert_problem(r, 422, needle)
    assert sorted(e["loc"] for e in body["errors"]) == sorted(locs)
    assert client.get("/jobs").json()["count"] == 0
    assert_nothing_lost(client, settings, earlier)


def test_a_model_too_large_is_refused_with_its_estimate(client, settings, earlier):
    config = {"task": "classification", "model": HUGE_MODEL}
    r = client.post("/jobs", json={"dataset_id": earlier["id"], "config": config})
    estimate = ModelConfig(**HUGE_MODEL).estimate_parameters(30000, num_classes=2)
    body = assert_problem(r, 422, f"about {estimate:,} parameters", "at most 500,000,000")
    assert body["code"] == "model_too_large"
    assert body["errors"][0]["loc"] == ["config", "model"]
    assert client.get("/jobs").json()["count"] == 0


def test_a_classifier_whose_ngram_table_is_too_large_is_refused_naming_it(client, settings, earlier):
    # A small Transformer, but 2**24 rows of 1024 numbers (17 billion) in the n-gram table.
    model = {"d_model": 1024, "n_heads": 8, "n_layers": 1, "ngram_buckets": 1 << 24}
    r = client.post(
        "/jobs", json={"dataset_id": earlier["id"], "config": {"task": "classification", "model": model}}
    )
    body = assert_problem(r, 422, "model.ngram_buckets=16777216", "at most 500,000,000")
    assert body["code"] == "model_too_large"
    # The same table with the bag turned off is a model this server takes.
    model["ngrams"] = 0
    r = client.post(
        "/jobs", json={"dataset_id": earlier["id"], "config": {"task": "classification", "model": model}}
    )
    assert r.status_code == 202, r.text


def test_config_that_is_not_json_in_the_multipart_form(client, settings, earlier):
    r = client.post("/jobs", files={"file": ("d.csv", GOOD_CSV)}, data={"config": "{task: classification"})
    body = assert_problem(r, 422, "not valid JSON")
    assert body["errors"][0]["loc"] == ["config"]
    assert_nothing_lost(client, settings, earlier)


def test_multipart_without_config_or_file(client, settings, earlier):
    r = client.post("/jobs", files={"file": ("d.csv", GOOD_CSV)})
    assert_problem(r, 422, "no 'config' part")
    r = client.post("/jobs", files={"config": (None, json.dumps({"task": "classification"}))})
    assert_problem(r, 422, "no 'file' part")
    assert_nothing_lost(client, settings, earlier)


@pytest.mark.parametrize(
    "body,needle",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "valid dictionary"),
        (b'{"config": {"task": "classification"}}', "Field required"),
        (b'{"dataset_id": "../../etc", "config": {"task": "classification"}}', "dataset ../../etc not found"),
        (
            b'{"dataset_id": "00000000000000000000000000000000", "config": {"task": "classification"}}',
            "not found",
        ),
    ],
    ids=["not_json", "not_an_object", "no_dataset_id", "dataset_id_path", "unknown_dataset"],
)
def test_bad_json_bodies(client, settings, earlier, body, needle):
    r = client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert_problem(r, 422, needle)
    assert_nothing_lost(client, settings, earlier)


def test_wrong_content_types_are_415(client):
    assert_problem(
        client.post("/datasets", content=b"label,text\n", headers={"content-type": "text/csv"}),
        415,
        "multipart",
    )
    assert_problem(
        client.post("/jobs", content=b"x", headers={"content-type": "text/plain"}), 415, "application/json"
    )


# --- filenames ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename,shown",
    [
        ("../../../etc/passwd", "passwd"),
        ("/etc/cron.d/evil.csv", "evil.csv"),
        ("..\\..\\windows\\system32\\x.csv", "x.csv"),
        ("a\tb\x1b[31mred.csv", "ab[31mred.csv"),
        ("..", "upload"),
    ],
)
def test_filenames_are_never_paths(client, settings, earlier, filename, shown):
    # Built by hand: httpx would percent-encode the control characters before they reach the server.
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename.encode()
        + b'"\r\nContent-Type: text/csv\r\n\r\n'
        + GOOD_CSV
        + b"\r\n--XyZ--\r\n"
    )
    r = client.post("/datasets", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["filename"] == shown
    assert "/" not in d["filename"] and "\\" not in d["filename"]
    # the bytes live only at their content address inside the data dir
    files = sorted(
        p.relative_to(settings.data_dir).as_posix() for p in settings.data_dir.rglob("*") if p.is_file()
    )
    assert f"datasets/{d['sha256'][:2]}/{d['sha256']}" in files
    assert all(f.startswith("datasets/") or f == "jobformer.db" for f in files), files
    assert_nothing_lost(client, settings, earlier, datasets=2)


# --- size limit: refused while streaming ----------------------------------------------------------------


def test_upload_over_the_limit_is_413(make_settings):
    settings = make_settings(max_upload_mb="1")
    with TestClient(create_app(settings)) as client:
        r = client.post("/datasets", files={"file": ("big.csv", b"label,text\n" + b"ham,hello\n" * 150_000)})
        assert_problem(r, 413, "larger than the limit of 1 MB", "JOBFORMER_MAX_UPLOAD_MB")
        r = client.post("/jobs", files={"file": ("big.csv", b"x" * (2 * 1024 * 1024))}, data={"config": "{}"})
        assert_problem(r, 413, "larger than the limit of 1 MB")
        assert client.get("/datasets").json()["count"] == 0
        tmp = settings.data_dir / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []


def _asgi_upload(app, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """Send ``chunks`` as a streamed body straight to the ASGI app; returns (status, chunks it read)."""
    read = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal read
        if read < len(chunks):
            read += 1
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/datasets",
        "raw_path": b"/datasets",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    anyio.run(app, scope, receive, send)
    return sent[0]["status"], read


@pytest.mark.parametrize("announce_length", [False, True], ids=["chunked", "content_length"])
def test_upload_over_the_limit_is_refused_before_it_is_read(make_settings, announce_length):
    settings = make_settings(max_upload_mb="1")
    app = create_app(settings)
    head = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n'
    body = [head] + [b"ham,hello there\n" * 4096] * 128 + [b"\r\n--XyZ--\r\n"]  # 8 MB in 64 KB chunks
    headers = [(b"content-type", b"multipart/form-data; boundary=XyZ")]
    if announce_length:
        headers.append((b"content-length", str(sum(map(len, body))).encode()))
    status, read = _asgi_upload(app, body, headers)
    assert status == 413
    if announce_length:
        assert read == 0  # refused on the announced length alone
    else:
        assert read == 18  # head + 16 chunks of 64 KB = 1 MB, then the 17th passes the limit
    assert not (settings.data_dir / "tmp").exists() or list((settings.data_dir / "tmp").iterdir()) == []


def test_json_bodies_over_16_mb_are_413(client):
    r = client.post(
        f"/jobs/{'0' * 32}/predict",
        content=b'{"texts": ["' + b"x" * (17 * 1024 * 1024) + b'"]}',
        headers={"content-type": "application/json"},
    )
    assert_problem(r, 413, "request body larger than")


def test_settings_fixture_is_isolated(settings: Settings, make_settings: Callable[..., Settings]):
    assert settings.broker_url.endswith("/15") and settings.queue_name.startswith("test-api-")
