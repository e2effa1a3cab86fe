"""The `jobformer` console script. Each group of subcommands lives in its own module:

    cli/train.py    train, predict        the core loop and prediction, no service needed
    cli/service.py  up, serve, worker, migrate
    cli/client.py   submit, status, logs, cancel (and predict by job id): a client of the REST API

Heavy imports (torch, spaCy, FastAPI, Celery) happen inside the commands so `jobformer --help` is instant.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="jobformer")
def cli() -> None:
    """jobformer: upload text, get a trained Transformer."""


def _register() -> None:
    from cli import client, service, train

    for module in (train, service, client):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
