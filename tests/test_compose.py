"""docker compose files: valid for `docker-compose config`, and every command they run exists in the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
DOCKER_COMPOSE = shutil.which("docker-compose")
KEY = "compose-test-key-0123456789"


def _run_config(*files: Path, api_keys: str | None = KEY) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with JOBFORMER_API_KEYS set to ``api_keys`` (None: unset), and an empty
    env file instead of a developer's .env."""
    env = {k: v for k, v in os.environ.items() if k != "JOBFORMER_API_KEYS"}
    if api_keys is not None:
        env["JOBFORMER_API_KEYS"] = api_keys
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "empty.env"
        env_file.touch()
        args = [DOCKER_COMPOSE, "--env-file", str(env_file)]
        for f in files:
            args += ["-f", str(f)]
        return subprocess.run(
            [*args, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
        )


def _config(*files: Path) -> dict:
    """The merged, interpolated config as docker-compose resolves it."""
    out = _run_config(*files)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


# CI installs docker-compose (.ci/run), so there a missing binary fails the test instead of skipping it.
needs_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None and not os.environ.get("CI"), reason="docker-compose is not installed"
)


@needs_compose
def test_compose_config_is_valid() -> None:
    config = _config(COMPOSE)
    services = config["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert services["migrate"]["command"] == ["jobformer", "migrate"]
    assert services["api"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["worker"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    for name in ("migrate", "api", "worker"):
        assert services[name]["environment"]["JOBFORMER_API_KEYS"] == KEY
    # Checkpoints are written by workers only; the API reads them read-only.
    assert "jobs:/data/jobs:ro" in services["api"]["volumes"]
    assert "jobs:/data/jobs:rw" in services["worker"]["volumes"]
    assert "deploy" not in services["worker"]  # CPU by default: no GPU reservation


@needs_compose
@pytest.mark.parametrize("api_keys", [None, ""], ids=["unset", "empty"])
@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, GPU)], ids=["cpu", "gpu"])
def test_compose_refuses_to_start_without_an_api_key(files, api_keys) -> None:
    # The API listens on 0.0.0.0: without a key compose itself refuses, saying how to make one (issue 8).
    out = _run_config(*files, api_keys=api_keys)
    assert out.returncode != 0
    assert (
        "set JOBFORMER_API_KEYS to one or more comma-separated API keys (in the environment or .env), e.g. "
        "the output of: python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
    ) in out.stderr


def test_no_api_key_ships_with_the_repository() -> None:
    for path in (COMPOSE, GPU, ROOT / "Dockerfile"):
        text = path.read_text()
        assert "JOBFORMER_API_KEYS:-" not in text and "JOBFORMER_API_KEYS=" not in text, path
    assert "${JOBFORMER_API_KEYS:?" in COMPOSE.read_text()


@needs_compose
def test_gpu_override_reserves_an_nvidia_gpu_for_the_worker() -> None:
    config = _config(COMPOSE, GPU)
    devices = config["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in config["services"]["api"]
    assert config["services"]["worker"]["command"] == ["jobformer", "worker", "--concurrency", "1"]


def _jobformer_commands() -> list[list[str]]:
    commands = []
    for path in (COMPOSE, GPU):
        for service in (yaml.safe_load(path.read_text())["services"] or {}).values():
            command = service.get("command")
            if isinstance(command, list) and command and command[0] == "jobformer":
                commands.append(command[1:])
    dockerfile_cmd = next(
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD")
    )
    commands.append(yaml.safe_load(dockerfile_cmd.removeprefix("CMD"))[1:])
    return commands


def test_compose_commands_exist_in_the_cli() -> None:
    commands = _jobformer_commands()
    assert sorted(c[0] for c in commands) == ["migrate", "serve", "serve", "worker"]
    for args in commands:
        command = cli.get_command(None, args[0])  # type: ignore[arg-type]
        assert command is not None, f"`jobformer {args[0]}` does not exist"
        # Parses and validates every option exactly as the container would, without running it.
        command.make_context(args[0], list(args[1:]))


def test_unknown_option_is_caught() -> None:
    import click

    with pytest.raises(click.NoSuchOption):
        cli.get_command(None, "worker").make_context("worker", ["--gpus", "2"])  # type: ignore[union-attr]
