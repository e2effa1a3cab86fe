"""POST/GET /sweeps against a real database (both backends) and a real Redis. No worker runs here: what a
worker writes (claims, validation points, the end) is written through core.db.store, the functions the
worker calls, and the sweep is advanced with store.advance_sweep, the function every worker's reaper
calls each pass (docs/design.md, "Sweeps")."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from core.db import store
from core.db.models import Job, Sweep
from core.ml.callbacks import MetricPoint
from core.settings import Settings
from tests.api.conftest import queued_ids

BASE = {
    "task": "classification",
    "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32},
    "training": {"max_steps": 100, "eval_every": 20},
}
LR = {"distribution": "log_uniform", "min": 1e-4, "max": 3e-3}


@pytest.fixture
def dataset(upload, spam_csv) -> dict:
    return upload(spam_csv, "spam.csv")


def sweep_body(dataset_id: str, **extra) -> dict:
    return {"dataset_id": dataset_id, "config": BASE, "parameters": {"training.learning_rate": LR}, **extra}


def counts(db_session) -> tuple[int, int]:
    db_session.rollback()
    return (
        db_session.scalar(select(func.count()).select_from(Sweep)),
        db_session.scalar(select(func.count()).select_from(Job)),
    )


def test_a_sweep_starts_max_parallel_trials_that_are_ordinary_jobs(client, settings, dataset):
    r = client.post("/sweeps", json=sweep_body(dataset["id"], max_jobs=5, max_parallel=2, seed=3))
    assert r.status_code == 202, r.text
    sweep = r.json()
    assert r.headers["location"] == f"/sweeps/{sweep['id']}"
    assert (sweep["status"], sweep["method"], sweep["max_jobs"], sweep["max_parallel"]) == (
        "running",
        "random",
        5,
        2,
    )
    assert (sweep["metric"], sweep["direction"]) == ("val_f1_macro", "maximize")
    assert sweep["counts"] == {"queued": 2}
    assert [t["number"] for t in sweep["leaderboard"]] == [0, 1]
    assert sweep["best"] is None
    ids = [t["job_id"] for t in sweep["leaderboard"]]
    assert sorted(queued_ids(settings.queue_name)) == sorted(ids)  # committed, then really sent to Redis
    job = client.get(f"/jobs/{ids[0]}").json()
    assert job["sweep_id"] == sweep["id"]
    lr = job["trial"]["params"]["training.learning_rate"]
    assert 1e-4 <= lr <= 3e-3 and job["config"]["training"]["learning_rate"] == lr
    assert job["trial"] == {"number": 0, "params": {"training.learning_rate": lr}, "pruned": None}
    assert client.get("/jobs").json()["count"] == 2
    assert [s["id"] for s in client.get("/sweeps").json()["data"]] == [sweep["id"]]


def test_the_same_seed_draws_the_same_trials(client, dataset):
    def params(seed: int) -> list[dict]:
        sweep = client.post("/sweeps", json=sweep_body(dataset["id"], max_parallel=3, seed=seed)).json()
        return [t["params"] for t in sweep["leaderboard"]]

    first = params(11)
    assert params(11) == first
    assert params(12) != first
    assert len({p["training.learning_rate"] for p in first}) == 3


def test_every_problem_is_a_422_naming_it_before_any_trial(client, dataset, db_session):
    body = sweep_body(dataset["id"], max_parallel=50, early_stopping={"min_steps": 100})
    body["parameters"] = {
        "training.learnig_rate": {"values": [0.001]},
        "model.n_heads": {"values": [2, 3]},
        "model.d_model": {"distribution": "int", "min": 16, "max": 10_000_000},
        "training.batch_size": {"distribution": "uniform", "min": 1, "max": 64},
    }
    body["metric"] = "val_perplexity"
    r = client.post("/sweeps", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["code"] == "invalid_sweep"
    by_loc = {".".join(map(str, e["loc"])): e["msg"] for e in problem["errors"]}
    assert by_loc["parameters.training.learnig_rate"].startswith(
        "unknown config path; did you mean training.learning_rate?"
    )
    assert by_loc["parameters.model.n_heads"].startswith("3 makes an invalid config (model: Value error, ")
    assert "must be divisible by model.n_heads (3)" in by_loc["parameters.model.n_heads"]
    assert "less than or equal to 8192" in by_loc["parameters.model.d_model"]
    assert by_loc["parameters.training.batch_size"].startswith(
        "an integer field: a float range draws fractions"
    )
    assert (
        by_loc["metric"]
        == "a classification job records val_f1_macro, val_accuracy, val_loss: pick one of those"
    )
    assert by_loc["max_parallel"].startswith("at most 8 jobs may be active per key")
    assert by_loc["early_stopping.min_steps"].startswith("must be below training.max_steps (100)")
    assert problem["detail"].startswith(
        "invalid sweep: parameters.training.learnig_rate: unknown config path; did you mean"
    )
    assert counts(db_session) == (0, 0)


@pytest.mark.parametrize(
    ("change", "loc", "msg"),
    [
        (
            {"method": "grid"},
            ["parameters", "training.learning_rate"],
            "a grid needs 'values' or an int range",
        ),
        (
            {"parameters": {"model.n_layers": {"values": [1, 2]}}, "method": "grid", "max_jobs": 3},
            ["max_jobs"],
            "the grid has 2 points: set max_jobs <= 2",
        ),
        (
            {"parameters": {"training.learning_rate": {"min": 1e-3}}},
            ["body", "parameters", "training.learning_rate"],
            "Value error, a range needs both 'min' and 'max' (or give 'values' instead)",
        ),
        ({"method": "bayes"}, ["body", "method"], "Input should be 'grid', 'random' or 'tpe'"),
        (
            {"config": {**BASE, "model": {"d_model": 9}}},
            ["config", "model"],
            "Value error, model.d_model (9) must be divisible",
        ),
    ],
)
def test_bad_requests_name_the_field(client, dataset, db_session, change, loc, msg):
    r = client.post("/sweeps", json={**sweep_body(dataset["id"]), **change})
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert any(e["loc"] == loc and e["msg"].startswith(msg) for e in errors), errors
    assert counts(db_session) == (0, 0)


def test_an_unknown_dataset_is_a_404_and_an_unknown_sweep_too(client, db_session):
    r = client.post("/sweeps", json=sweep_body("0" * 32))
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert client.get("/sweeps/" + "1" * 32).status_code == 404
    assert client.post("/sweeps/" + "1" * 32 + "/cancel").status_code == 404
    assert counts(db_session) == (0, 0)


def test_a_grid_defaults_to_its_size(client, dataset):
    body = sweep_body(dataset["id"], method="grid", max_parallel=8)
    body["parameters"] = {
        "model.n_layers": {"values": [1, 2]},
        "training.batch_size": {"distribution": "int", "min": 8, "max": 10},
    }
    sweep = client.post("/sweeps", json=body).json()
    assert sweep["max_jobs"] == 6
    points = {
        (t["params"]["model.n_layers"], t["params"]["training.batch_size"]) for t in sweep["leaderboard"]
    }
    assert points == {(n, b) for n in (1, 2) for b in (8, 9, 10)}


# --- the search going on: what the workers write, and the reaper's step --------------------------------


def run_trial(s, job_id: str, values: dict[int, float]) -> int:
    """Claim the job as a worker would and record its validation macro-F1 at each step."""
    job = store.claim_job(s, job_id, "host:1")
    points = [MetricPoint(step=k, epoch=0, split="val", name="f1_macro", value=v) for k, v in values.items()]
    store.add_metrics(s, job_id, points, epoch=job.epoch)
    s.commit()
    return job.epoch


def advance(s, settings: Settings, sweep_id: str) -> store.Advance:
    step = store.advance_sweep(s, sweep_id, max_attempts=3, active_limit=settings.max_active_jobs_per_key)
    s.commit()
    return step


def test_asha_prunes_the_trials_behind_and_the_best_leads_the_board(client, settings, dataset, db_session):
    body = sweep_body(
        dataset["id"], max_jobs=4, max_parallel=2, early_stopping={"min_steps": 20, "reduction_factor": 2}
    )
    sweep = client.post("/sweeps", json=body).json()
    first, second = (t["job_id"] for t in sweep["leaderboard"])
    s = db_session
    epoch = run_trial(s, first, {20: 0.80, 40: 0.90})
    run_trial(s, second, {20: 0.50})
    step = advance(s, settings, sweep["id"])
    assert step.pruned == [second] and step.created == []  # both slots still busy: the pruned one stops first
    view = client.get(f"/jobs/{second}").json()
    assert view["status"] == "cancelling"
    assert view["error"]["code"] == "pruned"
    assert view["error"]["message"] == (
        "Pruned by ASHA at rung 0 (step 20): val_f1_macro 0.5 is not in the top 1/2 of the 2 trials that "
        "reached this rung (best 0.8)."
    )
    assert [e["kind"] for e in client.get(f"/jobs/{second}/events").json()["data"]][-2:] == [
        "cancelling",
        "pruned",
    ]
    # The worker sees the cancel, saves a checkpoint and ends the job cancelled; its error still says why.
    assert store.finish_job(s, second, "cancelled", epoch=s.get(Job, second).epoch)
    assert store.finish_job(s, first, "succeeded", epoch=epoch, result={"status": "completed"})
    s.commit()
    assert client.get(f"/jobs/{second}").json()["error"]["code"] == "pruned"
    step = advance(s, settings, sweep["id"])
    assert len(step.created) == 2 and step.pruned == []
    third, fourth = (job_id for job_id, _ in step.created)
    run_trial(s, third, {20: 0.95, 40: 0.97})
    run_trial(s, fourth, {20: 0.60})
    assert advance(s, settings, sweep["id"]).pruned == [fourth]
    for job_id in (third, fourth):
        status = "succeeded" if job_id == third else "cancelled"
        assert store.finish_job(s, job_id, status, epoch=s.get(Job, job_id).epoch)
    s.commit()
    assert advance(s, settings, sweep["id"]).status == "succeeded"
    done = client.get(f"/sweeps/{sweep['id']}").json()
    assert done["status"] == "succeeded" and done["finished_at"] is not None
    assert done["counts"] == {"succeeded": 2, "pruned": 2}
    board = done["leaderboard"]
    assert [(t["job_id"], t["state"], t["metric"]) for t in board] == [
        (third, "succeeded", 0.97),
        (first, "succeeded", 0.9),
        (fourth, "pruned", 0.6),
        (second, "pruned", 0.5),
    ]
    assert done["best"] == board[0] and board[0]["steps"] == 40
    assert advance(s, settings, sweep["id"]).created == []  # an ended sweep starts nothing


def test_a_trial_asks_asha_after_each_evaluation_and_stops_at_its_rung(
    client, settings, dataset, db_session, tmp_path
):
    """The worker's recorder asks ASHA right after it records an evaluation (no reaper pass involved): the
    trial behind is set cancelling and its loop is told to stop at once; the trial ahead goes on.

    Would catch: pruning left to the reapers alone (on a busy machine a short trial ended between two
    passes and was never pruned: the integration sweep saw no pruned trial)."""
    from worker.recorder import StopReason, StoreRecorder

    body = sweep_body(
        dataset["id"], max_jobs=2, max_parallel=2, early_stopping={"min_steps": 20, "reduction_factor": 2}
    )
    sweep = client.post("/sweeps", json=body).json()
    first, second = (t["job_id"] for t in sweep["leaderboard"])
    s = db_session
    run_trial(s, first, {20: 0.80})
    epochs = {first: s.get(Job, first).epoch, second: run_trial(s, second, {})}

    def evaluate(job_id: str, value: float) -> StoreRecorder:
        rec = StoreRecorder(job_id, "host:1", data_dir=tmp_path, epoch=epochs[job_id], sweep_id=sweep["id"])
        rec.on_metrics([MetricPoint(step=20, epoch=0, split="train", name="loss", value=1.0)])
        assert rec.stop_reason() is None  # a training point asks nothing
        rec.on_metrics([MetricPoint(step=20, epoch=0, split="val", name="f1_macro", value=value)])
        return rec

    assert evaluate(second, 0.50).stop_reason() == StopReason.CANCEL
    s.rollback()
    view = client.get(f"/jobs/{second}").json()
    assert view["status"] == "cancelling" and view["error"]["code"] == "pruned"
    ahead = StoreRecorder(first, "host:1", data_dir=tmp_path, epoch=epochs[first], sweep_id=sweep["id"])
    ahead.on_metrics([MetricPoint(step=40, epoch=0, split="val", name="f1_macro", value=0.9)])
    assert ahead.stop_reason() is None
    assert client.get(f"/jobs/{first}").json()["status"] == "running"


def test_a_trial_that_ends_before_its_prune_lands_succeeded(client, settings, dataset, db_session):
    """ASHA asks a trial to stop, but the worker finishes its last step first and records it succeeded:
    the board says succeeded with its whole curve, not pruned (seen in the integration test on a fast
    machine)."""
    body = sweep_body(
        dataset["id"], max_jobs=2, max_parallel=2, early_stopping={"min_steps": 20, "reduction_factor": 2}
    )
    sweep = client.post("/sweeps", json=body).json()
    first, second = (t["job_id"] for t in sweep["leaderboard"])
    s = db_session
    epoch = run_trial(s, first, {20: 0.80})
    late = run_trial(s, second, {20: 0.50, 40: 0.55})
    assert advance(s, settings, sweep["id"]).pruned == [second]
    assert store.finish_job(s, second, "succeeded", epoch=late, result={"status": "completed"})
    assert store.finish_job(s, first, "succeeded", epoch=epoch, result={"status": "completed"})
    s.commit()
    assert advance(s, settings, sweep["id"]).status == "succeeded"
    done = client.get(f"/sweeps/{sweep['id']}").json()
    assert done["counts"] == {"succeeded": 2}
    assert [(t["job_id"], t["state"], t["pruned"]) for t in done["leaderboard"]] == [
        (first, "succeeded", None),
        (second, "succeeded", None),
    ]
    assert client.get(f"/jobs/{second}").json()["error"] is None


def test_the_active_job_limit_counts_trials(make_settings, spam_csv, db_session):
    settings = make_settings(max_active_jobs_per_key="3")
    with TestClient(create_app(settings)) as client:
        dataset = client.post("/datasets", files={"file": ("spam.csv", spam_csv, "text/csv")}).json()
        sweep = client.post("/sweeps", json=sweep_body(dataset["id"], max_jobs=6, max_parallel=3)).json()
        assert sweep["counts"] == {"queued": 3}
        r = client.post("/jobs", json={"dataset_id": dataset["id"], "config": BASE})
        assert (r.status_code, r.json()["code"]) == (429, "too_many_active_jobs")
        r = client.post("/sweeps", json=sweep_body(dataset["id"]))
        assert (r.status_code, r.json()["code"]) == (429, "too_many_active_jobs")
        r = client.post("/sweeps", json=sweep_body(dataset["id"], max_parallel=4))
        assert r.json()["errors"][0]["loc"] == ["max_parallel"]
    assert counts(db_session) == (1, 3)


def test_cancel_stops_the_search_and_its_trials(client, settings, dataset, db_session):
    sweep = client.post("/sweeps", json=sweep_body(dataset["id"], max_jobs=6, max_parallel=2)).json()
    first, second = (t["job_id"] for t in sweep["leaderboard"])
    run_trial(db_session, first, {20: 0.7})
    r = client.post(f"/sweeps/{sweep['id']}/cancel")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["counts"] == {"cancelling": 1, "cancelled": 1}
    assert client.get(f"/jobs/{second}").json()["status"] == "cancelled"
    assert advance(db_session, settings, sweep["id"]).created == []
    assert client.post(f"/sweeps/{sweep['id']}/cancel").status_code == 202  # again: nothing changes
