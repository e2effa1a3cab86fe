"""`jobformer submit / status / logs / cancel`, and prediction by job id: a client of the REST API (httpx).

Every command takes ``--url`` (env ``JOBFORMER_URL``, default http://127.0.0.1:8000) and ``--api-key``
(env ``JOBFORMER_API_KEY``). Problems the server answers (problem+json) print as one line plus one line
per field error, exit status 2; an unreachable server says how to start one.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import httpx

from cli.stream import Message, job_stream

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
EXIT_API_ERROR = 2


class ApiError(click.ClickException):
    exit_code = EXIT_API_ERROR


def make_client(url: str | None = None, api_key: str | None = None, timeout: float = 60.0) -> httpx.Client:
    """An httpx client for the API at ``url`` with the Bearer key, if any."""
    url = url or os.environ.get("JOBFORMER_URL") or DEFAULT_URL
    api_key = api_key if api_key is not None else os.environ.get("JOBFORMER_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """One request; the JSON answer, or ApiError with the problem's detail and field errors."""
    try:
        r = client.request(method, path, **kwargs)
    except httpx.TransportError as e:
        raise ApiError(
            f"cannot reach the API at {client.base_url} ({e.__class__.__name__}); start it with `jobformer up` "
            "or point --url / JOBFORMER_URL at it"
        ) from None
    if r.status_code >= 400:
        raise ApiError(_describe_problem(r))
    return r.json() if r.content else None


def _describe_problem(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:500]}"
    if not isinstance(body, dict):
        return f"HTTP {r.status_code}: {body}"
    lines = [f"HTTP {r.status_code}: {body.get('detail') or body.get('title') or body}"]
    for err in body.get("errors") or []:
        loc = ".".join(str(p) for p in err.get("loc", []))
        lines.append(f"  {loc}: {err.get('msg')}")
    if r.headers.get("retry-after"):
        lines.append(f"  retry after {r.headers['retry-after']} s")
    return "\n".join(lines)


