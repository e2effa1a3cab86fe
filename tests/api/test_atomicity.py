"""Check-then-write races of the API, on PostgreSQL and SQLite: the per-key job limit under concurrent
POSTs, DELETE /datasets against a job or an identical upload, and a checkpoint pruned during its download.

The lock tests hold one transaction open at the point that matters and show that the racing one waits for
it (``is_alive`` after a pause: it is still blocked) and then sees its result.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.archives import CheckpointGone, open_checkpoint, stream_tar_gz
from api.datasets_store import commit_removing_file, store_dataset
from api.uploads import StoredUpload
from core.db import store
from core.db.models import Dataset, Job
from core.ml.callbacks import CheckpointInfo
from core.ml.data import inspect_file

SMALL = {"task": "classification", "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32}}
BLOCKED = 0.5  # seconds a racing thread is given to get past a lock it should wait on


def _together(*fns: Callable[[], Any]) -> list[Any]:
    """Call each of ``fns`` in a thread of its own, all released at once; the results (or the exception
    raised) in the same order."""
    barrier = threading.Barrier(len(fns))
    results: list[Any] = [None] * len(fns)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fns[i]()
        except BaseException as e:  # noqa: BLE001 - reported by the assertion that reads it
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _start(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """``fn()`` in a thread; ``out`` gets its "value" or its "error"."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


# --------------------------------------------------------------------------------- the per-key job limit


def test_concurrent_posts_never_pass_the_active_job_limit(make_settings, upload, spam_csv, db_session):
    from fastapi.testclient import TestClient

    from api.main import create_app

    settings = make_settings(max_active_jobs_per_key=3)
    with TestClient(create_app(settings)) as client:
        d = client.post("/datasets", files={"file": ("spam.csv", spam_csv, "text/csv")}).json()
        post = lambda: client.post("/jobs", json={"dataset_id": d["id"], "config": SMALL})  # noqa: E731
        responses = _together(*[post] * 10)
    codes = Counter(r.status_code for r in responses)
    assert codes == {202: 3, 429: 7}, [r.text for r in responses if r.status_code not in (202, 429)]
    assert db_session.scalar(select(func.count()).select_from(Job)) == 3


def test_the_limit_holds_in_the_store_under_concurrent_transactions(db_sessionmaker: sessionmaker[Session]):
    with db_sessionmaker() as s:
        dataset_id = store.create_dataset(s, **_dataset_row("a" * 64)).id
        s.commit()

    def create() -> str:
        with db_sessionmaker() as s:
            job = store.create_job(
                s, dataset_id=dataset_id, config={}, owner="k1", max_attempts=1, queue="q", active_limit=2
            )
            s.commit()
            return job.id

    results = _together(*[create] * 8)
    refused = [r for r in results if isinstance(r, store.ActiveJobLimit)]
    assert len(refused) == 6 and {(e.active, e.limit) for e in refused} == {(2, 2)}
    with db_sessionmaker() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.owner == "k1")) == 2


# ---------------------------------------------------------------------------------------- DELETE races


def test_a_job_waits_for_a_dataset_deletion_and_then_sees_it_gone(
    client, settings, upload, spam_csv, db_sessionmaker
):
    d = upload(spam_csv)
    with db_sessionmaker() as deleter, db_sessionmaker() as creator:
        unused = store.delete_dataset(deleter, d["id"])  # holds the dataset's lock, not committed
        assert unused is not None
        racing, out = _start(lambda: store.lock_dataset(creator, d["id"]))
        racing.join(BLOCKED)
        assert racing.is_alive(), f"POST /jobs did not wait for the deletion: {out}"
        commit_removing_file(deleter, settings, unused)
        racing.join()
        assert out == {"value": None}
    assert not (settings.data_dir / unused).exists()
    r = client.post("/jobs", json={"dataset_id": d["id"], "config": SMALL})
    assert r.status_code == 422 and r.json()["code"] == "dataset_not_found"


def test_a_deletion_waits_for_a_job_and_then_refuses(client, settings, upload, spam_csv, db_sessionmaker):
    d = upload(spam_csv)
    with db_sessionmaker() as creator, db_sessionmaker() as deleter:
        assert store.lock_dataset(creator, d["id"]) is not None
        job = store.create_job(creator, dataset_id=d["id"], config={}, owner=None, max_attempts=1)
        racing, out = _start(lambda: store.delete_dataset(deleter, d["id"]))
        racing.join(BLOCKED)
        assert racing.is_alive(), f"DELETE did not wait for the job's transaction: {out}"
        creator.commit()
        racing.join()
        assert isinstance(out.get("error"), store.DatasetInUse) and out["error"].job_ids == [job.id]
    assert client.get(f"/datasets/{d['id']}").status_code == 200
    assert (settings.data_dir / f"datasets/{d['sha256'][:2]}/{d['sha256']}").exists()


