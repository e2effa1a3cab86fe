"""``test_dataset_id`` in POST /sweeps (docs/design.md, "Sweeps"): checked as POST /jobs checks it (another
owner's dataset 404, a test set without the job's text or label column 422 naming it) before anything is
recorded or queued; given to every trial's job; the leaderboard shows each trial's test accuracy and
macro-F1 once its evaluation succeeded. What the worker writes (claim, curve, end, the evaluation's report)
is written through core.db.store, the functions the worker calls."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.db import store
from core.db.models import Job, RunKind, RunStatus, Sweep
from core.db.store import runs as run_store
from tests.api import test_test_sets
from tests.api.conftest import queued_ids
from tests.api.test_sweeps import advance, run_trial, sweep_body
from tests.api.test_test_sets import ALICE

two_owners = test_test_sets.two_owners  # the fixture: an app with Alice's and Bob's keys and files


def finish_evaluation(s, job_id: str, report: dict | None, status: RunStatus = RunStatus.SUCCEEDED) -> str:
    """The trial's test evaluation as the worker records it: queued when training succeeded, claimed, ended."""
    job = s.get(Job, job_id)
    run = run_store.create_run(
        s,
        owner=job.owner,
        job_id=job_id,
        kind=RunKind.EVALUATION,
        dataset_id=job.test_dataset_id,
        checkpoint="best",
        queue=job.queue,
        is_test=True,
    )
    s.commit()
    claimed = run_store.claim_run(s, run.id, "host:1")
    assert run_store.finish_run(s, run.id, claimed.attempts, status, report=report)
    s.commit()
    return run.id


def test_every_trial_gets_the_test_set_and_the_board_shows_its_scores(two_owners, db_session):
    client, ids, settings = two_owners
    body = sweep_body(ids["train"], max_jobs=2, max_parallel=2, test_dataset_id=ids["test"])
    r = client.post("/sweeps", json=body, headers=ALICE)
    assert r.status_code == 202, r.text
    sweep = r.json()
    assert sweep["test_dataset_id"] == ids["test"]
    first, second = (t["job_id"] for t in sweep["leaderboard"])
    for job_id in (first, second):
        assert client.get(f"/jobs/{job_id}", headers=ALICE).json()["test_dataset_id"] == ids["test"]
    assert sweep["leaderboard"][0]["test_evaluation"] is None
    assert sweep["leaderboard"][0]["test_accuracy"] is None

    s = db_session
    for job_id, value in ((first, 0.8), (second, 0.9)):
        epoch = run_trial(s, job_id, {20: value})
        assert store.finish_job(s, job_id, "succeeded", epoch=epoch, result={"status": "completed"})
    s.commit()
    advance(s, settings, sweep["id"])
    run_id = finish_evaluation(s, first, {"accuracy": 0.95, "f1_macro": 0.93, "loss": 0.2, "n": 60})
    failed = finish_evaluation(s, second, None, RunStatus.FAILED)

    done = client.get(f"/sweeps/{sweep['id']}", headers=ALICE).json()
    assert done["status"] == "succeeded"
    board = {t["job_id"]: t for t in done["leaderboard"]}
    assert (board[first]["test_accuracy"], board[first]["test_f1_macro"]) == (0.95, 0.93)
    assert board[first]["test_evaluation"] == {
        "id": run_id,
        "url": f"/evaluations/{run_id}",
        "status": "succeeded",
        "summary": {"accuracy": 0.95, "f1_macro": 0.93, "loss": 0.2},
    }
    # A failed evaluation is linked (to see why) but has no scores; the ranking is still the sweep's metric.
    assert board[second]["test_evaluation"]["status"] == "failed"
    assert board[second]["test_evaluation"]["id"] == failed
    assert (board[second]["test_accuracy"], board[second]["test_f1_macro"]) == (None, None)
    assert [t["job_id"] for t in done["leaderboard"]] == [second, first]


def test_a_sweep_without_a_test_set_has_no_test_scores(two_owners):
    client, ids, _ = two_owners
    sweep = client.post("/sweeps", json=sweep_body(ids["train"], max_jobs=1), headers=ALICE).json()
    assert sweep["test_dataset_id"] is None
    trial = sweep["leaderboard"][0]
    assert (trial["test_evaluation"], trial["test_accuracy"], trial["test_f1_macro"]) == (None, None, None)
    assert client.get(f"/jobs/{trial['job_id']}", headers=ALICE).json()["test_dataset_id"] is None


@pytest.mark.parametrize(
    ("which", "config", "status", "fragment"),
    [
        ("bobs", {}, 404, "test dataset {id} not found"),
        ("unknown", {}, 404, "upload the test file with POST /datasets"),
        (
            "nolabel",
            {},
            422,
            "the test set lacks the job's label_column (column 'label' not found; the file has: text, kind)",
        ),
        ("nolabel", {"text_column": "body"}, 422, "lacks the job's text_column (column 'body' not found"),
    ],
)
def test_a_bad_test_set_is_refused_before_anything_is_recorded(
    two_owners, db_session, which, config, status, fragment
):
    client, ids, settings = two_owners
    test_id = ids.get(which, "0" * 32)
    train_id = ids["train"]
    if config.get("text_column") == "body":  # a training file that has the column: only the test set is wrong
        r = client.post(
            "/datasets",
            files={"file": ("b.csv", b"label,body\n" + b"a,x\nb,y\n" * 30, "text/csv")},
            headers=ALICE,
        )
        train_id = r.json()["id"]
    body = sweep_body(train_id, test_dataset_id=test_id)
    body["config"] = {**body["config"], **config}
    r = client.post("/sweeps", json=body, headers=ALICE)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["errors"][0]["loc"] == ["body", "test_dataset_id"]
    assert fragment.format(id=test_id) in problem["detail"]
    db_session.rollback()
    assert db_session.scalar(select(func.count()).select_from(Sweep)) == 0
    assert db_session.scalar(select(func.count()).select_from(Job)) == 0
    assert queued_ids(settings.queue_name) == []


def test_a_watched_jobs_answer_keeps_its_test_evaluation(two_owners, db_session):
    """The stream reader's view of a job is what GET /jobs/{id} answers while the job is watched (the
    answer cache keeps it): it carries the test evaluation as a lookup does, not null."""
    from api.streams import Cursor, read_since
    from tests.api.test_test_sets import SMALL

    client, ids, _ = two_owners
    body = {"dataset_id": ids["train"], "test_dataset_id": ids["test"], "config": SMALL}
    job_id = client.post("/jobs", json=body, headers=ALICE).json()["id"]
    s = db_session
    store.claim_job(s, job_id, "host:1")
    assert store.finish_job(s, job_id, "succeeded", result={"status": "completed"})
    s.commit()
    run_id = finish_evaluation(s, job_id, {"accuracy": 0.9, "f1_macro": 0.8, "n": 10})
    looked_up = client.get(f"/jobs/{job_id}", headers=ALICE).json()["test_evaluation"]
    assert looked_up["id"] == run_id
    found = read_since(s, job_id, Cursor())
    assert found.job.model_dump(mode="json")["test_evaluation"] == looked_up
