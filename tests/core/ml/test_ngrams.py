"""The classifier's bag of hashed n-grams (model.ngrams): the hash, padding, the checkpoint, prediction,
init_from, ONNX export, and learning with the default config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.ml import checkpoint as ckpt
from core.ml.config import ModelConfig, TrainConfig
from core.ml.model import NGRAM_MOD, NGRAM_PRIME, NGRAM_SALT, TextClassifier, ngram_ids
from core.ml.predict import Predictor
from core.ml.tasks import encode_rows, pad_rows
from core.ml.train import train
from tests.core.ml._tiny import (
    TINY_MODEL,
    classification_config,
    lm_config,
    write_sentiment_csv,
    write_text_file,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _reference_buckets(ids: list[int], n: int, buckets: int) -> list[int]:
    """The documented hash, written out token by token in plain Python integers."""
    out = []
    for k in range(1, n + 1):
        for t in range(len(ids) - k + 1):
            h = ids[t]
            for j in range(1, k):
                h = (h * NGRAM_PRIME + ids[t + j]) % NGRAM_MOD
            out.append((h + (k - 1) * NGRAM_SALT) % buckets)
    return out


def test_ngram_hash_is_the_documented_one_and_padding_is_masked():
    row = [2, 17, 999_999, 5, 40]
    idx = torch.tensor([row + [0, 0], [2, 9, 0, 0, 0, 0, 0]])
    got, real = ngram_ids(idx, 3, 1000)
    assert got.shape == real.shape == (2, 3 * 7)
    first = got[0][real[0]].tolist()
    assert sorted(first) == sorted(_reference_buckets(row, 3, 1000))
    assert sorted(got[1][real[1]].tolist()) == sorted(_reference_buckets([2, 9], 3, 1000))
    assert int(real[1].sum()) == 2 + 1  # two unigrams, one bigram, no trigram in a 2-token text
    again, _ = ngram_ids(idx.clone(), 3, 1000)
    assert torch.equal(got, again)  # deterministic: no Python hash() or random state
    assert int(got.min()) >= 0 and int(got.max()) < 1000


def test_bigrams_are_ordered_and_unigrams_do_not_collide_with_them_by_construction():
    a, _ = ngram_ids(torch.tensor([[3, 4]]), 2, 1 << 20)
    b, _ = ngram_ids(torch.tensor([[4, 3]]), 2, 1 << 20)
    assert a[0, 2].item() != b[0, 2].item()  # "3 4" is not "4 3"
    assert a[0, 0].item() == 3 and a[0, 1].item() == 4  # small ids: a unigram's bucket is its id


def test_the_bag_changes_the_logits_and_padding_changes_nothing():
    cfg = ModelConfig(**{**TINY_MODEL, "ngram_buckets": 64}, dropout=0.0, ngrams=2)
    torch.manual_seed(0)
    m = TextClassifier(cfg, vocab_size=30, num_classes=3).eval()
    assert m.ngram.emb.weight.shape == (64, cfg.d_model) and m.head.in_features == 2 * cfg.d_model
    short = torch.tensor([[2, 5, 6, 7]])
    padded = torch.tensor([[2, 5, 6, 7, 0, 0, 0]])
    torch.testing.assert_close(m(short)[0], m(padded)[0], atol=1e-6, rtol=0)
    before = m(short)[0].clone()
    with torch.no_grad():
        m.ngram.emb.weight.add_(1.0)
    assert not torch.allclose(before, m(short)[0])
    off = TextClassifier(ModelConfig(**TINY_MODEL, ngrams=0), vocab_size=30, num_classes=3)
    assert not hasattr(off, "ngram") and off.head.in_features == cfg.d_model


def test_the_bag_is_saved_and_prediction_computes_what_training_computed(tmp_path):
    result = train(classification_config(epochs=2), write_sentiment_csv(tmp_path / "s.csv"), tmp_path / "run")
    path = result.checkpoint
    saved = ckpt.load_checkpoint(path)
    assert saved.config["model"]["ngrams"] == 2 and saved.config["model"]["ngram_buckets"] == 1024
    weights = ckpt.load_weights(path)
    assert weights["ngram.emb.weight"].shape == (1024, TINY_MODEL["d_model"])
    assert weights["ngram.emb.weight"].abs().sum() > 0
    # The weights, put into a model built here from the saved config, give the Predictor's numbers.
    model = TextClassifier(saved.train_config().model, len(saved.vocab), len(saved.labels))
    model.load_state_dict(weights)
    model.eval()
    predictor = Predictor.load(tmp_path / "run")
    texts = ["the food was great", "awful and cold and sad", "superb"]
    tokens = predictor.tokenizer.tokenize(texts)
    x, _ = pad_rows(encode_rows(predictor.vocab, tokens, TINY_MODEL["max_length"]))
    with torch.no_grad():
        want = torch.softmax(model(x)[0], dim=-1)
    torch.testing.assert_close(predictor.probabilities(tokens), want, atol=1e-6, rtol=0)
    got = [[r["probabilities"][k] for k in predictor.labels] for r in predictor.classify(texts)]
    torch.testing.assert_close(torch.tensor(got), want, atol=1e-6, rtol=0)


def test_a_checkpoint_from_before_the_bag_loads_without_it(tmp_path):
    result = train(
        TrainConfig.model_validate(
            {**classification_config().model_dump(), "model": {**TINY_MODEL, "ngrams": 0}}
        ),
        write_sentiment_csv(tmp_path / "s.csv"),
        tmp_path / "run",
    )
    config_file = ckpt.checkpoints_root(tmp_path / "run") / result.best["checkpoint"] / ckpt.CONFIG_FILE
    old = json.loads(config_file.read_text())
    for field in ("ngrams", "ngram_buckets"):
        del old["model"][field]  # as written before the fields existed
    config_file.write_text(json.dumps(old))
    predictor = Predictor.load(tmp_path / "run")
    assert predictor.config.model.ngrams == 0
    assert len(predictor.classify(["great food"])) == 1


def test_a_classifier_from_a_language_model_gets_a_fresh_bag(tmp_path):
    lm = train(lm_config(max_steps=10), write_text_file(tmp_path / "t.txt"), tmp_path / "lm")
    cfg = classification_config(epochs=1).model_dump()
    cfg["tokenizer"] = {"kind": "char"}
    cfg["init_from"] = lm.checkpoint
    result = train(TrainConfig.model_validate(cfg), write_sentiment_csv(tmp_path / "s.csv"), tmp_path / "clf")
    assert result.status == "completed"
    weights = ckpt.load_weights(result.checkpoint)
    assert "ngram.emb.weight" in weights and "ngram.emb.weight" not in ckpt.load_weights(lm.checkpoint)


def test_onnx_export_computes_the_bag(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the dev extra")
    from core.ml.export import export_onnx

    train(classification_config(epochs=2), write_sentiment_csv(tmp_path / "s.csv"), tmp_path / "run")
    export_onnx(tmp_path / "run", tmp_path / "onnx")
    predictor = Predictor.load(tmp_path / "run")
    texts = ["the food was really great", "awful", "a meal so bland and sad and cold and nasty"]
    tokens = predictor.tokenizer.tokenize(texts)
    x, _ = pad_rows(encode_rows(predictor.vocab, tokens, TINY_MODEL["max_length"]))
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    got = session.run(None, {"input_ids": x.numpy()})[0]
    np.testing.assert_allclose(got, predictor.probabilities(tokens).numpy(), atol=1e-4, rtol=0)
    one = session.run(None, {"input_ids": x[:1, :1].numpy()})[0]  # a text of <cls> alone: no bigram
    assert one.shape == (1, 2)
    assert "1-2-grams is computed inside the graph" in (tmp_path / "onnx" / "README.md").read_text()


def test_the_default_classifier_learns_beyond_the_majority_class(tmp_path):
    """The default config as it is (bag and Transformer, default sizes and schedule, 3 epochs of 17 steps):
    validation accuracy far above the majority class's share."""
    data = write_sentiment_csv(tmp_path / "s.csv", rows=600, seed=3)
    labels = [line.rsplit(",", 1)[1] for line in data.read_text().splitlines()[1:]]
    majority = max(labels.count("pos"), labels.count("neg")) / len(labels)
    result = train(TrainConfig.model_validate({"task": "classification"}), data, tmp_path / "run")
    assert result.steps == 3 * 17
    assert result.best is not None and result.best["value"] > 0.9, result.best
    assert result.metrics["val_accuracy"] > max(0.9, majority + 0.3), result.metrics
