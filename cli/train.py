"""`jobformer train` (the core loop, no service) and `jobformer predict` (a local checkpoint, or a job id).

Errors a user can fix (a bad config, unreadable data, a diverged run) print one line on stderr and exit
with status 2; no traceback.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from cli.client import key_option, predict_remote, url_option
from core.ml.callbacks import Callbacks, CheckpointInfo, Progress

EXIT_USER_ERROR = 2


class _ProgressBar(Callbacks):
    """A tqdm bar on stderr (steps, loss, ETA), one log line per evaluation, Ctrl-C as a clean stop."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = None
        self.stop_requested = False
        self._last_loss: float | None = None

    def on_progress(self, progress: Progress) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            # Starts at the resumed step: a resumed run continues its bar instead of restarting at zero.
            self.bar = tqdm(
                total=progress.total_steps,
                initial=progress.step - 1,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
            )
        self.bar.update(progress.step - self.bar.n)
        if progress.train_loss is not None and progress.train_loss != self._last_loss:
            self._last_loss = progress.train_loss
            self.bar.set_postfix(
                epoch=f"{progress.epoch}/{progress.total_epochs}", loss=f"{progress.train_loss:.4f}"
            )

    def on_event(self, kind: str, message: str, data: dict | None = None) -> None:
        if kind in ("data_loaded", "resumed", "evaluation", "early_stop", "time_limit", "warning"):
            self._write(f"{kind}: {message}")

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self._write(f"checkpoint: {info.path}{' (best)' if info.is_best else ''}")

    def should_stop(self) -> bool:
        return self.stop_requested

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(EXIT_USER_ERROR)


@click.command("train")
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--config", "-c", "config_arg", required=True, help="JSON/YAML config file, or inline JSON.")
@click.option(
    "--out",
    "-o",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory: checkpoints go under OUT/checkpoints; an existing run is resumed.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as one JSON object on the last stdout line."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def train_command(data: Path, config_arg: str, out_dir: Path, as_json: bool, quiet: bool) -> None:
    """Train a model on DATA (CSV/TSV/text) with the config CFG, writing checkpoints under OUT.

    Ctrl-C stops cleanly after saving a checkpoint (exit status 130); run the same command again to
    resume. Exit status 2: a bad config or data file, or a diverged run (one line on stderr).
    """
    from core.ml.threads import set_cpu_thread_defaults

    set_cpu_thread_defaults()
    from core.ml.config import parse_config
    from core.ml.errors import JobformerError
    from core.ml.train import train

    progress = _ProgressBar(enabled=not quiet)

    def on_sigint(signum, frame):  # first Ctrl-C: stop at the next poll with a checkpoint; second: abort
        if progress.stop_requested:
            raise KeyboardInterrupt
        progress.stop_requested = True
        progress._write("stopping after the next step (Ctrl-C again to abort without a checkpoint)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        config = parse_config(config_arg)
        if not data.is_file():
            _fail(f"data file {str(data)!r} not found")
        result = train(config, data, out_dir, progress)
    except JobformerError as e:
        progress.close()
        _fail(str(e))
    finally:
        signal.signal(signal.SIGINT, previous)
    progress.close()
    summary = {
        "status": result.status,
        "metrics": result.metrics,
        "best": result.best,
        "steps": result.steps,
        "epoch": result.epoch,
        "tokens_per_second": result.tokens_per_second,
        "data": result.data,
        "checkpoint": result.checkpoint,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        click.echo(f"{result.status} after {result.steps} steps: {metrics}")
        click.echo(f"best checkpoint: {result.checkpoint}")
    if result.status == "stopped":  # Ctrl-C: the conventional status, so scripts see the run did not finish
        raise SystemExit(130)


@click.command("predict")
@click.argument("target")
@click.argument("texts", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--max-new-tokens", default=200, show_default=True, help="Language models: tokens to generate.")
@click.option("--temperature", default=1.0, show_default=True, help="Language models: sampling temperature.")
@click.option("--top-k", default=None, type=int, help="Language models: sample from the k likeliest tokens.")
@click.option("--seed", default=None, type=int, help="Language models: seed for a reproducible sample.")
@url_option
@key_option
def predict_command(
    target: str,
    texts: tuple[str, ...],
    as_json: bool,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int | None,
    url: str,
    api_key: str | None,
) -> None:
    """Predict with TARGET: a run or checkpoint directory (locally), or a job id (through the API).

    Classification: the label and class probabilities of each TEXT. Language modelling: each TEXT is a
    prompt, and the generated continuation is printed.
    """
    if not Path(target).is_dir():
        predict_remote(
            target,
            list(texts),
            url,
            api_key=api_key,
            as_json=as_json,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
        )
        return

    from core.ml.errors import JobformerError
    from core.ml.predict import Predictor

    try:
        predictor = Predictor.load(target)
    except (FileNotFoundError, JobformerError) as e:
        _fail(str(e))
    if predictor.task == "classification":
        for text, pred in zip(texts, predictor.classify(list(texts)), strict=True):
            if as_json:
                click.echo(json.dumps({"text": text, **pred}, ensure_ascii=False))
            else:
                probs = "  ".join(f"{k}={v:.3f}" for k, v in pred["probabilities"].items())
                click.echo(f"{pred['label']}\t{probs}\t{text}")
    else:
        for prompt in texts:
            out = predictor.generate(
                prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed
            )
            if as_json:
                click.echo(json.dumps({"prompt": prompt, "text": out}, ensure_ascii=False))
            else:
                click.echo(prompt + out)


COMMANDS = [train_command, predict_command]
