"""core.ml.report against scikit-learn on a fixed example (scikit-learn is in the dev extra only)."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from core.ml.report import classification_report, format_report, lm_report

LABELS = ["ham", "spam", "zzz"]  # "zzz" is never predicted: precision 0 by scikit-learn's convention
TRUE = ["ham", "ham", "spam", "ham", "spam", "zzz", "ham", "spam", "new", "ham"]
PROBS = torch.tensor(
    [
        [0.9, 0.05, 0.05],
        [0.3, 0.6, 0.1],  # wrong, confidence 0.6
        [0.2, 0.7, 0.1],
        [0.8, 0.1, 0.1],
        [0.95, 0.03, 0.02],  # wrong, confidence 0.95: the most confidently wrong
        [0.5, 0.4, 0.1],  # wrong
        [0.6, 0.3, 0.1],
        [0.1, 0.85, 0.05],
        [0.5, 0.5, 0.0],  # label "new": never seen in training, not scored
        [0.7, 0.2, 0.1],
    ],
    dtype=torch.float64,
)
TEXTS = [f"text {i}" for i in range(len(TRUE))]


def _sklearn_view():
    keep = [i for i, t in enumerate(TRUE) if t in LABELS]
    y = [TRUE[i] for i in keep]
    p = PROBS[keep].double().numpy()
    pred = [LABELS[int(j)] for j in p.argmax(1)]
    return y, pred, p


def test_classification_report_agrees_with_scikit_learn():
    report = classification_report(LABELS, TRUE, PROBS, TEXTS)
    y, pred, p = _sklearn_view()
    assert report["rows"] == 10 and report["scored_rows"] == 9
    assert report["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert report["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert report["loss"] == pytest.approx(log_loss(y, p, labels=LABELS))
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=LABELS, zero_division=0)
    for i, name in enumerate(LABELS):
        c = report["per_class"][name]
        assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((prec[i], rec[i], f1[i]))
        assert c["support"] == sup[i]
    assert report["confusion_matrix"] == confusion_matrix(y, pred, labels=LABELS).tolist()
    # and the numbers themselves, so a change in both cannot pass unseen
    assert report["accuracy"] == pytest.approx(6 / 9)
    assert report["confusion_matrix"] == [[4, 1, 0], [1, 2, 0], [1, 0, 0]]


def test_unseen_labels_are_reported_not_scored():
    report = classification_report(LABELS, TRUE, PROBS, TEXTS)
    assert report["unseen_labels"] == {"new": 1}
    assert "labels training never saw (rows not scored): 'new' (1)" in format_report(report)


def test_most_confidently_wrong_first():
    wrong = classification_report(LABELS, TRUE, PROBS, TEXTS)["most_confidently_wrong"]
    assert [(w["row"], w["label"], w["predicted"]) for w in wrong] == [
        (4, "spam", "ham"),
        (1, "ham", "spam"),
        (5, "zzz", "ham"),
    ]
    assert wrong[0]["confidence"] == pytest.approx(0.95) and wrong[0]["text"] == "text 4"


def test_a_file_of_unseen_labels_only_gives_no_numbers_and_no_crash():
    report = classification_report(["a", "b"], ["c", "c"], torch.tensor([[0.5, 0.5], [0.1, 0.9]]), ["x", "y"])
    assert report["scored_rows"] == 0
    assert report["accuracy"] is None and report["f1_macro"] is None
    assert report["unseen_labels"] == {"c": 2}
    assert "scored 0" in format_report(report)


def test_lm_report():
    report = lm_report(loss_sum=20.0, tokens=10, rows=3)
    assert report["loss"] == 2.0 and report["perplexity"] == pytest.approx(math.exp(2.0))
    assert "perplexity 7.39" in format_report(report)
