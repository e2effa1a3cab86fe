"""Errors are problem+json and never a stack trace; a database outage is 503 with Retry-After."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from api.main import create_app

DEAD_PG = "postgresql://postgres@127.0.0.1:1/none"  # nothing listens on port 1: connection refused
DEAD_REDIS = "redis://127.0.0.1:1/0"


def test_unexpected_exception_is_a_logged_500_problem_without_traceback(settings, caplog):
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals at /srv/app.py line 3")

    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        r = client.get("/boom")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json() == {
        "type": "https://jobformer.dev/problems/internal-error",
        "title": "Internal server error",
        "status": 500,
        "detail": "internal error; it has been logged",
        "code": "internal_error",
    }
    assert "secret" not in r.text and "Traceback" not in r.text
    logged = [rec for rec in caplog.records if rec.name == "api.errors"]
    assert logged and logged[0].exc_info[1].args == ("secret internals at /srv/app.py line 3",)


def test_database_down_is_503_with_retry_after(make_settings):
    settings = make_settings(database_url=DEAD_PG)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for path in ("/datasets", "/jobs", f"/jobs/{'0' * 32}"):
            r = client.get(path)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["retry-after"] == "5"
            assert r.json()["detail"] == "the database is unavailable; retry shortly"
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"] == {"database": "error: OperationalError", "broker": "ok"}
        assert r.json()["detail"] == "not ready: database unavailable"
        assert client.get("/healthz").status_code == 200


def test_readyz_reports_the_broker(settings, make_settings):
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
    settings = make_settings(broker_url=DEAD_REDIS)
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert r.json()["checks"] == {"database": "ok", "broker": "error: no answer"}


def test_broker_down_keeps_the_job_queued_with_a_warning(make_settings, spam_csv):
    settings = make_settings(broker_url=DEAD_REDIS)
    with TestClient(create_app(settings)) as client:
        d = client.post("/datasets", files={"file": ("s.csv", spam_csv)}).json()
        r = client.post("/jobs", json={"dataset_id": d["id"], "config": {"task": "classification"}})
        assert r.status_code == 202
        job = r.json()
        assert job["status"] == "queued"
        assert (
            job["warnings"][0]
            == "the broker is unreachable: the job is saved and will be sent when it is back"
        )
        kinds = [e["kind"] for e in client.get(f"/jobs/{job['id']}/events").json()["data"]]
        assert kinds == ["queued", "warning"]


def test_unknown_routes_and_methods_are_problems(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["detail"] == "no such endpoint: GET /nope"
    r = client.put("/datasets")
    assert r.status_code == 405 and r.json()["detail"] == "method PUT is not allowed on /datasets"
    assert r.headers["content-type"] == "application/problem+json"