def test_an_identical_upload_during_a_deletion_keeps_its_file(
    client, settings, upload, spam_csv, db_sessionmaker, tmp_path
):
    d = upload(spam_csv)
    rel = f"datasets/{d['sha256'][:2]}/{d['sha256']}"
    again = tmp_path / "again.csv"
    again.write_bytes(spam_csv)
    received = StoredUpload(again, "again.csv", len(spam_csv), hashlib.sha256(spam_csv).hexdigest())
    info = inspect_file(again)

    def upload_again() -> str:
        dataset = store_dataset(uploader, settings, received, info, None)
        uploader.commit()
        return dataset.id

    with db_sessionmaker() as deleter, db_sessionmaker() as uploader:
        assert store.delete_dataset(deleter, d["id"]) == rel  # the last row with this content
        racing, out = _start(upload_again)
        racing.join(BLOCKED)
        assert racing.is_alive(), f"the upload did not wait for the deletion: {out}"
        commit_removing_file(deleter, settings, rel)
        racing.join()
        assert "value" in out, out
    assert (settings.data_dir / rel).read_bytes() == spam_csv  # the new row's file is there
    assert client.get(f"/datasets/{out['value']}").status_code == 200
    assert client.get(f"/datasets/{d['id']}").status_code == 404


def test_delete_and_post_jobs_racing_through_the_api_agree(client, settings, upload, db_session):
    # Whichever comes first wins; never both (a job on a deleted dataset), never a 500.
    for i in range(6):
        body = b"label,text\n" + b"".join(
            f"{'spam' if k % 3 == 0 else 'ham'},text {i} {k}\n".encode() for k in range(60)
        )
        dataset_id = upload(body)["id"]
        deleted, created = _together(
            partial(client.delete, f"/datasets/{dataset_id}"),
            partial(client.post, "/jobs", json={"dataset_id": dataset_id, "config": SMALL}),
        )
        outcome = (deleted.status_code, created.status_code)
        assert outcome in {(204, 422), (409, 202)}, (deleted.text, created.text)
        if created.status_code == 202:
            assert (settings.data_dir / db_session.get(Dataset, dataset_id).path).exists()


# ------------------------------------------------------------------------------ checkpoint downloads


def _checkpoint(directory: Path, model_bytes: int) -> int:
    directory.mkdir(parents=True)
    (directory / "meta.json").write_text('{"step": 10}')
    (directory / "model.safetensors").write_bytes(os.urandom(model_bytes))
    (directory / "vocab.json").write_text('{"tokens": ["a", "b"]}')
    return sum(p.stat().st_size for p in directory.iterdir())


def test_a_download_that_started_is_whole_though_the_checkpoint_is_pruned(tmp_path):
    directory = tmp_path / "step-00000010"
    size = _checkpoint(directory, 6 * 1024 * 1024)  # far more than the stream buffers: still being read
    expected = {p.name: p.read_bytes() for p in directory.iterdir()}
    chunks = stream_tar_gz(open_checkpoint(directory, size), "step-00000010", chunk_size=64 * 1024)
    body = next(chunks)
    shutil.rmtree(directory)  # the worker prunes it now
    body += b"".join(chunks)
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        got = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}
    assert got == expected


def test_a_checkpoint_pruned_before_its_files_are_open_is_refused(tmp_path):
    directory = tmp_path / "step-00000010"
    size = _checkpoint(directory, 1000)
    (directory / "vocab.json").unlink()  # pruning has begun: one file gone
    with pytest.raises(CheckpointGone):
        open_checkpoint(directory, size)
    shutil.rmtree(directory)
    with pytest.raises(CheckpointGone):
        open_checkpoint(directory, size)


def test_download_of_a_half_pruned_checkpoint_is_a_404_not_a_short_200(
    client, settings, upload, spam_csv, db_session
):
    d = upload(spam_csv)
    job_id = client.post("/jobs", json={"dataset_id": d["id"], "config": SMALL}).json()["id"]
    rel = f"jobs/{job_id}/checkpoints/step-00000010"
    size = _checkpoint(settings.data_dir / rel, 1000)
    store.claim_job(db_session, job_id, "test:1")
    info = CheckpointInfo(
        name="step-00000010",
        path=rel,
        step=10,
        epoch=0,
        metrics={"val_loss": 0.5},
        size_bytes=size,
        is_best=True,
    )
    store.add_checkpoint(db_session, job_id, info, rel, metric="val_loss")
    db_session.commit()
    assert client.get(f"/jobs/{job_id}/checkpoints/step-00000010").status_code == 200
    (settings.data_dir / rel / "model.safetensors").unlink()
    r = client.get(f"/jobs/{job_id}/checkpoints/step-00000010")
    assert r.status_code == 404
    assert r.json()["code"] == "checkpoint_missing"


def _dataset_row(sha: str) -> dict:
    return {
        "owner": None,
        "filename": "x.csv",
        "size_bytes": 1,
        "sha256": sha,
        "path": f"datasets/{sha[:2]}/{sha}",
        "format": {},
        "rows": 1,
        "columns": [],
        "preview": [],
    }
