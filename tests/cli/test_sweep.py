"""`jobformer sweep`: --param specs, the request it sends and the leaderboard it prints, against a real
API server (uvicorn in a thread, SQLite, the test Redis; no worker: trials stay queued)."""

from __future__ import annotations

import json
import re
import threading
import time

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.main import cli
from cli.sweep import leaderboard, parse_param
from core.db import store
from core.db.models import Job, Sweep
from core.db.session import session_scope

CONFIG = {"task": "classification", "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "training.learning_rate=log:1e-4:3e-3",
            ("training.learning_rate", {"distribution": "log_uniform", "min": 1e-4, "max": 3e-3}),
        ),
        ("model.n_layers=1,2,4", ("model.n_layers", {"values": [1, 2, 4]})),
        (
            "model.dropout=uniform:0:0.3",
            ("model.dropout", {"distribution": "uniform", "min": 0.0, "max": 0.3}),
        ),
        (
            "model.d_model=intlog:16:256",
            ("model.d_model", {"distribution": "int_log_uniform", "min": 16.0, "max": 256.0}),
        ),
        ("tokenizer.kind=char,spacy", ("tokenizer.kind", {"values": ["char", "spacy"]})),
        ("tokenizer.lowercase=true", ("tokenizer.lowercase", {"values": [True]})),
    ],
)
def test_param_specs(text, expected):
    assert parse_param(text) == expected


@pytest.mark.parametrize(
    ("text", "msg"), [("model.n_layers", "write PATH=SPEC"), ("lr=log:a:b", "a range is log:MIN:MAX")]
)
def test_bad_param_specs_say_what_to_write(text, msg):
    with pytest.raises(click.BadParameter, match=msg):
        parse_param(text)


def test_the_leaderboard_table():
    sweep = {
        "id": "s1",
        "status": "running",
        "max_jobs": 4,
        "metric": "val_f1_macro",
        "direction": "maximize",
        "counts": {"succeeded": 1, "pruned": 1},
        "leaderboard": [
            {
                "number": 1,
                "state": "succeeded",
                "metric": 0.91234,
                "steps": 80,
                "params": {"training.learning_rate": 0.002},
            },
            {
                "number": 0,
                "state": "pruned",
                "metric": 0.5,
                "steps": 20,
                "params": {"training.learning_rate": 1e-05},
            },
        ],
    }
    assert leaderboard(sweep).splitlines() == [
        "sweep s1: running, 2/4 trials (pruned 1, succeeded 1); val_f1_macro (maximize)",
        "  rank trial  state      val_f1_macro  steps  params",
        "     1     1  succeeded        0.9123     80  training.learning_rate=0.002",
        "     2     0  pruned              0.5     20  training.learning_rate=1e-05",
    ]


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_sweep_uploads_and_starts_the_search(server, data_file):
    r = run(
        "sweep", str(data_file), "--config", json.dumps(CONFIG), "--url", server,
        "--param", "training.learning_rate=log:1e-4:3e-3", "--param", "model.n_layers=1,2",
        "--max-jobs", "5", "--max-parallel", "2", "--seed", "4", "--asha", "20:3",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    sweep_id = r.stdout.strip()
    with session_scope() as s:
        sweep = s.get(Sweep, sweep_id)
        assert (sweep.max_jobs, sweep.max_parallel, sweep.seed, sweep.method) == (5, 2, 4, "random")
        assert sweep.early_stopping == {"type": "asha", "min_steps": 20, "reduction_factor": 3}
        assert sweep.parameters == {
            "training.learning_rate": {"distribution": "log_uniform", "min": 1e-4, "max": 3e-3},
            "model.n_layers": {"values": [1, 2]},
        }
        trials = s.scalars(
            select(Job.trial_params).where(Job.sweep_id == sweep_id).order_by(Job.trial_number)
        ).all()
    assert len(trials) == 2 and {t["model.n_layers"] for t in trials} <= {1, 2}


def test_a_bad_param_is_named_before_anything_starts(server, data_file):
    r = run(
        "sweep", str(data_file), "--config", json.dumps(CONFIG), "--url", server,
        "--param", "training.lr=log:1e-4:3e-3",
    )  # fmt: skip
    assert r.exit_code == 2
    assert "  parameters.training.lr: unknown config path; training has: batch_size, " in r.output
    assert ", learning_rate, " in r.output
    with session_scope() as s:
        assert s.scalars(select(Sweep.id)).all() == []


def test_follow_prints_the_board_until_the_sweep_ends(server, data_file):
    def cancel_when_it_exists() -> None:
        for _ in range(200):
            with session_scope() as s:
                ids = s.scalars(select(Sweep.id)).all()
                if ids:
                    store.cancel_sweep(s, ids[0])
                    return
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_when_it_exists)
    canceller.start()
    r = run(
        "sweep", str(data_file), "--config", json.dumps(CONFIG), "--url", server,
        "--param", "model.n_layers=1,2", "--method", "grid", "--follow", "--interval", "0.2",
    )  # fmt: skip
    canceller.join()
    assert r.exit_code == 1, r.output
    boards = [line for line in r.stdout.splitlines() if line.startswith("sweep ")]
    # The first board: the sweep running with its two trials, queued, or cancelled already when the
    # canceller was faster than the first poll.
    assert re.search(r"running, 2/2 trials \((queued|cancelled) 2\); val_f1_macro \(maximize\)$", boards[0])
    assert boards[-1].endswith("cancelled, 2/2 trials (cancelled 2); val_f1_macro (maximize)")
