"""POST /jobs with ``config.resources.processes`` (docs/design.md, "A job on many processes in the
service"): a bad value is a 422 naming the field and the fix; a good one is stored with the job."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

CSV = (
    "label,text\n" + "".join(f"{'spam' if i % 3 == 0 else 'ham'},message {i}\n" for i in range(40))
).encode()


@pytest.fixture
def dataset(client: TestClient) -> dict:
    r = client.post("/datasets", files={"file": ("sms.csv", CSV)})
    assert r.status_code == 201, r.text
    return r.json()


def _config(processes: object) -> dict:
    return {"task": "classification", "training": {"batch_size": 16}, "resources": {"processes": processes}}


@pytest.mark.parametrize(("processes", "needle"), [(0, "greater than or equal to 1"), (3, "15 or 18")])
def test_bad_processes_are_422_at_the_field(
    client: TestClient, dataset: dict, processes: int, needle: str
) -> None:
    r = client.post("/jobs", json={"dataset_id": dataset["id"], "config": _config(processes)})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert [e["loc"] for e in body["errors"]] == [["config", "resources", "processes"]], body
    assert needle in r.text
    assert client.get("/jobs").json()["count"] == 0


def test_processes_are_kept_in_the_job_config(client: TestClient, dataset: dict) -> None:
    r = client.post("/jobs", json={"dataset_id": dataset["id"], "config": _config(2)})
    assert r.status_code in (201, 202), r.text
    job = client.get(f"/jobs/{r.json()['id']}").json()
    assert job["config"]["resources"] == {"processes": 2, "memory_gb": None}


def test_more_processes_than_any_worker_advertises_warns(client: TestClient, settings, dataset: dict) -> None:
    """Workers advertise the processes they can run in their online mark (``broker.register_worker``): a
    queued job asking for more than the most of its queue's online workers says so; one that fits does
    not. (Real Redis; the marks are the test queue's, removed by the fixture.)"""
    import broker

    broker.register_worker("small", 30, settings=settings, offer=broker.Offer(2, 16.0))
    broker.register_worker("large", 30, settings=settings, offer=broker.Offer(4, 16.0))
    assert max(o.processes for o in broker.offers_online(settings.queue_name, settings=settings)) == 4
    fits = client.post("/jobs", json={"dataset_id": dataset["id"], "config": _config(4)}).json()
    too_many = client.post(
        "/jobs", json={"dataset_id": dataset["id"], "config": {**_config(8), "training": {"batch_size": 16}}}
    ).json()
    assert client.get(f"/jobs/{fits['id']}").json()["warnings"] == []
    warnings = client.get(f"/jobs/{too_many['id']}").json()["warnings"]
    assert len(warnings) == 1 and "resources.processes=8" in warnings[0] and "can run is 4" in warnings[0]
    assert f"queue '{settings.queue_name}'" in warnings[0]


def test_more_memory_than_any_worker_offers_warns(client: TestClient, settings, dataset: dict) -> None:
    """Workers advertise their memory too (docs/design.md, "Memory"): a queued job needing more per
    process than any online worker of its queue offers says so, naming its need, the largest offer and
    the fields that lower it; one that fits does not."""
    import broker

    broker.register_worker("cpu", 30, settings=settings, offer=broker.Offer(2, 14.0))
    broker.register_worker("gpu", 30, settings=settings, offer=broker.Offer(1, 40.0, gpu=True))
    post = lambda resources: client.post(  # noqa: E731
        "/jobs",
        json={"dataset_id": dataset["id"], "config": {"task": "classification", "resources": resources}},
    ).json()
    fits_gpu = post({"memory_gb": 30})  # a GPU's own 40 GiB
    fits_cpu = post({"memory_gb": 6, "processes": 2})  # 2 x tier 6 of the CPU worker's 14 GiB
    too_big = post({"memory_gb": 50})
    too_big_shared = post({"memory_gb": 10, "processes": 2})  # 2 x 12 on the CPU, 2 processes > 1 GPU
    for job in (fits_gpu, fits_cpu):
        assert client.get(f"/jobs/{job['id']}").json()["warnings"] == [], job
    [warning] = client.get(f"/jobs/{too_big['id']}").json()["warnings"]
    assert "resources.memory_gb=50 GiB" in warning and "40.0 GiB per GPU" in warning, warning
    assert "training.batch_size" in warning and "JOBFORMER_WORKER_MEMORY_GB" in warning
    [warning] = client.get(f"/jobs/{too_big_shared['id']}").json()["warnings"]
    assert "resources.memory_gb=10 GiB" in warning, warning
