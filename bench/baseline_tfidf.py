"""The classic baseline (issue 12): TF-IDF + logistic regression against jobformer's defaults, side by side.

For every labelled set in ``../shared/data`` (docs/design.md, "Subword tokens and init_from"):

    sms      sms_spam/SMSSpamCollection.tsv      columns 1 (text), 0 (label)   English
    waimai   chinese/waimai_10k.csv              review, label                  Chinese
    dirty    dirty/spam_kaggle_cp1252.csv        v2, v1 (cp1252, spilled text)  English
    trec     trec/trec_train.csv -> trec_test.csv   text, label_coarse          English

Both sides read the file with ``core.ml.data.load_texts`` (the same rows jobformer trains on) and are
scored on the same rows: the validation split jobformer makes itself (``split_indices`` with the config's
seed and val_fraction, stratified), or for TREC-6 the file's own test file. The baseline is TF-IDF word
1-2-grams (character 1-3-grams for Chinese, which has no spaces) with sublinear tf, and scikit-learn's
LogisticRegression (C=10, lbfgs, up to 2000 iterations), fitted on the training split only. jobformer's side
is ``train()`` with its defaults (only the task, the columns and the language given), scored from the best
checkpoint through ``Predictor.probabilities``. Prints accuracy, macro-F1 and the wall seconds of each side
and the difference jobformer - baseline. Usage::

    python bench/baseline_tfidf.py [--set sms|waimai|dirty|trec ...] [--baseline-only]
                                   [--max-steps N] [--json]

scikit-learn comes with the ``dev`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.ml.threads import set_cpu_thread_defaults  # noqa: E402

set_cpu_thread_defaults()  # before torch loads, as the worker and the CLI do
DATA = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class DataSet:
    path: str
    text_column: str | int
    label_column: str | int
    language: str
    test_path: str | None = None


SETS = {
    "sms": DataSet("sms_spam/SMSSpamCollection.tsv", 1, 0, "en"),
    "waimai": DataSet("chinese/waimai_10k.csv", "review", "label", "zh"),
    "dirty": DataSet("dirty/spam_kaggle_cp1252.csv", "v2", "v1", "en"),
    "trec": DataSet("trec/trec_train.csv", "text", "label_coarse", "en", test_path="trec/trec_test.csv"),
}


def config_for(ds: DataSet, max_steps: int | None, overrides: dict | None = None):
    from core.ml.config import TrainConfig

    cfg: dict[str, Any] = {
        "task": "classification",
        "text_column": ds.text_column,
        "label_column": ds.label_column,
        "tokenizer": {"language": ds.language},
        "device": "cpu",
    }
    if max_steps is not None:
        cfg["training"] = {"max_steps": max_steps}
    return TrainConfig.model_validate(_merge(cfg, overrides or {}))


def _merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``, section by section (``--config '{"model": {"ngrams": 0}}'``)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def missing_files(ds: DataSet) -> list[str]:
    return [p for p in (ds.path, ds.test_path) if p is not None and not (DATA / p).is_file()]


def split(ds: DataSet, config) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train texts, train labels, scored texts, scored labels), as jobformer splits and scores them."""
    from core.ml.data import load_texts, split_indices

    data = load_texts(DATA / ds.path, config)
    assert data.labels is not None
    if ds.test_path is not None:
        test = load_texts(DATA / ds.test_path, config)
        assert test.labels is not None
        # jobformer trains on its own training split of the file; the baseline on the same rows
        tc = config.training
        train_idx, _ = split_indices(len(data.texts), tc.val_fraction, tc.seed, data.labels)
        return (
            [data.texts[i] for i in train_idx],
            [data.labels[i] for i in train_idx],
            test.texts,
            test.labels,
        )
    tc = config.training
    train_idx, val_idx = split_indices(len(data.texts), tc.val_fraction, tc.seed, data.labels)
    known = {data.labels[i] for i in train_idx}  # jobformer does not score labels absent from training
    val_idx = [i for i in val_idx if data.labels[i] in known]
    return (
        [data.texts[i] for i in train_idx],
        [data.labels[i] for i in train_idx],
        [data.texts[i] for i in val_idx],
        [data.labels[i] for i in val_idx],
    )


def held_out(
    ds: DataSet, config, split_seed: int, train_rows: int | None, work: Path
) -> tuple[Path, list[str], list[str], list[str], list[str]]:
    """The unseen-data check (``--split-seed``/``--train-rows``): rows held out with ``split_seed`` (or the
    set's test file) are scored; the rest, optionally a random ``train_rows`` of them, is written to a
    training file that jobformer reads whole (making its own validation split inside it) and that the
    baseline fits entirely. Returns (that file, train texts, train labels, scored texts, scored labels)."""
    import csv
    import random

    from core.ml.data import load_texts, split_indices

    data = load_texts(DATA / ds.path, config)
    assert data.labels is not None
    if ds.test_path is not None:
        test = load_texts(DATA / ds.test_path, config)
        assert test.labels is not None
        pool, x_test, y_test = list(range(len(data.texts))), test.texts, test.labels
    else:
        pool, test_idx = split_indices(len(data.texts), 0.1, split_seed, data.labels)
        x_test, y_test = [data.texts[i] for i in test_idx], [data.labels[i] for i in test_idx]
    if train_rows is not None and train_rows < len(pool):
        pool = random.Random(split_seed).sample(pool, train_rows)
    x_train, y_train = [data.texts[i] for i in pool], [data.labels[i] for i in pool]
    known = set(y_train)
    scored = [(x, y) for x, y in zip(x_test, y_test, strict=True) if y in known]
    path = work / "train.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(x_train, y_train, strict=True))
    return path, x_train, y_train, [x for x, _ in scored], [y for _, y in scored]


