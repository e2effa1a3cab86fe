"""Evaluating a trained model on a test file, and batch predictions over a file (core/ml/evaluation.py,
core/ml/batch.py), checked against scikit-learn and against the predictor one text at a time."""

from __future__ import annotations

import csv

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss

from core.ml.batch import predict_file
from core.ml.errors import DataError
from core.ml.evaluation import evaluate_file
from core.ml.predict import Predictor
from tests.core.ml._tiny import write_sentiment_csv, write_text_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def classifier(classifier_run):
    return Predictor.load(classifier_run[0])


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    """A test set the model never saw (another seed), with two rows of a label training never saw."""
    path = write_sentiment_csv(tmp_path_factory.mktemp("test") / "test.csv", rows=120, seed=7)
    with open(path, "a", encoding="utf-8") as f:
        f.write("the meal was so-so,meh\nquite a meal,meh\n")
    return path


def test_the_report_beats_the_majority_class_and_agrees_with_scikit_learn(classifier, test_file):
    report = evaluate_file(classifier, test_file)
    with open(test_file, encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] != "meh"]
    y = [r["label"] for r in rows]
    majority = max(y.count(x) for x in set(y)) / len(y)
    assert report["accuracy"] > majority + 0.2  # it learned
    probs = [
        [p["probabilities"][x] for x in classifier.labels]
        for p in classifier.classify([r["text"] for r in rows])
    ]
    pred = [classifier.labels[max(range(2), key=p.__getitem__)] for p in probs]
    assert report["scored_rows"] == len(rows) == 120
    assert report["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert report["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    p64 = torch.tensor(probs, dtype=torch.float64)
    p64 /= p64.sum(1, keepdim=True)  # float32 sums are 1 within 1e-7; scikit-learn asks for 1e-8
    assert report["loss"] == pytest.approx(log_loss(y, p64.numpy(), labels=classifier.labels), rel=1e-4)
    assert report["unseen_labels"] == {"meh": 2}
    assert sum(map(sum, report["confusion_matrix"])) == 120


def test_a_test_file_without_the_label_column_names_it(classifier, tmp_path):
    path = tmp_path / "nolabel.csv"
    path.write_text("text,category\ngood food,pos\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        evaluate_file(classifier, path)
    assert [p.loc for p in e.value.problems] == [["config", "label_column"]]
    assert "column 'label' not found; the file has: text, category" in str(e.value)
    report = evaluate_file(classifier, path, label_column="category")
    assert report["scored_rows"] == 1


def test_language_model_loss_agrees_with_scikit_learn(lm_run, tmp_path):
    lm = Predictor.load(lm_run)
    test = write_text_file(tmp_path / "test.txt", lines=12, seed=3)
    report = evaluate_file(lm, test)
    # independently: every next token of the stream, its probability from the model, scikit-learn's log_loss
    stream = []
    for tokens in lm.tokenizer.tokenize(test.read_text(encoding="utf-8").splitlines()):
        stream += [*lm.vocab.encode(tokens), lm.vocab.eos_id]
    T = lm.config.model.max_length
    targets, probs = [], []
    with torch.inference_mode():
        for s in range(0, len(stream) - 1, T):
            w = torch.tensor([stream[s : s + T + 1]])
            logits, _ = lm.model(w[:, :-1])
            probs += torch.softmax(logits[0].double(), -1).tolist()
            targets += w[0, 1:].tolist()
    assert report["tokens"] == len(stream) - 1 == len(targets)
    assert report["loss"] == pytest.approx(log_loss(targets, probs, labels=range(len(lm.vocab))), rel=1e-4)
    uniform = torch.log(torch.tensor(float(len(lm.vocab))))
    assert report["loss"] < float(uniform)  # it learned something: better than guessing


def test_batch_predictions_match_one_text_at_a_time(classifier, test_file, tmp_path, monkeypatch):
    import core.ml.batch

    monkeypatch.setattr(core.ml.batch, "CHUNK_ROWS", 50)  # several chunks
    seen = []
    out = tmp_path / "out.csv"
    assert predict_file(classifier, test_file, out, on_progress=seen.append) == 122
    assert seen == [50, 100, 122]
    with open(test_file, encoding="utf-8") as f:
        inputs = list(csv.DictReader(f))
    with open(out, encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["text", "label", "predicted_label", "prob_neg", "prob_pos"]
        rows = list(reader)
    assert [(r["text"], r["label"]) for r in rows] == [(r["text"], r["label"]) for r in inputs]
    for r in rows[:20]:
        one = classifier.classify([r["text"]])[0]
        assert r["predicted_label"] == one["label"]
        for name, p in one["probabilities"].items():
            assert float(r[f"prob_{name}"]) == pytest.approx(p, abs=1e-5)


def test_batch_predictions_keep_empty_rows_and_refuse_a_missing_column(classifier, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text('id,body\n1,superb food\n2,""\n3,awful\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        predict_file(classifier, src, tmp_path / "x.csv")
    assert e.value.problems[0].loc == ["text_column"]
    assert "column 'text' not found; the file has: id, body" in str(e.value)
    predict_file(classifier, src, tmp_path / "out.csv", text_column="body")
    with open(tmp_path / "out.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["id"], r["predicted_label"]) for r in rows] == [("1", "pos"), ("2", ""), ("3", "neg")]
