"""`jobformer submit / status / logs / cancel`, and prediction by job id: a client of the REST API (httpx).

Every command takes ``--url`` (env ``JOBFORMER_URL``, default http://127.0.0.1:8000) and ``--api-key``
(env ``JOBFORMER_API_KEY``). Problems the server answers (problem+json) print as one line plus one line
per field error, exit status 2; an unreachable server says how to start one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import httpx

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


def follow(client: httpx.Client, job_id: str, interval: float = 1.0) -> dict:
    """Poll the job until it ends, drawing a tqdm bar with the loss and writing its events; the last job."""
    from tqdm import tqdm

    bar = tqdm(total=None, unit="step", file=sys.stderr, dynamic_ncols=True, desc=job_id[:8])
    seen_events = 0
    warned: set[str] = set()
    try:
        while True:
            job = call(client, "GET", f"/jobs/{job_id}")
            events = call(client, "GET", f"/jobs/{job_id}/events", params={"offset": seen_events})
            for e in events["data"]:
                bar.write(f"{e['time'][11:19]} {e['kind']}: {e['message']}", file=sys.stderr)
            seen_events += len(events["data"])
            for w in job.get("warnings") or []:
                if w not in warned:
                    warned.add(w)
                    bar.write(f"warning: {w}", file=sys.stderr)
            p = job.get("progress")
            if p:
                if bar.total != p["total_steps"]:
                    bar.total = p["total_steps"]
                bar.n = p["step"]
                postfix = {"status": job["status"]}
                metrics = job.get("metrics") or {}
                loss = p.get("train_loss", metrics.get("train_loss"))
                if loss is not None:
                    postfix["loss"] = f"{loss:.4f}"
                if metrics.get("val_loss") is not None:
                    postfix["val_loss"] = f"{metrics['val_loss']:.4f}"
                bar.set_postfix(postfix, refresh=False)
            else:
                bar.set_postfix({"status": job["status"]}, refresh=False)
            bar.refresh()
            if job["status"] in TERMINAL:
                return job
            time.sleep(interval)
    finally:
        bar.close()


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
@click.option("--interval", default=1.0, show_default=True, help="Seconds between polls under --follow.")
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
            job = follow(client, job["id"], interval=interval)
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
    """Show job JOB_ID: status, progress, latest metrics, best checkpoint, error."""
    with make_client(url, api_key) as client:
        job = call(client, "GET", f"/jobs/{job_id}")
    click.echo(json.dumps(job) if as_json else summarize(job))


@click.command("logs")
@click.argument("job_id")
@url_option
@key_option
@json_option
def logs_command(job_id: str, url: str, api_key: str | None, as_json: bool) -> None:
    """Print the events of job JOB_ID, in order."""
    with make_client(url, api_key) as client:
        offset = 0
        while True:
            page = call(client, "GET", f"/jobs/{job_id}/events", params={"offset": offset, "limit": 1000})
            for e in page["data"]:
                click.echo(json.dumps(e) if as_json else f"{e['time']}  {e['kind']:<12} {e['message']}")
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                break


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
    echo: bool = True,
) -> list[dict]:
    """Predict with job ``job_id``'s best checkpoint through the API (used by `jobformer predict JOB_ID`).

    Classification: one ``{"text", "label", "probabilities"}`` per text. Language modelling: each text is
    a prompt, one ``{"prompt", "text"}`` per prompt. Printed like the local `predict` when ``echo``;
    returned either way. ``url`` defaults to env JOBFORMER_URL, then http://127.0.0.1:8000.
    """
    out: list[dict] = []
    with make_client(url, api_key, timeout=600.0) as client:
        job = call(client, "GET", f"/jobs/{job_id}")
        if job["config"].get("task") == "classification":
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
