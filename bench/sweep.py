"""Sweeps across the worker pool (issue 11): what two workers and ASHA buy, measured side by side in one run.

Starts its own stack on loopback only: two ``jobformer worker`` subprocesses (each with one torch thread,
so two trials use the two cores), a SQLite database in a temporary directory, Redis 127.0.0.1:6379 (or
``JOBFORMER_BENCH_REDIS_URL``) with a queue name of its own; the API runs in this process (FastAPI's
TestClient, the real app). It uploads the SMS spam file and runs the same 12-trial grid (learning rate x
MLP width over a tiny character-level classifier) three times:

    parallel     max_parallel 2 on the two workers
    sequential   max_parallel 1: the same trials one after another (the reference)
    asha         max_parallel 2 with ASHA early stopping (min_steps 20, reduction factor 3)

and prints the wall time of each (from POST /sweeps to the sweep's end, which includes the reapers'
latency in starting the next trial), the ratio sequential / parallel, the training steps each used and
the steps ASHA saved against the full grid, and the best val_f1_macro each found (ASHA's best against the
full grid's). Usage::

    python bench/sweep.py [--steps 120] [--quick] [--json]
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


def base_config(steps: int) -> dict[str, Any]:
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
        "training": {"max_steps": steps, "batch_size": 32, "warmup_steps": 5, "eval_every": 20, "seed": 0},
        "device": "cpu",
    }


def grid(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "training.learning_rate": {"values": [1e-4, 3e-3]},
            "model.dim_feedforward": {"values": [32, 64]},
        }
    return {
        "training.learning_rate": {"values": [1e-4, 3e-4, 1e-3, 3e-3]},
        "model.dim_feedforward": {"values": [32, 64, 128]},
    }


def start_workers(env: dict[str, str], n: int, logs: Path) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        log = (logs / f"worker-{i}.log").open("ab")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "cli.main", "worker", "--loglevel", "warning"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


def run_sweep(api: Any, dataset_id: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """POST the sweep and wait for its end; the sweep with its wall time and steps."""
    start = time.perf_counter()
    sweep = api.post("/sweeps", json={"dataset_id": dataset_id, **body}).json()
    assert "id" in sweep, sweep
    while sweep["status"] == "running":
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"sweep {sweep['id']} did not end within {timeout:g} s")
        time.sleep(0.25)
        sweep = api.get(f"/sweeps/{sweep['id']}").json()
    wall = time.perf_counter() - start
    board = sweep["leaderboard"]
    return {
        "status": sweep["status"],
        "wall_s": round(wall, 2),
        "trials": len(board),
        "steps": sum(t["steps"] for t in board),
        "pruned": sum(t["state"] == "pruned" for t in board),
        "best": sweep["best"]["metric"] if sweep["best"] else None,
        "best_params": sweep["best"]["params"] if sweep["best"] else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="Training steps of a full trial.")
    parser.add_argument("--quick", action="store_true", help="4 trials of 60 steps: a smoke run.")
    parser.add_argument("--json", action="store_true", help="Also print the results as one JSON line.")
    args = parser.parse_args()
    steps = 60 if args.quick else args.steps
    with tempfile.TemporaryDirectory(prefix="jobformer-bench-sweep-") as tmp:
        env = {
            **os.environ,
            "JOBFORMER_DATA_DIR": str(Path(tmp) / "data"),
            "JOBFORMER_DATABASE_URL": f"sqlite:///{tmp}/jobformer.db",
            "JOBFORMER_BROKER_URL": REDIS_URL,
            "JOBFORMER_QUEUE_NAME": f"bench-sweep-{uuid.uuid4().hex[:8]}",
            "JOBFORMER_HEARTBEAT_SECONDS": "0.5",
            "JOBFORMER_HEARTBEAT_TIMEOUT_SECONDS": "4",  # the reapers (and so the sweeps) step every 1 s
            "JOBFORMER_API_KEYS": "",
            "OMP_NUM_THREADS": "1",
        }
        os.environ.update(env)
        from fastapi.testclient import TestClient

        import migrations
        from api.main import create_app
        from core.settings import get_settings

        (Path(tmp) / "data").mkdir()
        migrations.upgrade(env["JOBFORMER_DATABASE_URL"])
        get_settings.cache_clear()
        workers = start_workers(env, 2, Path(tmp))
        results: dict[str, Any] = {}
        try:
            with TestClient(create_app(get_settings())) as api:
                dataset = api.post("/datasets", files={"file": (DATA.name, DATA.read_bytes())}).json()
                body = {"config": base_config(steps), "parameters": grid(args.quick), "method": "grid"}
                asha = {"type": "asha", "min_steps": 20, "reduction_factor": 3}
                timeout = 1800.0
                results["parallel"] = run_sweep(api, dataset["id"], {**body, "max_parallel": 2}, timeout)
                results["sequential"] = run_sweep(api, dataset["id"], {**body, "max_parallel": 1}, timeout)
                results["asha"] = run_sweep(
                    api, dataset["id"], {**body, "max_parallel": 2, "early_stopping": asha}, timeout
                )
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                try:
                    w.wait(60)
                except subprocess.TimeoutExpired:
                    w.kill()
    for name, r in results.items():
        print(
            f"{name}: wall_s={r['wall_s']} trials={r['trials']} steps={r['steps']} pruned={r['pruned']} "
            f"best_val_f1_macro={r['best']:.4f} best={r['best_params']}"
        )
    par, seq, asha_r = results["parallel"], results["sequential"], results["asha"]
    print(f"ratio wall sequential/parallel (2 workers): {seq['wall_s'] / par['wall_s']:.2f}x")
    print(
        f"asha steps: {asha_r['steps']} of the full grid's {par['steps']} ({1 - asha_r['steps'] / par['steps']:.0%} "
        f"saved), wall {asha_r['wall_s'] / par['wall_s']:.2f}x of the full grid's; best val_f1_macro "
        f"{asha_r['best']:.4f} vs {par['best']:.4f}"
    )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
