"""core/search.py alone: the space's checks, the samplers' determinism and ASHA's decisions (docs/design.md,
"Sweeps"), on plain records, with no database."""

from __future__ import annotations

import math
import re

import pytest

from core.ml.config import TrainConfig
from core.search import (
    EarlyStopping,
    ParameterSpec,
    TrialRecord,
    apply_params,
    asha_decisions,
    config_paths,
    grid_points,
    space_problems,
    suggest,
)

BASE = TrainConfig.model_validate({"task": "classification"}).model_dump(mode="json")
SPACE = {
    "training.learning_rate": ParameterSpec(distribution="log_uniform", min=1e-4, max=3e-3),
    "model.n_layers": ParameterSpec(values=[1, 2, 4]),
}
ASHA = EarlyStopping(min_steps=20, reduction_factor=2)


def test_config_paths_and_apply_params():
    paths = config_paths()
    assert {"task", "training.learning_rate", "model.n_layers", "tokenizer.kind"} <= set(paths)
    assert "training" not in paths
    config = apply_params(BASE, {"training.learning_rate": 0.002, "model.n_layers": 4})
    assert (config["training"]["learning_rate"], config["model"]["n_layers"]) == (0.002, 4)
    assert BASE["training"]["learning_rate"] == 0.001  # left alone


@pytest.mark.parametrize(
    ("spec", "msg"),
    [
        ({"values": [1], "min": 1, "max": 2}, "give either 'values' or a range"),
        ({"min": 2, "max": 1}, "'min' (2) must be below 'max' (1)"),
        ({"distribution": "log_uniform", "min": 0, "max": 1}, "a log range needs 'min' > 0"),
        ({"distribution": "int", "min": 1.5, "max": 3}, "an int range needs whole numbers"),
        ({"max": 3}, "a range needs both 'min' and 'max'"),
    ],
)
def test_a_spec_that_cannot_be_drawn_from_is_refused(spec, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        ParameterSpec.model_validate(spec)


def test_space_problems_name_each_parameter():
    problems = space_problems(
        BASE,
        {
            "model.n_layer": ParameterSpec(values=[1]),
            "training.batch_size": ParameterSpec(min=8, max=64),
            "model.dropout": ParameterSpec(values=[0.0, 1.5]),
            "training.learning_rate": SPACE["training.learning_rate"],
        },
        "random",
        None,
    )
    assert [(p.loc, p.msg) for p in problems] == [
        (["parameters", "model.n_layer"], "unknown config path; did you mean model.n_layers?"),
        (
            ["parameters", "training.batch_size"],
            'an integer field: a float range draws fractions; use "distribution": "int"',
        ),
        (
            ["parameters", "model.dropout"],
            "1.5 makes an invalid config (model.dropout: Input should be less than 1): change the range",
        ),
    ]
    assert space_problems(BASE, SPACE, "random", 12) == []


def test_a_grid_needs_values_and_enough_points():
    assert [p.msg for p in space_problems(BASE, SPACE, "grid", None)] == [
        "a grid needs 'values' or an int range: list the values to try"
    ]
    space = {
        "model.n_layers": ParameterSpec(values=[1, 2]),
        "training.batch_size": ParameterSpec(distribution="int", min=8, max=9),
    }
    assert [p.msg for p in space_problems(BASE, space, "grid", 5)] == [
        "the grid has 4 points: set max_jobs <= 4"
    ]
    # points that are valid alone but not together
    clash = {"model.d_model": ParameterSpec(values=[128, 96]), "model.n_heads": ParameterSpec(values=[4, 64])}
    assert [p.loc for p in space_problems(BASE, clash, "grid", None)] == [["parameters"]]


def test_a_grid_visits_every_point_once_in_a_seeded_order():
    space = {
        "model.n_layers": ParameterSpec(values=[1, 2, 4]),
        "training.batch_size": ParameterSpec(distribution="int", min=8, max=9),
    }
    points = [
        suggest("grid", space, seed=5, direction="maximize", trials=[], number=n, max_jobs=6)
        for n in range(6)
    ]
    assert sorted((p["model.n_layers"], p["training.batch_size"]) for p in points) == [
        (n, b) for n in (1, 2, 4) for b in (8, 9)
    ]
    assert points == grid_points(space, seed=5)
    assert grid_points(space, seed=6) != points


def test_random_trials_depend_on_the_seed_and_the_number_only():
    def draw(seed: int, number: int, trials: list[TrialRecord]) -> dict:
        return suggest(
            "random", SPACE, seed=seed, direction="maximize", trials=trials, number=number, max_jobs=12
        )

    other = [TrialRecord(0, {"training.learning_rate": 0.001, "model.n_layers": 2}, "complete", {20: 0.9})]
    assert draw(1, 3, []) == draw(1, 3, other)
    assert draw(1, 3, []) != draw(1, 4, []) != draw(2, 3, [])
    drawn = [draw(1, n, [])["training.learning_rate"] for n in range(20)]
    assert all(1e-4 <= lr <= 3e-3 for lr in drawn)
    # log-uniform: about as many draws below the geometric middle as above it
    assert 5 <= sum(lr < math.sqrt(1e-4 * 3e-3) for lr in drawn) <= 15


def test_tpe_moves_towards_the_trials_that_did_well():
    space = {"training.learning_rate": ParameterSpec(distribution="log_uniform", min=1e-4, max=1e-1)}
    # The metric peaks at lr = 1e-2; ten trials spread over the range, measured.
    spread = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1]
    trials = [
        TrialRecord(n, {"training.learning_rate": lr}, "complete", {100: -abs(math.log10(lr) + 2)})
        for n, lr in enumerate(spread)
    ]
    drawn = [
        suggest("tpe", space, seed=0, direction="maximize", trials=trials, number=10 + k, max_jobs=20)[
            "training.learning_rate"
        ]
        for k in range(10)
    ]
    near = sum(abs(math.log10(lr) + 2) < 0.75 for lr in drawn)
    # A random draw lands within 0.75 decades of 1e-2 half the time (1.5 of 3 decades); TPE does better.
    assert near >= 8, drawn
    again = suggest("tpe", space, seed=0, direction="maximize", trials=trials, number=10, max_jobs=20)
    assert again["training.learning_rate"] == drawn[0]


