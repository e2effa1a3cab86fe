"""Evaluations and batch predictions of a text-to-text model (issue 13; docs/design.md "Text to text" and
"Evaluations and batch predictions"): a tiny model trained on a slice of the English-French pairs, then
`evaluate_file` on pairs it never saw (its loss well under the uniform guess, its BLEU above copying the
source, BLEU/chrF those of the predictor's own greedy outputs), on exactly its validation pairs (training's
val_loss and val_bleu again), `predict_file` writing each source's output, and `jobformer evaluate`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from core.ml import seq2seq
from core.ml.batch import predict_file
from core.ml.config import TrainConfig
from core.ml.data import load_texts, split_indices
from core.ml.errors import DataError
from core.ml.evaluation import evaluate_file
from core.ml.predict import Predictor
from core.ml.train import train
from tests.core.ml._tiny import Recorder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAIRS = Path("/work/shared/data/translation/eng_fra.tsv")
STEPS = 300


def write_pairs(path: Path, test: bool, header: str = "en\tfr") -> Path:
    """Of the first 2,000 pairs (the shortest), every tenth (test) or the others (training)."""
    with PAIRS.open(encoding="utf-8") as f:
        lines = [line.rstrip("\n") for i, line in zip(range(2000), f, strict=False) if (i % 10 == 0) == test]
    path.write_text(header + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def config() -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "task": "text_to_text",
            "source_column": "en",
            "target_column": "fr",
            "target_tokenizer": {"language": "fr"},
            "model": {"d_model": 64, "n_heads": 2, "n_layers": 1, "dim_feedforward": 128, "max_length": 12},
            "training": {
                "max_steps": STEPS,
                "batch_size": 32,
                "learning_rate": 5e-3,
                "warmup_steps": 10,
                "eval_every": 100,
                "seed": 0,
            },
            "device": "cpu",
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2t-runs")
    path = write_pairs(tmp / "train.tsv", test=False)
    rec = Recorder()
    train(config(), path, tmp / "run", rec)
    # A test file the model never saw, its columns named otherwise: the run names them.
    test = write_pairs(tmp / "test.tsv", test=True, header="english\tfrench")
    return tmp, path, test, rec


def test_an_evaluation_scores_loss_bleu_and_chrf_of_the_greedy_outputs(trained):
    tmp, _, test, _ = trained
    predictor = Predictor.load(tmp / "run")
    with pytest.raises(DataError, match="column 'fr' not found"):
        evaluate_file(predictor, test)
    seen: list[tuple[int, int]] = []
    report = evaluate_file(
        predictor,
        test,
        text_column="english",
        label_column="french",
        on_progress=lambda d, t: seen.append((d, t)),
    )
    assert report["task"] == "text_to_text" and report["rows"] == 200 and seen[-1] == (200, 200)
    data = load_texts(
        test, config().model_copy(update={"source_column": "english", "target_column": "french"})
    )
    references = [t.lower() for t in data.targets]
    outputs = predictor.text_to_text(data.texts)
    assert (report["bleu"], report["chrf"]) == pytest.approx(seq2seq.bleu_chrf(outputs, references))
    assert report["examples"][0] == {
        "source": data.texts[0],
        "reference": references[0],
        "output": outputs[0],
    }
    # It learned: loss well under guessing uniformly over the target vocabulary, chrF above copying the
    # source and above answering every source with the commonest target (BLEU of so tiny a model is ~1).
    assert report["loss"] < 0.7 * math.log(len(predictor.vocab.target)), report["loss"]
    _, copy_chrf = seq2seq.bleu_chrf([s.lower() for s in data.texts], references)
    common = max(set(references), key=references.count)
    _, common_chrf = seq2seq.bleu_chrf([common] * len(references), references)
    assert report["chrf"] > max(copy_chrf, common_chrf) + 3.0, (report["chrf"], copy_chrf, common_chrf)


def test_evaluating_the_validation_pairs_gives_trainings_numbers(trained, tmp_path):
    tmp, path, _, rec = trained
    cfg = config()
    data = load_texts(path, cfg)
    _, val_idx = split_indices(len(data.texts), cfg.training.val_fraction, cfg.training.seed, None)
    assert len(val_idx) <= seq2seq.EVAL_SAMPLE  # training decoded every validation pair, as this does
    val = tmp_path / "val.tsv"
    val.write_text(
        "en\tfr\n" + "".join(f"{data.texts[i]}\t{data.targets[i]}\n" for i in val_idx), encoding="utf-8"
    )
    last = sorted((tmp / "run" / "checkpoints").glob(f"step-{STEPS:08d}*"))[0]
    report = evaluate_file(Predictor.load(last), val)
    at_end = {p.name: p.value for p in rec.metrics if p.split == "val" and p.step == STEPS}
    assert report["loss"] == pytest.approx(at_end["loss"], rel=1e-4)
    assert report["bleu"] == pytest.approx(at_end["bleu"], abs=1e-6)
    assert report["chrf"] == pytest.approx(at_end["chrf"], abs=1e-6)


def test_batch_predictions_write_each_sources_output(trained, tmp_path):
    tmp, _, test, _ = trained
    predictor = Predictor.load(tmp / "run")
    src = tmp_path / "in.tsv"
    src.write_text(test.read_text(encoding="utf-8") + "\tempty source\n", encoding="utf-8")
    out = tmp_path / "out.csv"
    with pytest.raises(DataError, match="column 'en' not found"):
        predict_file(predictor, src, out)
    assert predict_file(predictor, src, out, text_column="english") == 201
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["english", "french", "generated_text"]
    sources = [r["english"] for r in rows[:-1]]
    assert [r["generated_text"] for r in rows[:-1]] == predictor.text_to_text(sources)
    assert rows[-1]["generated_text"] == "" and rows[-1]["french"] == "empty source"


def test_jobformer_evaluate_reports_bleu_and_chrf(trained):
    tmp, _, test, _ = trained
    args = ["evaluate", str(tmp / "run"), str(test), "--text-column", "english", "--label-column", "french"]
    r = CliRunner().invoke(cli, [*args, "--json", "-q"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert (
        report["bleu"]
        == evaluate_file(Predictor.load(tmp / "run"), test, text_column="english", label_column="french")[
            "bleu"
        ]
    )
    r = CliRunner().invoke(cli, [*args, "-q"])
    assert r.exit_code == 0, r.output
    assert f"BLEU {report['bleu']:.2f}, chrF {report['chrf']:.2f}" in r.stdout
    r = CliRunner().invoke(cli, ["evaluate", str(tmp / "run"), str(test)])
    assert r.exit_code == 2 and "column 'fr' not found" in r.stderr
