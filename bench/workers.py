"""A queue of small jobs drained by 1 worker against 2 workers of 1 thread each (issue 14), one run.

Starts its own stack on loopback only: ``jobformer worker`` subprocesses, a SQLite database in a
temporary directory, Redis 127.0.0.1:6379 (or ``JOBFORMER_BENCH_REDIS_URL``) with a queue name of its
own; the API runs in this process (FastAPI's TestClient, the real app). It uploads the SMS spam file,
then twice submits the same N jobs (a tiny character-level classifier, seeds 0..N-1) at once and waits
for the last to succeed:

    one     1 worker, torch's default threads (all the cores: the reference)
    two     2 workers, OMP_NUM_THREADS=1 each

The workers are started and online (their marks in Redis) before the clock starts; the wall time runs
from the first POST /jobs to the last job's end, so it includes each job's fresh pool child (one per
job) and the hand-over between jobs. Prints both wall times, the ratio one / two, and the load average
before and after (the machine is shared: a ratio is only meaningful within one run). Usage::

    python bench/workers.py [--jobs 8] [--steps 80] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection.tsv"
REDIS_URL = os.environ.get("JOBFORMER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def config(steps: int, seed: int) -> dict[str, Any]:
    return {
        "task": "classification",
        "text_column": 1,
        "label_column": 0,
        "tokenizer": {"kind": "char"},
        "model": {
            "d_model": 32,
            "n_heads": 2,
            "n_layers": 1,
            "dim_feedforward": 64,
            "dropout": 0.0,
            "max_length": 64,
        },
        "training": {
            "max_steps": steps,
            "batch_size": 32,
            "warmup_steps": 5,
            "eval_every": steps,
            "seed": seed,
        },
        "device": "cpu",
    }


def start_workers(env: dict[str, str], n: int, threads: int | None, logs: Path) -> list[subprocess.Popen]:
    worker_env = dict(env)
    if threads is not None:
        worker_env["OMP_NUM_THREADS"] = str(threads)
    else:
        worker_env.pop("OMP_NUM_THREADS", None)
    procs = []
    for i in range(n):
        log = (logs / f"worker-{len(list(logs.glob('worker-*.log')))}-{i}.log").open("ab")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "cli.main", "worker", "--loglevel", "warning"],
                cwd=ROOT,
                env=worker_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_online(queue: str, n: int, procs: list[subprocess.Popen], timeout: float = 180) -> None:
    """Until ``n`` workers have marked themselves online on ``queue`` (their reapers run)."""
    import broker

    client = broker.redis_client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(client.scan_iter(match=f"{broker.WORKER_KEY_PREFIX}:{queue}:*"))) >= n:
            return
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a worker exited before it was online")
        time.sleep(0.2)
    raise SystemExit(f"{n} workers were not online within {timeout:g} s")


def drain(api: Any, dataset_id: str, jobs: int, steps: int, timeout: float) -> dict[str, Any]:
    """Submit ``jobs`` jobs at once and wait for all to end; the wall time and what each did."""
    start = time.perf_counter()
    ids = []
    for seed in range(jobs):
        r = api.post("/jobs", json={"dataset_id": dataset_id, "config": config(steps, seed)})
        if r.status_code not in (201, 202):
            raise SystemExit(f"POST /jobs: {r.status_code} {r.text}")
        ids.append(r.json()["id"])
    pending = set(ids)
    ended: dict[str, dict] = {}
    while pending:
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"{len(pending)} jobs did not end within {timeout:g} s")
        time.sleep(0.25)
        for job_id in list(pending):
            job = api.get(f"/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                ended[job_id] = job
                pending.discard(job_id)
    wall = time.perf_counter() - start
    failed = [j["id"] for j in ended.values() if j["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"jobs did not succeed: {failed}")
    return {"wall_s": round(wall, 2), "jobs": len(ended), "steps_each": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=80, help="Training steps of each job.")
    parser.add_argument("--quick", action="store_true", help="4 jobs of 10 steps: a smoke run.")
    parser.add_argument("--json", action="store_true", help="Also print the results as one JSON line.")
    args = parser.parse_args()
    jobs, steps = (4, 10) if args.quick else (args.jobs, args.steps)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="jobformer-bench-workers-") as tmp:
        queue = f"bench-workers-{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ,
            "JOBFORMER_DATA_DIR": str(Path(tmp) / "data"),
            "JOBFORMER_DATABASE_URL": f"sqlite:///{tmp}/jobformer.db",
            "JOBFORMER_BROKER_URL": REDIS_URL,
            "JOBFORMER_QUEUE_NAME": queue,
            "JOBFORMER_QUEUES": "",
            "JOBFORMER_HEARTBEAT_SECONDS": "1",
            "JOBFORMER_HEARTBEAT_TIMEOUT_SECONDS": "30",
            "JOBFORMER_MAX_ACTIVE_JOBS_PER_KEY": str(max(8, jobs)),
            "JOBFORMER_API_KEYS": "",
        }
        os.environ.update(env)
        from fastapi.testclient import TestClient

        import migrations
        from api.main import create_app
        from core.settings import get_settings

        (Path(tmp) / "data").mkdir()
        migrations.upgrade(env["JOBFORMER_DATABASE_URL"])
        get_settings.cache_clear()
        results: dict[str, Any] = {}
        with TestClient(create_app(get_settings())) as api:
            dataset = api.post("/datasets", files={"file": (DATA.name, DATA.read_bytes())}).json()
            for name, n, threads in (("one", 1, None), ("two", 2, 1)):
                workers = start_workers(env, n, threads, Path(tmp))
                try:
                    wait_online(queue, n, workers)
                    results[name] = {
                        "workers": n,
                        "threads_each": threads or "default",
                        **drain(api, dataset["id"], jobs, steps, timeout=1800.0),
                    }
                finally:
                    stop_workers(workers)
                    broker_cleanup(queue)
    one, two = results["one"], results["two"]
    for name, r in results.items():
        print(
            f"{name}: workers={r['workers']} threads_each={r['threads_each']} jobs={r['jobs']} "
            f"steps_each={r['steps_each']} wall_s={r['wall_s']}"
        )
    ratio = one["wall_s"] / two["wall_s"]
    print(f"ratio wall one/two (2 workers x 1 thread against 1 worker): {ratio:.2f}x")
    load_after = os.getloadavg()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.json:
        print(json.dumps({"runs": results, "ratio_one_over_two": round(ratio, 3), "load_after": load_after}))


def broker_cleanup(queue: str) -> None:
    """The queue's list and online marks gone from Redis (the workers are stopped)."""
    import broker

    client = broker.redis_client()
    client.delete(queue, *client.scan_iter(match=f"{broker.WORKER_KEY_PREFIX}:{queue}:*"))


if __name__ == "__main__":
    main()