def scores(true: list[str], pred: list[str], seconds: float) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": round(float(accuracy_score(true, pred)), 4),
        "f1_macro": round(float(f1_score(true, pred, average="macro")), 4),
        "seconds": round(seconds, 1),
    }


def baseline(ds: DataSet, x_train, y_train, x_test, y_test) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    if ds.language == "zh":
        vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=1)
    else:
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True, min_df=1)
    clf = LogisticRegression(C=10.0, max_iter=2000)
    clf.fit(vec.fit_transform(x_train), y_train)
    pred = list(clf.predict(vec.transform(x_test)))
    return scores(y_test, pred, time.perf_counter() - t0)


def jobformer(train_path: Path, config, x_test, y_test) -> dict[str, float]:
    from core.ml.predict import Predictor
    from core.ml.train import train

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = train(config, train_path, out)
        predictor = Predictor.load(result.checkpoint or out)
        probs = predictor.probabilities(predictor.tokenizer.tokenize(x_test))
        pred = [predictor.labels[i] for i in probs.argmax(dim=1).tolist()]
    out_scores = scores(y_test, pred, time.perf_counter() - t0)
    out_scores["steps"] = result.steps
    return out_scores


def run_set(
    name: str,
    *,
    baseline_only: bool,
    max_steps: int | None,
    overrides: dict | None = None,
    split_seed: int | None = None,
    train_rows: int | None = None,
) -> dict[str, Any]:
    ds = SETS[name]
    missing = missing_files(ds)
    if missing:
        print(f"{name}: skipped: file missing ({', '.join(str(DATA / p) for p in missing)})", flush=True)
        return {"skipped": "file missing", "missing": missing}
    config = config_for(ds, max_steps, overrides)
    with tempfile.TemporaryDirectory() as work:
        if split_seed is None and train_rows is None:
            x_train, y_train, x_test, y_test = split(ds, config)
            train_path, scored_on = DATA / ds.path, "test file" if ds.test_path else "validation split"
        else:
            seed = split_seed if split_seed is not None else 0
            train_path, x_train, y_train, x_test, y_test = held_out(ds, config, seed, train_rows, Path(work))
            scored_on = "test file" if ds.test_path else f"held out, split seed {seed}"
            # the written file has the columns text and label
            config = config.model_copy(update={"text_column": "text", "label_column": "label"})
        row: dict[str, Any] = {"train_rows": len(x_train), "scored_rows": len(x_test), "scored_on": scored_on}
        row["baseline"] = b = baseline(ds, x_train, y_train, x_test, y_test)
        print(
            f"{name}: train={len(x_train)} scored={len(x_test)} ({scored_on}) "
            f"baseline acc={b['accuracy']:.4f} f1_macro={b['f1_macro']:.4f} seconds={b['seconds']}",
            flush=True,
        )
        if not baseline_only:
            row["jobformer"] = j = jobformer(train_path, config, x_test, y_test)
            print(
                f"{name}: jobformer acc={j['accuracy']:.4f} f1_macro={j['f1_macro']:.4f} "
                f"seconds={j['seconds']} steps={j['steps']} | jobformer - baseline: "
                f"acc {j['accuracy'] - b['accuracy']:+.4f} f1_macro {j['f1_macro'] - b['f1_macro']:+.4f}",
                flush=True,
            )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--set", dest="sets", action="append", choices=sorted(SETS), help="repeatable; default all"
    )
    p.add_argument("--baseline-only", action="store_true", help="skip jobformer's side")
    p.add_argument("--max-steps", type=int, default=None, help="cap jobformer's steps (smoke runs only)")
    p.add_argument("--json", action="store_true", help="also print one JSON line with every number")
    p.add_argument(
        "--config",
        default=None,
        help='JSON merged over jobformer\'s defaults, e.g. \'{"model": {"ngrams": 0}}\' (experiments)',
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="hold out 10%% of the rows with this seed (the test file where the set has one) and train both "
        "sides on a file of the rest: the unseen-data check",
    )
    p.add_argument("--train-rows", type=int, default=None, help="train on a random N of those rows")
    args = p.parse_args()
    overrides = json.loads(args.config) if args.config else None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average (1 min): {load:.2f}", flush=True)
    results = {
        name: run_set(
            name,
            baseline_only=args.baseline_only,
            max_steps=args.max_steps,
            overrides=overrides,
            split_seed=args.split_seed,
            train_rows=args.train_rows,
        )
        for name in (args.sets or list(SETS))
    }
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
