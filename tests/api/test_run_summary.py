"""An evaluation in short (api/model_runs.py ``run_summary``): a job's ``test_evaluation`` and a sweep trial's
carry the headline numbers of whichever task the report is for — text to text's BLEU and chrF too."""

from __future__ import annotations

from api.model_runs import run_summary
from core.db.models import ModelRun


def test_a_text_to_text_report_summarises_to_its_bleu_chrf_and_loss() -> None:
    report = {"loss": 2.5, "bleu": 31.2, "chrf": 55.0, "examples": 40, "samples": [{"source": "a"}]}
    run = ModelRun(id="r1", status="succeeded", report=report)
    summary = run_summary(run)
    assert (summary.id, summary.url, summary.status) == ("r1", "/evaluations/r1", "succeeded")
    assert summary.summary == {"loss": 2.5, "bleu": 31.2, "chrf": 55.0}


def test_a_classification_report_summarises_to_accuracy_f1_and_loss() -> None:
    run = ModelRun(id="r2", status="succeeded", report={"accuracy": 0.9, "f1_macro": 0.8, "loss": 0.3})
    assert run_summary(run).summary == {"accuracy": 0.9, "f1_macro": 0.8, "loss": 0.3}


def test_a_run_without_a_report_has_an_empty_summary() -> None:
    assert run_summary(ModelRun(id="r3", status="running", report=None)).summary == {}
