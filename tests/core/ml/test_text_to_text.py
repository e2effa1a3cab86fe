"""Text to text (issue 13; docs/design.md, "Text to text"): the encoder-decoder, its data checks, a tiny
model on a slice of the Tatoeba English-French pairs that learns (loss well under the unigram entropy,
BLEU above copying the source or answering the commonest target), beam search at least as good as greedy,
the KV cache giving the tokens of no cache, and resuming exactly."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from core.ml import checkpoint as ckpt
from core.ml import seq2seq
from core.ml.config import ModelConfig, TrainConfig, config_from_dict
from core.ml.data import check_config, load_texts, split_indices
from core.ml.decode import beam_search, greedy_decode
from core.ml.errors import ConfigError
from core.ml.model import EncoderDecoder
from core.ml.predict import Predictor
from core.ml.train import train
from tests.core.ml._tiny import Recorder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAIRS = Path("/work/shared/data/translation/eng_fra.tsv")  # Tatoeba, CC-BY 2.0 FR; sorted short first
TINY = ModelConfig(d_model=32, n_heads=2, n_layers=2, dim_feedforward=64, dropout=0.0, max_length=12)


def write_pairs(path: Path, n: int) -> Path:
    """The first ``n`` pairs (the shortest sentences) with an ``en<TAB>fr`` header."""
    with PAIRS.open(encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(n)]
    path.write_text("en\tfr\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def t2t_config(**training) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "task": "text_to_text",
            "source_column": "en",
            "target_column": "fr",
            "target_tokenizer": {"language": "fr"},
            "model": {
                "d_model": 64,
                "n_heads": 4,
                "n_layers": 2,
                "dim_feedforward": 128,
                "dropout": 0.0,
                "max_length": 16,
            },
            "training": {"batch_size": 64, "learning_rate": 3e-3, "warmup_steps": 20, **training},
            "device": "cpu",
        }
    )


# ---- the model ----


def test_source_padding_changes_nothing_and_the_source_matters():
    torch.manual_seed(0)
    m = EncoderDecoder(TINY, 30, 40).eval()
    src = torch.tensor([[5, 6, 7, 0, 0]])
    tgt = torch.tensor([[2, 8, 9, 3]])
    a, _ = m(src, tgt)
    b, _ = m(src[:, :3], tgt)  # the same source without its padding
    torch.testing.assert_close(a, b)
    c, _ = m(torch.tensor([[9, 6, 7]]), tgt)
    assert (a - c).abs().max() > 1e-3  # cross-attention reads the source


@torch.no_grad()
def test_label_smoothing_mixes_in_the_uniform_target_and_ignores_padding():
    torch.manual_seed(0)
    m = EncoderDecoder(TINY, 30, 40, label_smoothing=0.1)
    src, tgt = torch.tensor([[5, 6, 7]]), torch.tensor([[2, 8, 9, 3, 0, 0]])
    logits, loss = m(src, tgt)
    logp = torch.log_softmax(logits[0, :3], dim=-1)  # the three real targets; padding is not scored
    nll = -logp.gather(1, tgt[0, 1:4, None]).mean()
    expected = 0.9 * nll + 0.1 * -logp.mean()
    torch.testing.assert_close(loss, expected)


def test_a_shared_vocabulary_is_one_table_saved_once(tmp_path):
    m = EncoderDecoder(TINY, 30, 30, shared_vocab=True)
    assert m.encoder.tok_emb.weight is m.decoder.tok_emb.weight
    assert "encoder.tok_emb.weight" not in m.state_dict()
    with pytest.raises(ValueError, match="one size"):
        EncoderDecoder(TINY, 30, 31, shared_vocab=True)


def test_the_cache_gives_the_tokens_of_no_cache():
    torch.manual_seed(1)
    m = EncoderDecoder(TINY, 30, 40).eval()
    src = torch.randint(4, 30, (5, 7))
    src[1, 4:] = 0
    kw = dict(bos_id=2, eos_id=3, max_new_tokens=10)
    assert greedy_decode(m, src, **kw) == greedy_decode(m, src, use_cache=False, **kw)
    assert beam_search(m, src, beam_size=3, **kw) == beam_search(m, src, beam_size=3, use_cache=False, **kw)
    assert beam_search(m, src, beam_size=1, **kw) == greedy_decode(m, src, **kw)


# ---- config and data ----


def test_config_errors_name_their_field():
    with pytest.raises(ConfigError) as e:
        config_from_dict(
            {"task": "text_to_text", "source_column": "en", "target_column": "en"}, prefix=("config",)
        )
    assert e.value.problems[0].loc == ["config", "target_column"]
    with pytest.raises(ConfigError) as e:
        config_from_dict({"task": "text_to_text", "label_column": "fr"}, prefix=("config",))
    assert e.value.problems[0].loc == ["config", "label_column"]
    c = TrainConfig.model_validate({"task": "text_to_text"})
    assert (c.source_column, c.target_column, c.target_tokenizer) == (0, 1, c.tokenizer)
    assert TrainConfig.model_validate(c.model_dump(mode="json")) == c  # a stored config validates again


def test_missing_or_swapped_columns_are_named(tmp_path):
    path = write_pairs(tmp_path / "p.tsv", 50)
    config = t2t_config().model_copy(update={"source_column": "english"})
    (p,) = check_config(path, config)
    assert (
        p.loc == ["config", "source_column"] and "column 'english' not found; the file has: en, fr" in p.msg
    )
    config = t2t_config().model_copy(update={"target_column": 0})  # the source column named as the target
    (p,) = check_config(path, config)
    assert p.loc == ["config", "target_column"] and "the same column ('en')" in p.msg


def test_empty_pairs_are_skipped_and_counted_and_too_few_refused(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("en\tfr\n" + "hi\tsalut\n" * 12 + "\tvide\nempty\t\n", encoding="utf-8")
    data = load_texts(path, t2t_config())
    assert (len(data.texts), data.skipped_rows) == (12, 2)
    assert data.targets == ["salut"] * 12
    assert any("1 rows with an empty source in column 'en'" in w for w in data.warnings)
    assert any("1 rows with an empty target in column 'fr'" in w for w in data.warnings)
    assert check_config(path, t2t_config()) == []
    path.write_text("en\tfr\n" + "hi\tsalut\n" * 5 + "\tvide\n" * 20, encoding="utf-8")
    (p,) = check_config(path, t2t_config())
    assert p.loc == ["config", "source_column"]
    assert "only 5 usable pairs (20 skipped: empty source or target)" in p.msg


def test_long_pairs_are_truncated_with_a_count(tmp_path):
    path = tmp_path / "p.tsv"
    long = " ".join(["word"] * 30)
    path.write_text("en\tfr\n" + "hi\tsalut\n" * 20 + f"{long}\tmot\n" * 20, encoding="utf-8")
    rec = Recorder()
    train(t2t_config(max_steps=1, val_fraction=0.2), path, tmp_path / "run", rec)
    warnings = [m for k, m, _ in rec.events if k == "warning"]
    assert any(
        "training pairs are longer than model.max_length (16) and were truncated" in w for w in warnings
    )
    loaded = next(d for k, _, d in rec.events if k == "data_loaded")
    assert 0 < loaded["truncated_pairs"] <= 20


# ---- a tiny model that learns ----


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2t")
    path = write_pairs(tmp / "pairs.tsv", 3000)
    rec = Recorder()
    result = train(t2t_config(max_steps=300), path, tmp / "run", rec)
    return path, tmp / "run", result, rec


@pytest.mark.slow
def test_a_tiny_model_learns_to_translate(trained):
    path, run, result, rec = trained
    config = t2t_config()
    data = load_texts(path, config)
    _, fr = seq2seq.tokenizers(config)
    tokens = fr.tokenize(data.targets)
    counts = Counter(t for ts in tokens for t in [*ts, "<eos>"])
    total = sum(counts.values())
    unigram_entropy = -sum(c / total * math.log(c / total) for c in counts.values())
    val = [(p.step, p.key, p.value) for p in rec.metrics if p.split == "val"]
    first_loss = val[0][2]
    assert result.metrics["val_loss"] < 0.6 * unigram_entropy < first_loss  # ~2.4 against ~4.6
    # BLEU of the model's greedy outputs on the validation sample, against two trivial outputs.
    _, val_idx = split_indices(len(data.texts), config.training.val_fraction, config.training.seed)
    predictor = Predictor.load(run)
    sources = [data.texts[i] for i in val_idx]  # pairs the model never trained on
    references = [data.targets[i].lower() for i in val_idx]
    greedy = predictor.text_to_text(sources)
    copy_bleu, _ = seq2seq.bleu_chrf([s.lower() for s in sources], references)
    common = Counter(references).most_common(1)[0][0]
    common_bleu, _ = seq2seq.bleu_chrf([common] * len(references), references)
    model_bleu, model_chrf = seq2seq.bleu_chrf(greedy, references)
    assert model_bleu > max(copy_bleu, common_bleu) + 2.0, (model_bleu, copy_bleu, common_bleu)
    assert result.metrics["val_bleu"] > 2.0 and result.metrics["val_chrf"] > 15.0
    # Beam search finds outputs at least as good as greedy's.
    beam = predictor.text_to_text(sources, beam_size=4, length_penalty=1.0)
    beam_bleu, _ = seq2seq.bleu_chrf(beam, references)
    assert beam_bleu >= model_bleu, (beam_bleu, model_bleu)
    assert predictor.text_to_text(sources[:20], beam_size=4, use_cache=False) == beam[:20]
    assert predictor.text_to_text(sources[:20], use_cache=False) == greedy[:20]
    assert result.best is not None and result.best["metric"] == "val_bleu"


def test_resuming_is_exact(tmp_path):
    path = write_pairs(tmp_path / "pairs.tsv", 300)
    config = t2t_config(max_steps=12, eval_every=4, batch_size=16)
    train(config, path, tmp_path / "straight", Recorder())
    rec = Recorder(stop_at=5)  # should_stop is polled every 5 steps
    first = train(config, path, tmp_path / "resumed", rec)
    assert (first.status, first.steps) == ("stopped", 5)
    again = Recorder()
    result = train(config, path, tmp_path / "resumed", again)
    assert again.kinds()[:2] == ["data_loaded", "resumed"] and result.steps == 12
    a = ckpt.load_weights(tmp_path / "straight" / "checkpoints" / "step-00000012")
    b = ckpt.load_weights(tmp_path / "resumed" / "checkpoints" / "step-00000012")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    vocab = seq2seq.load_pair_vocab(tmp_path / "resumed" / "checkpoints" / "step-00000012")
    assert not vocab.shared and "salut" in vocab.target and "salut" not in vocab
