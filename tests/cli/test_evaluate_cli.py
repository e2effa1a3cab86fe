"""`jobformer train --test`, `jobformer evaluate`, `jobformer predict --file` and `jobformer export` on
local runs: the report (text and --json), the output CSV, the ONNX archive, exit status 2 on user errors."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.core.ml._tiny import TINY_MODEL, write_sentiment_csv

CONFIG = json.dumps(
    {
        "task": "classification",
        "model": {**TINY_MODEL, "d_model": 64, "n_heads": 4},
        "training": {"epochs": 6, "batch_size": 16, "warmup_steps": 5, "learning_rate": 2e-3},
    }
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained with --test: the test report comes with the training summary."""
    tmp = tmp_path_factory.mktemp("run")
    data, test = write_sentiment_csv(tmp / "s.csv"), write_sentiment_csv(tmp / "test.csv", rows=80, seed=5)
    args = ["train", str(data), "--config", CONFIG, "--out", str(tmp / "run"), "--test", str(test), "--json"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    return tmp, json.loads(r.stdout.strip().splitlines()[-1])


def test_train_with_a_test_set_reports_on_it(trained):
    _, summary = trained
    assert summary["test"]["task"] == "classification" and summary["test"]["scored_rows"] == 80
    assert summary["test"]["accuracy"] > 0.7  # the majority class of 80 random labels is ~0.5


def test_evaluate_json_and_text(trained):
    tmp, summary = trained
    r = CliRunner().invoke(cli, ["evaluate", str(tmp / "run"), str(tmp / "test.csv"), "--json", "-q"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["checkpoint"] == summary["checkpoint"]
    assert report["accuracy"] == summary["test"]["accuracy"]
    assert set(report["per_class"]) == {"neg", "pos"}
    r = CliRunner().invoke(cli, ["evaluate", summary["checkpoint"], str(tmp / "test.csv"), "-q"])
    assert r.exit_code == 0, r.output
    assert f"accuracy {report['accuracy']:.4f}" in r.stdout
    assert "confusion matrix (rows: true, columns: predicted)" in r.stdout


def test_evaluate_names_a_missing_label_column(trained, tmp_path):
    tmp, _ = trained
    bad = tmp_path / "bad.csv"
    bad.write_text("text,sentiment\ngreat food,pos\nawful meal,neg\nso nice,pos\n", encoding="utf-8")
    r = CliRunner().invoke(cli, ["evaluate", str(tmp / "run"), str(bad)])
    assert r.exit_code == 2
    assert "column 'label' not found; the file has: text, sentiment" in r.stderr
    r = CliRunner().invoke(cli, ["evaluate", str(tmp / "run"), str(bad), "--label-column", "sentiment", "-q"])
    assert r.exit_code == 0, r.output


def test_predict_file_writes_every_row(trained, tmp_path):
    tmp, _ = trained
    out = tmp_path / "out.csv"
    r = CliRunner().invoke(
        cli, ["predict", str(tmp / "run"), "--file", str(tmp / "test.csv"), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert f"80 rows -> {out}" in r.stderr
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 80 and set(rows[0]) == {"text", "label", "predicted_label", "prob_neg", "prob_pos"}
    assert sum(r["predicted_label"] == r["label"] for r in rows) > 0.7 * 80
    r = CliRunner().invoke(cli, ["predict", str(tmp / "run"), "--file", str(tmp / "test.csv")])
    assert r.exit_code == 2 and "--file and --out go together" in r.stderr


def test_export_onnx(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    tmp, _ = trained
    r = CliRunner().invoke(
        cli, ["export", str(tmp / "run"), "--format", "onnx", "--out", str(tmp_path / "x")]
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [
        "README.md",
        "config.json",
        "labels.json",
        "model.onnx",
        "vocab.json",
    ]
