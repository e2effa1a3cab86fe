"""`jobformer train` (the core loop, no service) and `jobformer predict` (a local checkpoint, or a job id).

Errors a user can fix (a bad config, unreadable data, a diverged run) print one line on stderr and exit
with status 2; no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from cli.client import key_option, predict_remote, url_option
from core.ml.callbacks import Callbacks, CheckpointInfo, Progress

EXIT_USER_ERROR = 2
STOP_FILE_ENV = "JOBFORMER_STOP_FILE"  # --nproc: the file whose creation asks the ranks to stop


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
        # Under --nproc the launching process asks by creating STOP_FILE_ENV's file (rank 0 polls it).
        stop_file = os.environ.get(STOP_FILE_ENV)
        return self.stop_requested or bool(stop_file and os.path.exists(stop_file))

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
@click.option(
    "--test",
    "test_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A test file: when training ends, the best checkpoint is evaluated on it (jobformer evaluate).",
)
@click.option(
    "--nproc",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Data-parallel processes (torchrun): one per GPU, or on CPU each with threads / N. "
    "training.batch_size must be divisible by N.",
)
def train_command(
    data: Path,
    config_arg: str,
    out_dir: Path,
    as_json: bool,
    quiet: bool,
    test_file: Path | None,
    nproc: int,
) -> None:
    """Train a model on DATA (CSV/TSV/text) with the config CFG, writing checkpoints under OUT.

    Ctrl-C stops cleanly after saving a checkpoint (exit status 130); run the same command again to
    resume. Exit status 2: a bad config or data file, or a diverged run (one line on stderr).
    """
    from core.ml.threads import set_cpu_thread_defaults

    set_cpu_thread_defaults()
    from core.ml.config import parse_config
    from core.ml.distributed import Dist
    from core.ml.errors import JobformerError
    from core.ml.trainer import Trainer

    dist = Dist.from_env()  # under torchrun: this process's rank
    if nproc > 1 and not dist.active:
        _launch_ranks(data, config_arg, out_dir, nproc, as_json=as_json, quiet=quiet, test_file=test_file)
        return
    progress = _ProgressBar(enabled=not quiet and dist.is_main)

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
        trainer = Trainer(config, data, out_dir, progress, dist=dist)
        dist.init(trainer.device)
        result = trainer.run()
        if not dist.is_main:  # rank 0 reports
            return
        test_report = _test_report(result.checkpoint, test_file) if test_file and result.checkpoint else None
    except JobformerError as e:
        progress.close()
        _fail(str(e))
    finally:
        signal.signal(signal.SIGINT, previous)
        dist.teardown()
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
    if test_report is not None:
        summary["test"] = test_report
    if as_json:
        click.echo(json.dumps(summary))
    else:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        click.echo(f"{result.status} after {result.steps} steps: {metrics}")
        click.echo(f"best checkpoint: {result.checkpoint}")
        if test_report is not None:
            from core.ml.report import format_report

            click.echo(f"test set {test_file}:\n{format_report(test_report)}")
    if result.status == "stopped":  # Ctrl-C: the conventional status, so scripts see the run did not finish
        raise SystemExit(130)


def _launch_ranks(
    data: Path,
    config_arg: str,
    out_dir: Path,
    nproc: int,
    *,
    as_json: bool,
    quiet: bool,
    test_file: Path | None,
) -> None:
    """``train --nproc N``: this same command on N ranks under torchrun (docs/design.md, "One job on many
    processes"). The launcher runs in its own session, so Ctrl-C reaches this process alone: the first
    creates the stop file (rank 0 stops everyone with a checkpoint), the second ends the launcher (SIGTERM,
    which it passes on to the ranks)."""
    from core.ml.config import parse_config
    from core.ml.distributed import check_processes, launch_command, launch_env
    from core.ml.errors import JobformerError

    try:
        config = parse_config(config_arg)
        check_processes(config.training.batch_size, nproc, config.training.grad_accum_steps)
    except JobformerError as e:
        _fail(str(e))
    if not data.is_file():
        _fail(f"data file {str(data)!r} not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    stop_file = out_dir.resolve() / ".stop-requested"
    stop_file.unlink(missing_ok=True)
    args = [
        "train",
        str(data.resolve()),
        "--config",
        config.model_dump_json(),
        "--out",
        str(out_dir.resolve()),
    ]
    args += ["--nproc", str(nproc), *(["--json"] if as_json else []), *(["--quiet"] if quiet else [])]
    args += ["--test", str(test_file.resolve())] if test_file else []
    env = {**launch_env(nproc, config.device), STOP_FILE_ENV: str(stop_file)}
    launcher = subprocess.Popen(launch_command(nproc, "cli.main", args), env=env, start_new_session=True)

    def on_sigint(signum, frame):
        if stop_file.exists():
            os.killpg(launcher.pid, signal.SIGTERM)
        else:
            stop_file.touch()
            click.echo("stopping after the next step (Ctrl-C again to abort without a checkpoint)", err=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        rc = launcher.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    stopped = stop_file.exists()
    stop_file.unlink(missing_ok=True)
    if rc != 0:  # a rank's own message (exit 2) is on stderr above torchrun's summary
        raise SystemExit(130 if stopped else EXIT_USER_ERROR if rc == EXIT_USER_ERROR else 1)


def _test_report(checkpoint: str, test_file: Path) -> dict:
    from core.ml.evaluation import evaluate_file
    from core.ml.predict import Predictor

    return evaluate_file(Predictor.load(checkpoint), test_file)


@click.command("predict")
@click.argument("target")
@click.argument("texts", nargs=-1)
@click.option(
    "--file",
    "in_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Predict every row of this CSV/TSV/text file (local runs) instead of TEXTS; needs --out.",
)
@click.option(
    "--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), help="The CSV --file writes."
)
@click.option("--text-column", default=None, help="--file: the text column (default: the training one).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--max-new-tokens", default=200, show_default=True, help="Language models: tokens to generate.")
@click.option("--temperature", default=1.0, show_default=True, help="Language models: sampling temperature.")
@click.option("--top-k", default=None, type=int, help="Language models: sample from the k likeliest tokens.")
@click.option("--seed", default=None, type=int, help="Language models: seed for a reproducible sample.")
@click.option(
    "--beam-size", default=1, show_default=True, help="Text to text: 1 is greedy, more is beam search."
)
@click.option(
    "--length-penalty", default=1.0, show_default=True, help="Text to text: beam search's length penalty."
)
@url_option
@key_option
def predict_command(
    target: str,
    texts: tuple[str, ...],
    in_file: Path | None,
    out_file: Path | None,
    text_column: str | None,
    as_json: bool,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int | None,
    beam_size: int,
    length_penalty: float,
    url: str,
    api_key: str | None,
) -> None:
    """Predict with TARGET: a run or checkpoint directory (locally), or a job id (through the API).

    Classification: the label and class probabilities of each TEXT. Language modelling: each TEXT is a
    prompt, and the generated continuation is printed. Text to text: the output of each TEXT. With --file IN --out OUT: every row of IN, streamed,
    to the CSV OUT (IN's columns, predicted_label and prob_<label>, or generated_text), with a progress bar.
    """
    if in_file is not None or out_file is not None:
        _predict_file(target, in_file, out_file, text_column, max_new_tokens, seed)
        return
    if not texts:
        _fail("give TEXTS to predict, or --file IN --out OUT")
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
            beam_size=beam_size,
            length_penalty=length_penalty,
        )
        return

    from core.ml.errors import JobformerError
    from core.ml.predict import Predictor

    try:
        predictor = Predictor.load(target)
    except (FileNotFoundError, JobformerError) as e:
        _fail(str(e))
    if predictor.task == "text_to_text":
        outputs = predictor.text_to_text(
            list(texts), beam_size=beam_size, length_penalty=length_penalty, max_new_tokens=max_new_tokens
        )
        for text, out in zip(texts, outputs, strict=True):
            click.echo(json.dumps({"source": text, "text": out}, ensure_ascii=False) if as_json else out)
    elif predictor.task == "classification":
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


def _predict_file(
    target: str,
    in_file: Path | None,
    out_file: Path | None,
    text_column: str | None,
    max_new_tokens: int,
    seed,
) -> None:
    """``predict --file``: core.ml.batch over a local run, a tqdm bar over the file's rows."""
    if in_file is None or out_file is None:
        _fail("--file and --out go together: jobformer predict RUN --file in.csv --out out.csv")
    if not Path(target).is_dir():
        _fail(f"{target} is not a run or checkpoint directory; --file predicts with a local run")
    from core.ml.threads import set_cpu_thread_defaults

    set_cpu_thread_defaults()
    from tqdm import tqdm

    from core.ml.batch import predict_file
    from core.ml.data import inspect_file
    from core.ml.errors import JobformerError
    from core.ml.predict import Predictor

    try:
        predictor = Predictor.load(target)
        info = inspect_file(in_file)  # one streaming pass: the bar's total and the format, detected once
        with tqdm(total=info.rows, unit="row", file=sys.stderr, dynamic_ncols=True) as bar:
            rows = predict_file(
                predictor,
                in_file,
                out_file,
                text_column=text_column,
                file_format=info.format,
                on_progress=lambda done: bar.update(done - bar.n),
                max_new_tokens=max_new_tokens,
                seed=seed if seed is not None else 0,
            )
    except (FileNotFoundError, JobformerError) as e:
        _fail(str(e))
    click.echo(f"{rows} rows -> {out_file}", err=True)


COMMANDS = [train_command, predict_command]