def record(number: int, values: dict[int, float], state: str = "running", rungs: int = 0) -> TrialRecord:
    return TrialRecord(number, {}, state, values, rungs)  # type: ignore[arg-type]


def test_asha_keeps_the_top_share_at_each_rung():
    trials = [record(0, {20: 0.9, 40: 0.95}, "complete"), record(1, {20: 0.5}), record(2, {20: 0.95})]
    decisions = asha_decisions(trials, direction="maximize", early_stopping=ASHA)
    assert [(d.number, d.rung, d.step, d.pruned, d.rungs_passed, d.competitors) for d in decisions] == [
        (1, 0, 20, True, 0, 3),
        (2, 0, 20, False, 1, 3),
    ]
    assert decisions[0].message("val_f1_macro", 2) == (
        "Pruned by ASHA at rung 0 (step 20): val_f1_macro 0.5 is not in the top 1/2 of the 3 trials that "
        "reached this rung (best 0.95)."
    )


def test_asha_compares_the_value_at_the_rung_whenever_it_looks():
    # Trial 1 was behind at step 20 and caught up by step 60: a late look still judges step 20.
    trials = [record(0, {20: 0.9, 40: 0.92}, "complete"), record(1, {20: 0.4, 40: 0.8, 60: 0.99})]
    [decision] = asha_decisions(trials, direction="maximize", early_stopping=ASHA)
    assert (decision.number, decision.step, decision.value, decision.pruned) == (1, 20, 0.4, True)


def test_asha_promotes_the_first_alone_and_never_demotes():
    alone = asha_decisions([record(0, {20: 0.1})], direction="maximize", early_stopping=ASHA)
    assert [(d.pruned, d.rungs_passed) for d in alone] == [(False, 1)]
    # Passed rung 0 before; a better trial arriving later does not undo that. Rung 1 (step 40) is due.
    trials = [record(0, {20: 0.1, 40: 0.2}, rungs=1), record(1, {20: 0.9, 40: 0.95}, "complete")]
    [decision] = asha_decisions(trials, direction="maximize", early_stopping=ASHA)
    assert (decision.rung, decision.step, decision.pruned) == (1, 40, True)


def test_asha_minimizes_a_loss_and_prunes_a_diverged_curve():
    trials = [
        record(0, {20: 0.3}, "complete"),
        record(1, {20: 0.9}),
        record(2, {20: 0.2}),
        record(3, {20: math.nan}),
    ]
    decisions = asha_decisions(trials, direction="minimize", early_stopping=ASHA)
    assert [(d.number, d.pruned) for d in decisions] == [(1, True), (2, False), (3, True)]


def test_asha_walks_several_rungs_when_one_evaluation_covers_them():
    # Evaluations every 50 steps, rungs at 20, 40, 80: step 50 answers rungs 0 and 1 at once.
    trials = [record(0, {50: 0.9, 100: 0.9})]
    decisions = asha_decisions(trials, direction="maximize", early_stopping=ASHA)
    assert [(d.rung, d.step, d.pruned) for d in decisions][-1][1:] == (100, False)
    assert decisions[-1].rungs_passed == 3
