"""`jobformer sweep DATA --config BASE --param PATH=SPEC ...`: a hyperparameter search through the REST API
(POST /sweeps; docs/design.md, "Sweeps"), and with --follow its leaderboard as it fills.

A ``--param`` is ``PATH=SPEC``, PATH a config path (``training.learning_rate``), SPEC one of:

    1,2,4               these values (JSON numbers, true/false/null, else strings)
    log:1e-4:3e-3       a log-uniform range          uniform:0:0.3     a uniform range
    int:1:6             integers, uniform            intlog:16:256     integers, log-uniform
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.client import ApiError, _load_config, call, json_option, key_option, make_client, url_option

RANGES = {"log": "log_uniform", "uniform": "uniform", "int": "int", "intlog": "int_log_uniform"}
DATASET_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ACTIVE = ("queued", "running", "cancelling")


def parse_param(text: str) -> tuple[str, dict[str, Any]]:
    """``PATH=SPEC`` as (path, the spec POST /sweeps takes); BadParameter naming what to write instead."""
    path, sep, spec = text.partition("=")
    if not sep or not path.strip() or not spec.strip():
        raise click.BadParameter(
            f"{text!r}: write PATH=SPEC, e.g. model.n_layers=1,2,4", param_hint="--param"
        )
    kind, _, rest = spec.partition(":")
    if kind in RANGES:
        low, sep, high = rest.partition(":")
        try:
            bounds = float(low), float(high)
        except ValueError:
            raise click.BadParameter(
                f"{text!r}: a range is {kind}:MIN:MAX, e.g. {path}={kind}:1:4", param_hint="--param"
            ) from None
        return path.strip(), {"distribution": RANGES[kind], "min": bounds[0], "max": bounds[1]}
    return path.strip(), {"values": [_value(v.strip()) for v in spec.split(",")]}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def leaderboard(sweep: dict) -> str:
    """The sweep's state and its leaderboard as a table, best first."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(sweep["counts"].items()))
    trials = len(sweep["leaderboard"])
    lines = [
        f"sweep {sweep['id']}: {sweep['status']}, {trials}/{sweep['max_jobs']} trials ({counts or 'none yet'}); "
        f"{sweep['metric']} ({sweep['direction']})"
    ]
    if sweep.get("error"):
        lines.append(f"  error [{sweep['error']['code']}]: {sweep['error']['message']}")
    lines.append(f"  {'rank':>4} {'trial':>5}  {'state':<10} {sweep['metric']:>12} {'steps':>6}  params")
    for rank, t in enumerate(sweep["leaderboard"], 1):
        metric = _fmt(t["metric"]) if t["metric"] is not None else "-"
        params = " ".join(f"{k}={_fmt(v)}" for k, v in t["params"].items())
        lines.append(f"  {rank:>4} {t['number']:>5}  {t['state']:<10} {metric:>12} {t['steps']:>6}  {params}")
    return "\n".join(lines)


def _board_key(sweep: dict) -> Any:
    return sweep["status"], [
        (t["number"], t["state"], t["metric"], t["steps"] // 10) for t in sweep["leaderboard"]
    ]


@click.command("sweep")
@click.argument("data")
@click.option(
    "--config", "-c", "config", required=True, help="The base config: JSON/YAML file, or inline JSON."
)
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    required=True,
    help="PATH=SPEC, repeated; SPEC: 1,2,4 or log:MIN:MAX, uniform:MIN:MAX, int:MIN:MAX, intlog:MIN:MAX.",
)
@click.option("--method", type=click.Choice(["grid", "random", "tpe"]), default="random", show_default=True)
@click.option(
    "--max-jobs", type=click.IntRange(1), default=None, help="Trials in all (default 10; grid: its size)."
)
@click.option("--max-parallel", type=click.IntRange(1), default=2, show_default=True, help="Trials at once.")
@click.option(
    "--metric", default=None, help="Rank by (default val_f1_macro, or val_loss for a language model)."
)
@click.option("--direction", type=click.Choice(["maximize", "minimize"]), default=None)
@click.option(
    "--seed", type=click.IntRange(0), default=0, show_default=True, help="The same seed, the same trials."
)
@click.option("--asha", default=None, metavar="MIN_STEPS[:FACTOR]", help="Early stopping, e.g. 50:3.")
@click.option("--queue", default=None, help="The trials' worker queue.")
@click.option("--follow", "-f", is_flag=True, help="Print the leaderboard as it fills, until the sweep ends.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between looks with --follow.")
@url_option
@key_option
@json_option
def sweep_command(
    data: str,
    config: str,
    params: tuple[str, ...],
    method: str,
    max_jobs: int | None,
    max_parallel: int,
    metric: str | None,
    direction: str | None,
    seed: int,
    asha: str | None,
    queue: str | None,
    follow: bool,
    interval: float,
    url: str,
    api_key: str | None,
    as_json: bool,
) -> None:
    """Search the config PATHs given by --param on DATA (a file to upload, or a dataset id) from the base
    config: each trial is a job on the workers. Prints the sweep id; with --follow the leaderboard until
    the sweep ends (exit status 0 when it succeeded, 1 otherwise)."""
    body: dict[str, Any] = {
        "config": _load_config(config),
        "parameters": dict(parse_param(p) for p in params),
        "method": method,
        "max_parallel": max_parallel,
        "seed": seed,
    }
    optional = {"max_jobs": max_jobs, "metric": metric, "direction": direction, "queue": queue}
    body.update({k: v for k, v in optional.items() if v is not None})
    if asha:
        body["early_stopping"] = _asha(asha)
    with make_client(url, api_key, timeout=600.0) as client:
        body["dataset_id"] = _dataset_id(client, data)
        sweep = call(client, "POST", "/sweeps", json=body)
        if not follow:
            click.echo(json.dumps(sweep) if as_json else sweep["id"])
            return
        click.echo(leaderboard(sweep))
        try:
            sweep = _follow(client, sweep, interval)
        except KeyboardInterrupt:
            click.echo(
                f"\nstopped following; the sweep goes on (POST /sweeps/{sweep['id']}/cancel)", err=True
            )
            sys.exit(130)
        if as_json:
            click.echo(json.dumps(sweep))
        sys.exit(0 if sweep["status"] == "succeeded" else 1)


def _asha(text: str) -> dict[str, Any]:
    steps, _, factor = text.partition(":")
    try:
        return {"type": "asha", "min_steps": int(steps), "reduction_factor": int(factor or 3)}
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: write MIN_STEPS or MIN_STEPS:FACTOR, e.g. 50:3", param_hint="--asha"
        ) from None


def _dataset_id(client: Any, data: str) -> str:
    """DATA's dataset id: a file is uploaded first (POST /datasets)."""
    path = Path(data)
    if path.is_file():
        with path.open("rb") as f:
            return call(client, "POST", "/datasets", files={"file": (path.name, f, "text/csv")})["id"]
    if DATASET_ID.match(data):
        return data
    raise ApiError(f"{data!r} is neither a file nor a dataset id")


def _follow(client: Any, sweep: dict, interval: float) -> dict:
    """Look at the sweep every ``interval`` seconds, printing the leaderboard when it changed; the ended
    sweep."""
    shown = _board_key(sweep)
    while sweep["status"] == "running":
        time.sleep(interval)
        sweep = call(client, "GET", f"/sweeps/{sweep['id']}")
        if _board_key(sweep) != shown:
            shown = _board_key(sweep)
            click.echo(leaderboard(sweep))
    return sweep


COMMANDS = [sweep_command]
