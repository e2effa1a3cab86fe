"""core.ml.tokenize: spaCy and char tokenizers, the vocabulary."""

from __future__ import annotations

import json
import sys

import pytest

from core.ml.config import TokenizerConfig, TrainConfig
from core.ml.data import load_texts
from core.ml.errors import ConfigError
from core.ml.tokenize import Tokenizer, Vocab, build_tokenizer, language_problem, spacy_language_code


def test_spacy_english_words_lowercased():
    tok = build_tokenizer(TokenizerConfig())
    assert tok.tokenize(["Hello, World!  Don't   stop.", "   ", "A\tB\nC"]) == [
        ["hello", ",", "world", "!", "do", "n't", "stop", "."],
        [],
        ["a", "b", "c"],
    ]


def test_spacy_keeps_case_when_asked():
    tok = build_tokenizer(TokenizerConfig(lowercase=False))
    assert tok.tokenize(["Hello World"]) == [["Hello", "World"]]


def test_spacy_pipeline_is_cached_per_language():
    a = build_tokenizer(TokenizerConfig(language="de"))
    b = build_tokenizer(TokenizerConfig(language="de", lowercase=False))
    assert a._nlp is b._nlp
    assert a.tokenize(["Das Haus ist groß."]) == [["das", "haus", "ist", "groß", "."]]


def test_chinese_is_segmented_into_characters_without_jieba():
    tok = build_tokenizer(TokenizerConfig(language="zh"))
    assert tok._nlp.tokenizer.segmenter == "char"
    assert tok.tokenize(["很快，好吃 味道足"]) == [["很", "快", "，", "好", "吃", "味", "道", "足"]]
    assert "jieba" not in sys.modules and "spacy_pkuseg" not in sys.modules
    assert tok.detokenize(["很", "快", "<eos>", "好"]) == "很快\n好"


def test_char_tokenizer():
    tok = build_tokenizer(TokenizerConfig(kind="char", lowercase=False))
    assert tok.tokenize(["Ab c\n", ""]) == [["A", "b", " ", "c", "\n"], []]
    assert tok.detokenize(["A", "b", " ", "c"]) == "Ab c"
    assert build_tokenizer(TokenizerConfig(kind="char")).tokenize(["AB"]) == [["a", "b"]]


def test_detokenize_spacy_best_effort():
    tok = build_tokenizer(TokenizerConfig())
    assert tok.detokenize(["<cls>", "hello", "world", "<eos>", "again", "<pad>"]) == "hello world\nagain"


@pytest.mark.parametrize("language", ["qq", "english", "EN", "ja.tag_map", "en.stop", "../en"])
def test_unknown_language_names_the_field(language):
    with pytest.raises(ConfigError) as e:
        build_tokenizer(TokenizerConfig(language=language))
    assert e.value.code == "invalid_config"
    assert str(e.value).startswith(f"tokenizer.language {language!r} is not a language spaCy knows")
    assert [p.loc for p in e.value.problems] == [["config", "tokenizer", "language"]]
    assert "tokenizer.kind 'char'" in e.value.problems[0].msg


def test_a_dotted_language_code_imports_no_spacy_submodule():
    # issue 8: "ja.tag_map" made spacy.util.get_lang_class import spacy.lang.ja.tag_map (AttributeError, 500)
    for name in [m for m in sys.modules if m.startswith("spacy.lang.ja")]:
        del sys.modules[name]
    assert language_problem("ja.tag_map") is not None
    assert not [m for m in sys.modules if m.startswith("spacy.lang.ja")]


@pytest.mark.parametrize(
    "language,code", [("en", "en"), ("grc", "grc"), ("xx", "xx"), ("eng", "en"), ("fre", "fr")]
)
def test_language_codes_resolve_through_spacy(language, code):
    assert spacy_language_code(language) == code
    assert language_problem(language) is None


def test_unknown_kind():
    with pytest.raises(ConfigError, match="tokenizer.kind 'wordpiece' is unknown"):
        Tokenizer(kind="wordpiece")


def test_vocab_order_min_freq_and_max_vocab():
    lists = [["b", "a", "c", "a"], ["c", "b", "d"], ["a", "<unk>", "e"]]
    vocab = Vocab.build(lists, min_freq=1, max_vocab=100)
    assert vocab.itos == ["<pad>", "<unk>", "<cls>", "<eos>", "a", "b", "c", "d", "e"]
    assert (vocab.pad_id, vocab.unk_id, vocab.cls_id, vocab.eos_id) == (0, 1, 2, 3)
    assert Vocab.build(lists, min_freq=2, max_vocab=100).itos[4:] == ["a", "b", "c"]
    small = Vocab.build(lists, min_freq=1, max_vocab=6)
    assert len(small) == 6 and small.itos[4:] == ["a", "b"]
    assert small.encode(["a", "c", "zzz", "<eos>"]) == [4, 1, 1, 3]
    assert small.decode([4, 5, 3, 99]) == ["a", "b", "<eos>", "<unk>"]


def test_vocab_json_round_trip():
    vocab = Vocab.build([["x", "y", "x", "\u00e9"]], min_freq=1, max_vocab=10)
    again = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab and again.stoi == vocab.stoi
    with pytest.raises(ValueError, match="must start with"):
        Vocab.from_dict({"tokens": ["a", "b", "c", "d"]})


def test_real_files_tokenize(shared_data):
    sms = load_texts(
        shared_data / "sms_spam" / "SMSSpamCollection.tsv",
        TrainConfig(task="classification", text_column=1, label_column=0),
    )
    tokens = build_tokenizer(TokenizerConfig()).tokenize(sms.texts)
    assert len(tokens) == 5574 and all(tokens)
    assert tokens[0][:4] == ["go", "until", "jurong", "point"]
    waimai = load_texts(
        shared_data / "chinese" / "waimai_10k.csv",
        TrainConfig(task="classification", text_column="review", tokenizer={"language": "zh"}),
    )
    tokens = build_tokenizer(TokenizerConfig(language="zh", lowercase=False)).tokenize(waimai.texts)
    # Character segmentation: every non-space character is one token.
    assert [len(t) for t in tokens] == [sum(not c.isspace() for c in text) for text in waimai.texts]