def _load_config(config: str) -> dict:
    """A config from a JSON/YAML file or inline JSON, as a dict (the server validates it)."""
    path = Path(config)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = _json(text, str(path))
    elif config.lstrip().startswith("{"):
        data = _json(config, "--config")
    else:
        raise click.BadParameter(f"{config!r} is neither a file nor inline JSON", param_hint="--config")
    if not isinstance(data, dict):
        raise click.BadParameter("the config must be a JSON object", param_hint="--config")
    return data


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"{where}: not valid JSON: {e}", param_hint="--config") from None


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summarize(job: dict) -> str:
    """A few human lines about a job."""
    lines = [f"job {job['id']}: {job['status']} (attempt {job['attempts']}/{job['max_attempts']})"]
    p = job.get("progress")
    if p:
        eta = f", eta {p['eta_seconds']:.0f}s" if p.get("eta_seconds") is not None else ""
        lines.append(
            f"  step {p['step']}/{p['total_steps']} ({p['percent']:.1f}%), "
            f"epoch {p['epoch']}/{p['total_epochs']}{eta}"
        )
    if job.get("metrics"):
        lines.append("  " + "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(job["metrics"].items())))
    if job.get("best"):
        b = job["best"]
        lines.append(f"  best: {b['metric']}={_fmt(b['value'])} at step {b['step']} ({b.get('checkpoint')})")
    if job.get("error"):
        lines.append(f"  error [{job['error']['code']}]: {job['error']['message']}")
    if job.get("queue"):
        lines.append(f"  queue position {job['queue']['position']}")
    for w in job.get("warnings") or []:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def stream(client: httpx.Client, job_id: str) -> Iterator[Message]:
    """The job's live stream until ``end`` (cli/stream.py), with the API's problems as ApiError."""
    try:
        yield from job_stream(client, job_id)
    except httpx.HTTPStatusError as e:
        raise ApiError(_describe_problem(e.response)) from None
    except httpx.TransportError as e:
        raise ApiError(
            f"lost the API at {client.base_url} ({e.__class__.__name__}) and could not reconnect; "
            f"see the job with `jobformer status {job_id}`"
        ) from None


def follow(client: httpx.Client, job_id: str) -> dict:
    """Follow the job's stream until it ends, drawing a tqdm bar with the loss and writing its events
    as they come; the last job."""
    from tqdm import tqdm

    bar = tqdm(total=None, unit="step", file=sys.stderr, dynamic_ncols=True, desc=job_id[:8])
    warned: set[str] = set()
    job: dict = {}
    try:
        for m in stream(client, job_id):
            if m.event == "event":
                bar.write(f"{m.data['time'][11:19]} {m.data['kind']}: {m.data['message']}", file=sys.stderr)
            elif m.event in ("snapshot", "progress", "end") and m.data:
                job = {**job, **m.data}
                for w in m.data.get("warnings") or []:
                    if w not in warned:
                        warned.add(w)
                        bar.write(f"warning: {w}", file=sys.stderr)
                _draw(bar, job)
        return job
    finally:
        bar.close()


def _draw(bar: Any, job: dict) -> None:
    """The bar at the job's step, with its status and losses."""
    postfix = {"status": job["status"]}
    p = job.get("progress")
    if p:
        if bar.total != p["total_steps"]:
            bar.total = p["total_steps"]
        bar.n = p["step"]
        metrics = job.get("metrics") or {}
        loss = p.get("train_loss", metrics.get("train_loss"))
        if loss is not None:
            postfix["loss"] = f"{loss:.4f}"
        if metrics.get("val_loss") is not None:
            postfix["val_loss"] = f"{metrics['val_loss']:.4f}"
    bar.set_postfix(postfix, refresh=False)
    bar.refresh()


def _event_line(e: dict) -> str:
    return f"{e['time']}  {e['kind']:<12} {e['message']}"


def _points_lines(points: list[dict]) -> list[str]:
    return [
        f"{p['time']}  {'metric':<12} step {p['step']} {p['split']}_{p['name']}={_fmt(p['value'])}"
        for p in points
    ]


def _exit_for(job: dict) -> None:
    if job["status"] != "succeeded":
        sys.exit(1)


# --- commands -----------------------------------------------------------------------------------------

url_option = click.option(
    "--url",
    envvar="JOBFORMER_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="The API (env JOBFORMER_URL).",
)
key_option = click.option(
    "--api-key", envvar="JOBFORMER_API_KEY", default=None, help="Bearer key (env JOBFORMER_API_KEY)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the JSON answer.")


@click.command("submit")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--config", "-c", "config", required=True, help="JSON/YAML config file, or inline JSON.")
@click.option(
    "--follow", "-f", "follow_job", is_flag=True, help="Show a live progress bar until the job ends."
)
# Kept so scripts that pass it still run: --follow reads the live stream and no longer polls.
@click.option("--interval", default=1.0, hidden=True, help="Ignored (--follow no longer polls).")
@url_option
@key_option
@json_option
def submit_command(
    data: Path, config: str, follow_job: bool, interval: float, url: str, api_key: str | None, as_json: bool
) -> None:
    """Upload DATA (CSV/TSV/text) and start a training job with the config CFG.

    Prints the job id. With --follow, a progress bar with the loss runs until the job ends; the exit status
    is then 0 when it succeeded, 1 otherwise.
    """
    cfg = _load_config(config)
    with make_client(url, api_key, timeout=600.0) as client, data.open("rb") as f:
        job = call(
            client,
            "POST",
            "/jobs",
            files={"file": (data.name, f, "text/csv")},
            data={"config": json.dumps(cfg)},
        )
        if as_json and not follow_job:
            click.echo(json.dumps(job))
            return
        click.echo(job["id"])
        for w in job.get("warnings") or []:
            click.echo(f"warning: {w}", err=True)
        if not follow_job:
            click.echo(f"queued; follow it with `jobformer status {job['id']}`", err=True)
            return
        try:
            job = follow(client, job["id"])
        except KeyboardInterrupt:
            click.echo(f"\nstopped following; the job keeps running (jobformer cancel {job['id']})", err=True)
            sys.exit(130)
        click.echo(json.dumps(job) if as_json else summarize(job))
        _exit_for(job)


@click.command("status")
@click.argument("job_id")
@url_option
@key_option
@json_option
def status_command(job_id: str, url: str, api_key: str | None, as_json: bool) -> None:
    """Show job JOB_ID: status, progress, latest metrics, best checkpoint, error, and the test set's
    evaluation report once it has one (accuracy, macro-F1, per-class table, confusion matrix)."""
    with make_client(url, api_key) as client:
        job = call(client, "GET", f"/jobs/{job_id}")
        test = job.get("test_evaluation")
        run = call(client, "GET", test["url"]) if test and test["status"] == "succeeded" else None
    if as_json:
        click.echo(json.dumps({**job, "test_report": run["report"] if run else None}))
        return
    click.echo(summarize(job))
    if test:
        click.echo(f"\ntest set {job['test_dataset_id']}: evaluation {test['id']} {test['status']}")
    if run and run.get("report"):
        from core.ml.report import format_report  # imports torch: only when there is a report to show

        click.echo(f"checkpoint {run['checkpoint']}\n" + format_report(run["report"]))


@click.command("logs")
@click.argument("job_id")
@click.option(
    "--follow",
    "-f",
    "follow_job",
    is_flag=True,
    help="Keep printing events and metric points as they come, until the job ends (exit 0 if it succeeded).",
)
@url_option
@key_option
@json_option
def logs_command(job_id: str, follow_job: bool, url: str, api_key: str | None, as_json: bool) -> None:
    """Print the events of job JOB_ID, in order; with --follow, its metric points too, live."""
    with make_client(url, api_key) as client:
        if follow_job:
            _follow_logs(client, job_id, as_json)
            return
        offset = 0
        while True:
            page = call(client, "GET", f"/jobs/{job_id}/events", params={"offset": offset, "limit": 1000})
            for e in page["data"]:
                click.echo(json.dumps(e) if as_json else _event_line(e))
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                break


def _follow_logs(client: httpx.Client, job_id: str, as_json: bool) -> None:
    """Every event and metric point so far, then the new ones as they come; exits like submit --follow."""
    job: dict = {}
    try:
        for m in stream(client, job_id):
            if m.event == "event":
                click.echo(json.dumps(m.data) if as_json else _event_line(m.data))
            elif m.event == "metrics":
                for line in (
                    [json.dumps(p) for p in m.data["points"]] if as_json else _points_lines(m.data["points"])
                ):
                    click.echo(line)
            elif m.event in ("snapshot", "end") and m.data:
                job = m.data
    except KeyboardInterrupt:
        sys.exit(130)
    _exit_for(job)


@click.command("cancel")
@click.argument("job_id")
@url_option
@key_option
@json_option
def cancel_command(job_id: str, url: str, api_key: str | None, as_json: bool) -> None:
    """Cancel job JOB_ID (queued: at once; running: at its next step, saving a checkpoint)."""
    with make_client(url, api_key) as client:
        job = call(client, "POST", f"/jobs/{job_id}/cancel")
    click.echo(json.dumps(job) if as_json else f"job {job['id']}: {job['status']}")


def predict_remote(
    job_id: str,
    texts: Sequence[str],
    url: str | None = None,
    *,
    api_key: str | None = None,
    as_json: bool = False,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    beam_size: int = 1,
    length_penalty: float = 1.0,
    echo: bool = True,
) -> list[dict]:
    """Predict with job ``job_id``'s best checkpoint through the API (used by `jobformer predict JOB_ID`).

    Classification: one ``{"text", "label", "probabilities"}`` per text. Language modelling: each text is
    a prompt, one ``{"prompt", "text"}`` per prompt. Text to text: one ``{"source", "text"}`` per text
    (``beam_size`` 1 is greedy, more is beam search with ``length_penalty``). Printed like the local `predict` when ``echo``;
    returned either way. ``url`` defaults to env JOBFORMER_URL, then http://127.0.0.1:8000.
    """
    out: list[dict] = []
    with make_client(url, api_key, timeout=600.0) as client:
        job = call(client, "GET", f"/jobs/{job_id}")
        if job["config"].get("task") == "text_to_text":
            body = {
                "texts": list(texts),
                "max_new_tokens": max_new_tokens,
                "beam_size": beam_size,
                "length_penalty": length_penalty,
            }
            answer = call(client, "POST", f"/jobs/{job_id}/predict", json=body)
            for text, pred in zip(texts, answer["data"], strict=True):
                out.append({"source": text, "text": pred["text"]})
                if echo:
                    click.echo(json.dumps(out[-1], ensure_ascii=False) if as_json else pred["text"])
        elif job["config"].get("task") == "classification":
            answer = call(client, "POST", f"/jobs/{job_id}/predict", json={"texts": list(texts)})
            for text, pred in zip(texts, answer["data"], strict=True):
                out.append({"text": text, **pred})
                if echo:
                    if as_json:
                        click.echo(json.dumps(out[-1], ensure_ascii=False))
                    else:
                        probs = "  ".join(f"{k}={v:.3f}" for k, v in pred["probabilities"].items())
                        click.echo(f"{pred['label']}\t{probs}\t{text}")
        else:
            for prompt in texts:
                body: dict[str, Any] = {
                    "prompt": prompt,
                    "max_new_tokens": max_new_tokens,
                    "temperature": temperature,
                    "top_k": top_k,
                    "seed": seed,
                }
                answer = call(client, "POST", f"/jobs/{job_id}/predict", json=body)
                out.append({"prompt": prompt, "text": answer["text"]})
                if echo:
                    click.echo(
                        json.dumps(out[-1], ensure_ascii=False) if as_json else prompt + answer["text"]
                    )
    return out


COMMANDS = [submit_command, status_command, logs_command, cancel_command]
