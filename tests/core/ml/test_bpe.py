"""``tokenizer.kind: "bpe"`` (docs/design.md, "Subword tokens and init_from"): subwords learned on the
training split with Hugging Face tokenizers, kept inside vocab.json, loaded through load_checkpoint."""

from __future__ import annotations

import json

import pytest

from core.ml import checkpoint as ckpt
from core.ml.config import TokenizerConfig, TrainConfig, config_from_dict
from core.ml.data import load_texts
from core.ml.errors import ConfigError
from core.ml.predict import Predictor
from core.ml.tokenize import Tokenizer, Vocab, build_tokenizer
from core.ml.train import train
from tests.core.ml._tiny import Recorder, classification_config, write_sentiment_csv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sms(shared_data):
    config = TrainConfig.model_validate({"task": "classification", "text_column": 1, "label_column": 0})
    return load_texts(shared_data / "sms_spam" / "SMSSpamCollection.tsv", config)


def test_a_typo_and_a_rare_word_are_pieces_not_unk(shared_data):
    texts = _sms(shared_data).texts
    words = build_tokenizer(TokenizerConfig(kind="spacy"))
    bpe = build_tokenizer(TokenizerConfig(kind="bpe"))
    vocab = bpe.fit(texts, max_vocab=4000, min_freq=1)
    assert vocab.itos[:4] == list(Vocab.SPECIALS)
    assert 100 < len(vocab) <= 4000
    word_vocab = Vocab.build(words.tokenize(texts), min_freq=1, max_vocab=4000)
    typo = "Congratulaitons you have wonn a frree prizze"
    # word level: the misspelt words are unknown; subwords: every piece is in the vocabulary
    assert word_vocab.unk_id in word_vocab.encode(words.tokenize([typo])[0])
    pieces = bpe.tokenize([typo])[0]
    assert vocab.unk_id not in vocab.encode(pieces), pieces
    assert any(p.startswith("##") for p in pieces)
    assert bpe.detokenize(pieces) == typo.lower()


def test_chinese_pieces_span_characters(shared_data):
    config = TrainConfig.model_validate(
        {"task": "classification", "text_column": "review", "tokenizer": {"language": "zh"}}
    )
    texts = load_texts(shared_data / "chinese" / "waimai_10k.csv", config).texts
    bpe = build_tokenizer(TokenizerConfig(kind="bpe", language="zh"))
    vocab = bpe.fit(texts[:3000], max_vocab=3000, min_freq=1)
    tokens = bpe.tokenize(texts[3000:3200])
    # merges of several characters are used (spaCy's Chinese would give one character a token)
    assert sum(len(t) > 1 for doc in tokens for t in doc) > 200
    # <unk> only for characters never seen in training (a character level vocabulary's unknowns)
    unseen = set("".join(texts[3000:3200]).lower()) - set("".join(texts[:3000]).lower())
    ids = [i for doc in tokens for i in vocab.encode(doc)]
    assert ids.count(vocab.unk_id) == sum(
        c in unseen for c in "".join(texts[3000:3200]).lower() if not c.isspace()
    )
    assert bpe.detokenize(tokens[0]) == texts[3000].lower().replace(" ", "")


def test_vocab_json_round_trip_keeps_the_model():
    bpe = Tokenizer("bpe", "en")
    vocab = bpe.fit(["the cat sat on the mat", "the hat is on the cat"] * 3, max_vocab=100, min_freq=1)
    again = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab and again.subword is not None
    loaded = build_tokenizer(TokenizerConfig(kind="bpe"), again)
    assert loaded.tokenize(["The cats sat"]) == bpe.tokenize(["The cats sat"])


def test_an_untrained_bpe_tokenizer_says_so():
    with pytest.raises(ValueError, match="trained"):
        Tokenizer("bpe", "en").tokenize(["x"])


def test_text_to_text_refuses_bpe_at_the_field():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"task": "text_to_text", "tokenizer": {"kind": "bpe"}})
    assert e.value.problems[0].loc == ["tokenizer", "kind"]


def test_a_bpe_classifier_learns_and_predicts_from_its_checkpoint(shared_data, tmp_path):
    config = TrainConfig.model_validate(
        {
            "task": "classification",
            "text_column": 1,
            "label_column": 0,
            "tokenizer": {"kind": "bpe", "max_vocab": 2000},
            "model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "dim_feedforward": 64, "max_length": 48},
            "training": {"max_steps": 120, "batch_size": 32, "warmup_steps": 10, "eval_every": 120},
            "device": "cpu",
        }
    )
    path = shared_data / "sms_spam" / "SMSSpamCollection.tsv"
    result = train(config, path, tmp_path / "run")
    assert result.status == "completed"
    # 747 of 5,574 rows are spam: always "ham" scores about 0.866 accuracy and 0.46 macro-F1
    assert result.metrics["val_accuracy"] > 0.9, result.metrics
    assert result.metrics["val_f1_macro"] > 0.7, result.metrics
    saved = ckpt.load_checkpoint(result.checkpoint)
    assert saved.vocab.subword is not None and len(saved.vocab) <= 2000
    assert "bpe" in json.loads((saved.path / ckpt.VOCAB_FILE).read_text())
    predictor = Predictor.load(result.checkpoint)
    data = _sms(shared_data)
    texts = data.texts[:1000]
    predicted = [o["label"] for o in predictor.classify(texts)]
    # the checkpoint's model with the checkpoint's tokenizer: as good as training measured, spam found
    assert sum(p == y for p, y in zip(predicted, data.labels, strict=False)) / len(texts) > 0.9
    spam = [p for p, y in zip(predicted, data.labels, strict=False) if y == "spam"]
    assert spam.count("spam") > len(spam) / 2
    # the same pieces as training made: the tokenizer came back from vocab.json
    assert predictor.tokenizer.tokenize(texts) == build_tokenizer(config.tokenizer, saved.vocab).tokenize(
        texts
    )


def test_a_bpe_run_resumes_with_its_own_pieces(tmp_path):
    config = classification_config(max_steps=6, eval_every=2)
    config = config.model_copy(update={"tokenizer": config.tokenizer.model_copy(update={"kind": "bpe"})})
    data = write_sentiment_csv(tmp_path / "s.csv")
    train(config, data, tmp_path / "run", Recorder(stop_at=2))
    first = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "run"))
    resumed = train(config, data, tmp_path / "run")
    again = ckpt.load_checkpoint(resumed.checkpoint)
    assert resumed.steps == 6 and again.vocab == first.vocab and again.vocab.subword is not None
