"""Text to text through the API (issue 13): a pair file that does not fit the config is a 422 naming the
column and the fix, before anything is queued; the predict body takes beam search's options."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from api.schemas import PredictionsPublic, PredictRequest
from tests.api.test_bad_input import assert_problem

PAIRS = "en\tfr\n" + "".join(f"sentence {i}\tphrase {i}\n" for i in range(30))
BASE = {
    "task": "text_to_text",
    "source_column": "en",
    "target_column": "fr",
    "target_tokenizer": {"language": "fr"},
}

CASES = [
    (
        "missing_source",
        PAIRS,
        {"source_column": "english"},
        ["config", "source_column"],
        "column 'english' not found; the file has: en, fr",
    ),
    (
        "missing_target",
        PAIRS,
        {"target_column": 5},
        ["config", "target_column"],
        "column index 5 is out of range",
    ),
    (
        "same_column",
        PAIRS,
        {"target_column": "en"},
        ["config", "target_column"],
        "source_column and target_column are the same",
    ),
    (
        "label_column_given",
        PAIRS,
        {"label_column": "fr"},
        ["config", "label_column"],
        "text_to_text reads source_column and target_column",
    ),
    (
        "too_few_pairs",
        "en\tfr\n" + "hi\tsalut\n" * 4 + "\tvide\n" * 10,
        {},
        ["config", "source_column"],
        "only 4 usable pairs (10 skipped: empty source or target)",
    ),
    (
        "one_column",
        "just one column of text\n" * 30,
        {},
        ["config", "source_column"],
        "text to text needs two columns",
    ),
]


@pytest.mark.parametrize("content,extra,loc,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pairs_that_do_not_fit_are_refused_naming_the_column(client, content, extra, loc, needle):
    config = {**BASE, **extra}
    r = client.post(
        "/jobs", files={"file": ("pairs.tsv", content.encode())}, data={"config": json.dumps(config)}
    )
    body = assert_problem(r, 422, needle)
    assert [e["loc"] for e in body["errors"]] == [loc]
    assert client.get("/jobs").json()["count"] == 0


def test_a_good_pair_file_is_queued(client):
    r = client.post("/jobs", files={"file": ("pairs.tsv", PAIRS.encode())}, data={"config": json.dumps(BASE)})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "queued" and r.json()["config"]["source_column"] == "en"


def test_the_predict_body_takes_beam_options_and_the_answer_outputs():
    body = PredictRequest.model_validate({"texts": ["I am cold."], "beam_size": 4, "length_penalty": 0.6})
    assert (body.beam_size, body.length_penalty) == (4, 0.6)
    with pytest.raises(ValidationError, match="beam_size"):
        PredictRequest.model_validate({"texts": ["x"], "beam_size": 0})
    answer = PredictionsPublic.model_validate(
        {"data": [{"text": "j'ai froid ."}], "checkpoint": "step-00000010"}
    )
    assert answer.model_dump()["data"] == [{"text": "j'ai froid ."}]
