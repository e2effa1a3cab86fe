"""The `jobformer` console script. Each group of subcommands lives in its own module:

    cli/train.py    train, predict        the core loop and prediction (--file: a whole file), no service needed
    cli/evaluate.py evaluate, export      a model's report on a test file, ONNX export
    cli/service.py  up, serve, worker, migrate
    cli/client.py   submit, status, logs, cancel (and predict by job id): a client of the REST API
    cli/sweep.py    sweep: a hyperparameter search through the REST API, its leaderboard with --follow

Heavy imports (torch, spaCy, FastAPI, Celery) happen inside the commands so `jobformer --help` is instant.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="jobformer")
def cli() -> None:
    """jobformer: upload text, get a trained Transformer."""


def _register() -> None:
    from cli import client, evaluate, service, sweep, train

    for module in (train, evaluate, service, client, sweep):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    from core.ml.distributed import exit_rank, is_rank_process

    if not is_rank_process():
        cli()
        return
    # A rank of `jobformer train --nproc N`: its exit code, then out at once (exit_rank says why).
    try:
        cli()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    exit_rank(code)


if __name__ == "__main__":
    main()
