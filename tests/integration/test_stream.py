"""The live stream with a real worker: a real `jobformer serve` and `jobformer worker` (subprocesses,
PostgreSQL, Redis) train a tiny job while the test follows GET /jobs/{id}/stream until `end`; the points
it received are the job's metric rows, each once (docs/design.md, "Live updates")."""

from __future__ import annotations

import pytest

from cli.stream import job_stream
from tests.integration.procs import Service, tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CSV = "text,label\n" + "".join(
    f"{'good nice' if i % 2 else 'bad grim'} {i},{'pos' if i % 2 else 'neg'}\n" for i in range(800)
)


def test_following_a_training_job_receives_every_metric_row_once(service: Service) -> None:
    api = service.client()
    dataset = api.post("/datasets", files={"file": ("tiny.csv", CSV, "text/csv")}).json()
    config = tiny_config(max_steps=1000, eval_every=200)
    r = api.post("/jobs", json={"dataset_id": dataset["id"], "config": config})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    messages = list(job_stream(api, job_id))
    kinds = [m.event for m in messages]
    assert kinds[0] == "snapshot" and kinds[-1] == "end" and kinds.count("end") == 1
    assert messages[-1].data["status"] == "succeeded", messages[-1].data
    # It was followed live: progress came while the job ran, and points in more than one message.
    assert any(m.event == "progress" and m.data["status"] == "running" for m in messages)
    assert kinds.count("metrics") >= 2

    received = [p for m in messages if m.event == "metrics" for p in m.data["points"]]
    rows = api.get(f"/jobs/{job_id}/metrics").json()["data"]
    key = lambda p: (p["step"], p["split"], p["name"])  # noqa: E731
    assert sorted(received, key=key) == sorted(rows, key=key)
    assert len({key(p) for p in received}) == len(received)  # none twice
    events = [m.data["kind"] for m in messages if m.event == "event"]
    assert events == [e["kind"] for e in api.get(f"/jobs/{job_id}/events").json()["data"]]
    assert events[0] == "queued" and events[-1] == "succeeded"
    # The model learned while we watched: the last training loss is below the first.
    losses = [p["value"] for p in received if p["split"] == "train" and p["name"] == "loss"]
    assert losses[-1] < losses[0]
