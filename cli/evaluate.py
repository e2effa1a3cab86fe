"""`jobformer evaluate` (a trained model's report on a test file) and `jobformer export` (a checkpoint to
ONNX), both on local run or checkpoint directories, no service needed (docs/design.md, "Evaluations and
batch predictions"). `jobformer predict --file` is in cli/train.py beside `predict`.

Errors a user can fix print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import click
import httpx

from cli.client import ApiError, call, key_option, make_client, url_option
from cli.client import _describe_problem as describe_problem

EXIT_USER_ERROR = 2


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(EXIT_USER_ERROR)


@click.command("evaluate")
@click.argument("target", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--text-column", default=None, help="The test file's text column (default: the training one).")
@click.option(
    "--label-column", default=None, help="The test file's label column (default: the training one)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def evaluate_command(
    target: Path, data: Path, as_json: bool, text_column: str | None, label_column: str | None, quiet: bool
) -> None:
    """Evaluate TARGET (a run directory: its best checkpoint; or a checkpoint directory) on DATA.

    Classification: accuracy, macro-F1, per-class precision/recall/F1/support, the confusion matrix and
    the most confidently wrong examples; labels training never saw are counted apart. Language model:
    loss and perplexity. Text to text: loss, BLEU and chrF of the greedy outputs (--text-column is the
    source column, --label-column the target column).
    """
    from core.ml.threads import set_cpu_thread_defaults

    set_cpu_thread_defaults()
    from tqdm import tqdm

    from core.ml.errors import JobformerError
    from core.ml.evaluation import evaluate_file
    from core.ml.predict import Predictor
    from core.ml.report import format_report

    bar = None

    def on_progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(
                total=total, unit="token" if predictor.task == "language_modeling" else "row", file=sys.stderr
            )
        bar.update(done - bar.n)

    try:
        predictor = Predictor.load(target)
        report = evaluate_file(
            predictor, data, text_column=text_column, label_column=label_column, on_progress=on_progress
        )
    except (FileNotFoundError, JobformerError) as e:
        _fail(str(e))
    finally:
        if bar is not None:
            bar.close()
    report["checkpoint"] = str(predictor.path)
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
    else:
        click.echo(f"checkpoint: {predictor.path}")
        click.echo(format_report(report))


@click.command("export")
@click.argument("target")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option(
    "--checkpoint", default=None, help="A job's checkpoint name (through the API; default: the best)."
)
@url_option
@key_option
@click.option(
    "--out",
    "-o",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for model.onnx, vocab.json, labels.json, config.json and README.md.",
)
def export_command(
    target: str, fmt: str, checkpoint: str | None, url: str, api_key: str | None, out_dir: Path
) -> None:
    """Export TARGET to ONNX, with its vocabulary, labels and a README on how to tokenize and run it.

    TARGET is a run directory (its best checkpoint) or a checkpoint directory, exported here; or a job id,
    exported by the API (GET /jobs/{id}/checkpoints/{name}?format=onnx) and unpacked into --out."""
    from core.ml.errors import JobformerError
    from core.ml.export import export_onnx

    if not Path(target).exists():
        for f in _export_remote(target, checkpoint, url, api_key, out_dir):
            click.echo(str(f))
        return
    try:
        files = export_onnx(Path(target), out_dir)
    except (FileNotFoundError, JobformerError) as e:
        _fail(str(e))
    for f in files:
        click.echo(str(f))


def _export_remote(
    job_id: str, checkpoint: str | None, url: str, api_key: str | None, out_dir: Path
) -> list[Path]:
    """The job's checkpoint (default: its best) exported by the API, its files written into ``out_dir``."""
    with make_client(url, api_key, timeout=600) as client:
        if checkpoint is None:
            best = call(client, "GET", f"/jobs/{job_id}").get("best") or {}
            checkpoint = best.get("checkpoint")
            if checkpoint is None:
                raise ApiError(f"job {job_id} has no best checkpoint yet: wait until it has evaluated once")
        try:
            r = client.get(f"/jobs/{job_id}/checkpoints/{checkpoint}", params={"format": "onnx"})
        except httpx.TransportError as e:
            raise ApiError(f"cannot reach the API at {client.base_url} ({e.__class__.__name__})") from None
        if r.status_code >= 400:
            raise ApiError(describe_problem(r))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member) if member.isfile() else None
            if f is None:
                continue
            path = out_dir / Path(member.name).name  # flat: the archive's folder is not kept
            path.write_bytes(f.read())
            written.append(path)
    return written


COMMANDS = [evaluate_command, export_command]
