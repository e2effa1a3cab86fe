"""ONNX export: the exported classifier, run in onnxruntime, gives Predictor's probabilities within 1e-4."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.ml.errors import JobformerError
from core.ml.export import FILES, export_onnx
from core.ml.predict import Predictor
from core.ml.tasks import encode_rows, pad_rows
from core.ml.train import train
from tests.core.ml._tiny import classification_config, lm_config, write_sentiment_csv, write_text_file

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra")

TEXTS = [
    "the food was really great",
    "awful and cold",
    "superb",
    "a meal so bland and sad and cold and nasty",
]


def test_exported_classifier_gives_the_predictors_probabilities(tmp_path):
    train(classification_config(epochs=3), write_sentiment_csv(tmp_path / "s.csv"), tmp_path / "run")
    files = export_onnx(tmp_path / "run", tmp_path / "onnx")
    assert [f.name for f in files] == list(FILES) and all(f.is_file() for f in files)
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == sorted(FILES)  # weights inside
    predictor = Predictor.load(tmp_path / "run")
    expected = predictor.classify(TEXTS)
    assert json.loads((tmp_path / "onnx" / "labels.json").read_text()) == predictor.labels == ["neg", "pos"]
    # Tokenized as the README says, from the exported vocabulary, padded in one batch.
    itos = json.loads((tmp_path / "onnx" / "vocab.json").read_text())["tokens"]
    stoi = {t: i for i, t in enumerate(itos)}
    rows = [
        [stoi["<cls>"], *(stoi.get(t, stoi["<unk>"]) for t in tokens)][:16]
        for tokens in predictor.tokenizer.tokenize(TEXTS)
    ]
    assert rows == encode_rows(predictor.vocab, predictor.tokenizer.tokenize(TEXTS), 16)
    x, _ = pad_rows(rows)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    got = session.run(None, {"input_ids": x.numpy()})[0]
    want = np.array([[e["probabilities"][k] for k in predictor.labels] for e in expected])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert [predictor.labels[i] for i in got.argmax(1)] == [e["label"] for e in expected]
    assert "input_ids" in (tmp_path / "onnx" / "README.md").read_text()


def test_a_language_model_is_refused_naming_the_task(tmp_path):
    train(lm_config(max_steps=5), write_text_file(tmp_path / "t.txt"), tmp_path / "run")
    with pytest.raises(JobformerError) as e:
        export_onnx(tmp_path / "run", tmp_path / "onnx")
    assert e.value.code == "export_unsupported"
    assert str(e.value) == "ONNX export supports classifiers; this checkpoint is language_modeling"
