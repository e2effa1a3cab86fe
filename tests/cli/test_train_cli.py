"""`jobformer train` and local `jobformer predict`: the JSON contract, exit status 2 on user errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.core.ml._tiny import TINY_MODEL, write_sentiment_csv

CONFIG = json.dumps(
    {
        "task": "classification",
        "model": TINY_MODEL,
        "training": {"max_steps": 12, "batch_size": 16, "warmup_steps": 2, "learning_rate": 3e-3},
    }
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def data(tmp_path):
    return write_sentiment_csv(tmp_path / "s.csv")


def test_train_json_contract(data, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", str(data), "--config", CONFIG, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"metrics", "best", "steps", "tokens_per_second", "data", "checkpoint"} <= set(summary)
    assert summary["steps"] == 12
    assert summary["data"] == {"rows": 240, "train_rows": 216, "val_rows": 24, "skipped_rows": 0}
    assert set(summary["metrics"]) == {"train_loss", "val_loss", "val_accuracy", "val_f1_macro"}
    assert summary["best"]["metric"] == "val_f1_macro"
    assert summary["checkpoint"].startswith(str(out.resolve() / "checkpoints"))
    assert "data_loaded" in r.stderr  # the log goes to stderr, stdout stays machine-readable


def test_train_reads_a_yaml_config_file(data, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "task: classification\nmodel: {d_model: 16, n_heads: 2, n_layers: 1, dim_feedforward: 32}\n"
        "training: {max_steps: 3}\n"
    )
    r = CliRunner().invoke(cli, ["train", str(data), "-c", str(cfg), "-o", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("completed after 3 steps: train_loss ")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"task": "classification", "text_column": "review"}', "error: config.text_column: column 'review'"),
        ('{"task": "classification", "model": {"d_model": 30}}', "error: invalid config: model: "),
        ('{"task": "classification", "training": {"epochs": 0}}', "training.epochs: "),
        ("{not json", "error: config is not valid JSON"),
    ],
)
def test_user_errors_exit_2_with_one_line(config, message, data, tmp_path):
    r = CliRunner().invoke(cli, ["train", str(data), "--config", config, "--out", str(tmp_path / "run")])
    assert r.exit_code == 2
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.output


def test_missing_data_file(tmp_path):
    r = CliRunner().invoke(
        cli, ["train", str(tmp_path / "nope.csv"), "-c", CONFIG, "-o", str(tmp_path / "o")]
    )
    assert r.exit_code == 2
    assert "error: data file" in r.stderr and "not found" in r.stderr


def test_the_console_script_has_no_traceback_on_errors(data, tmp_path):
    bad = '{"task": "classification", "label_column": "nope"}'
    p = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", str(data), "--config", bad, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.startswith("error: config.label_column: column 'nope' not found")
    assert "Traceback" not in p.stderr


def test_predict_local_directory(data, tmp_path):
    out = tmp_path / "run"
    assert CliRunner().invoke(cli, ["train", str(data), "-c", CONFIG, "-o", str(out), "-q"]).exit_code == 0
    r = CliRunner().invoke(cli, ["predict", str(out), "--json", "great meal", "so cold"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert [line["text"] for line in lines] == ["great meal", "so cold"]
    assert all(set(line["probabilities"]) == {"neg", "pos"} for line in lines)
    table = CliRunner().invoke(cli, ["predict", str(out), "great meal"])
    assert table.exit_code == 0
    assert table.stdout.rstrip().endswith("\tgreat meal")
    assert table.stdout.split("\t")[0] == lines[0]["label"]


def test_predict_empty_directory_is_an_error(tmp_path):
    r = CliRunner().invoke(cli, ["predict", str(tmp_path), "x"])
    assert r.exit_code == 2
    assert "neither a checkpoint directory nor a run" in r.stderr


def test_ctrl_c_stops_with_a_checkpoint(data, tmp_path):
    config = json.dumps({"task": "classification", "model": TINY_MODEL, "training": {"max_steps": 100000}})
    out = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "train", str(data), "-c", config, "-o", str(out), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        for line in p.stderr:  # the loop has started once the data is loaded
            if line.startswith("data_loaded"):
                break
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["status"] == "stopped"
    assert summary["steps"] % 5 == 0 and 0 < summary["steps"] < 100000
    assert (out / "checkpoints" / f"step-{summary['steps']:08d}" / "model.safetensors").is_file()
