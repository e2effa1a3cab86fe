"""``init_from`` (docs/design.md, "Subword tokens and init_from"): a run that starts from another model's
weights and vocabulary; shapes that do not fit are refused naming the fields."""

from __future__ import annotations

import pytest
import torch

from core.ml import checkpoint as ckpt
from core.ml.config import TrainConfig
from core.ml.errors import ConfigError
from core.ml.train import train
from tests.core.ml._tiny import TINY_MODEL, Recorder, lm_config, write_sentiment_csv, write_text_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _classifier(init_from, **model) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "task": "classification",
            "tokenizer": {"kind": "char"},
            "model": {**TINY_MODEL, **model},
            "training": {"max_steps": 4, "batch_size": 16, "warmup_steps": 1},
            "init_from": str(init_from),
        }
    )


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A character language model trained a few steps on words the sentiment file uses too."""
    root = tmp_path_factory.mktemp("lm")
    result = train(lm_config(max_steps=6, eval_every=6), write_text_file(root / "docs.txt"), root / "run")
    return ckpt.load_checkpoint(result.checkpoint)


def test_a_classifier_starts_from_a_language_models_backbone(tiny_lm, tmp_path):
    data = write_sentiment_csv(tmp_path / "s.csv")
    rec = Recorder()
    # stopped before its first step: the weights are the ones it started from
    result = train(_classifier(tiny_lm.path), data, tmp_path / "run", rec, resume_from=None)
    assert any(e[0] == "initialized" for e in rec.events), rec.events
    saved = ckpt.load_checkpoint(result.checkpoint)
    assert saved.vocab == tiny_lm.vocab  # the language model's vocabulary, not one built afresh
    lm_weights = ckpt.load_weights(tiny_lm.path)
    clf = saved.model(saved.train_config())
    # 4 AdamW steps at lr 1e-3 move a weight by at most about 4e-3: the embedding is still the LM's
    emb, lm_emb = clf.state_dict()["backbone.tok_emb.weight"], lm_weights["backbone.tok_emb.weight"]
    assert emb.shape == lm_emb.shape
    assert (emb - lm_emb).abs().max() < 0.01 < lm_emb.abs().max()


def test_init_weights_copies_the_backbone_exactly(tiny_lm):
    from core.ml.init_from import init_weights
    from core.ml.model import build_model

    config = _classifier(tiny_lm.path)
    model = build_model("classification", config.model, len(tiny_lm.vocab), 2)
    head_before = model.head.weight.clone()
    copied = init_weights(model, tiny_lm, ["neg", "pos"])
    lm_weights = ckpt.load_weights(tiny_lm.path)
    lm_weights.pop("logit_scale")  # the LM's output factor: a classifier has no tied output
    assert set(copied) == set(lm_weights)  # every other tensor of the LM is the classifier's backbone
    for name, tensor in lm_weights.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert torch.equal(model.head.weight, head_before)  # a new head: the LM has none


def test_shapes_that_do_not_fit_are_refused_naming_the_fields(tiny_lm, tmp_path):
    data = write_sentiment_csv(tmp_path / "s.csv")
    config = _classifier(tiny_lm.path, d_model=TINY_MODEL["d_model"] * 2, n_layers=TINY_MODEL["n_layers"] + 1)
    with pytest.raises(ConfigError) as e:
        train(config, data, tmp_path / "run")
    locs = [p.loc for p in e.value.problems]
    assert ["config", "model", "d_model"] in locs and ["config", "model", "n_layers"] in locs
    assert "n_heads" not in str(locs)
    assert "init_from" in str(e.value) and "d_model" in str(e.value)


def test_a_language_model_cannot_start_from_a_classifier(tiny_lm, tmp_path):
    data = write_sentiment_csv(tmp_path / "s.csv")
    clf = train(_classifier(tiny_lm.path), data, tmp_path / "clf")
    lm = lm_config(max_steps=2).model_copy(update={"init_from": clf.checkpoint})
    with pytest.raises(ConfigError) as e:
        train(lm, write_text_file(tmp_path / "docs.txt"), tmp_path / "lm")
    assert e.value.problems[0].loc == ["config", "init_from"]


def test_a_missing_checkpoint_names_init_from(tmp_path):
    with pytest.raises(ConfigError) as e:
        train(_classifier(tmp_path / "nothing"), write_sentiment_csv(tmp_path / "s.csv"), tmp_path / "run")
    assert e.value.problems[0].loc == ["config", "init_from"]


def test_a_language_model_continues_from_another(tiny_lm, tmp_path):
    config = lm_config(max_steps=2).model_copy(update={"init_from": str(tiny_lm.path)})
    result = train(config, write_text_file(tmp_path / "more.txt", seed=1), tmp_path / "run")
    saved = ckpt.load_checkpoint(result.checkpoint)
    assert saved.vocab == tiny_lm.vocab
