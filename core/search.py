"""Hyperparameter search (docs/design.md, "Sweeps"): the search space, the next trial's parameters and
the early-stopping decisions, as pure functions over plain records. No database, no broker: the sweep's
state lives in jobformer's tables (core/db/store/sweeps.py reads it into :class:`TrialRecord` s and
writes the decisions back), and each decision rebuilds an in-memory Optuna study from those records.

- Sampling: ``random`` (Optuna's RandomSampler) and ``tpe`` (TPESampler, with the constant liar for the
  trials still running) are seeded from the sweep's seed and the trial's number, so the same seed gives
  the same trials; ``grid`` walks the cartesian product of the values in an order shuffled by the seed.
- Early stopping: ASHA, Optuna's SuccessiveHalvingPruner, asked once per trial and rung with the trial's
  metric at its first evaluation at or after the rung's step (``min_steps * reduction_factor**k``), so a
  decision does not depend on when the driver looked.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState, create_trial
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.ml.config import TrainConfig
from core.ml.errors import Problem

optuna.logging.set_verbosity(optuna.logging.WARNING)

Method = Literal["grid", "random", "tpe"]
Direction = Literal["maximize", "minimize"]
Scalar = str | int | float | bool | None

# The metrics a trial can be ranked by, per task, and which way is better.
METRICS: dict[str, dict[str, Direction]] = {
    "classification": {"val_f1_macro": "maximize", "val_accuracy": "maximize", "val_loss": "minimize"},
    "language_modeling": {"val_loss": "minimize", "val_perplexity": "minimize"},
}
DEFAULT_METRIC = {"classification": "val_f1_macro", "language_modeling": "val_loss"}
GRID_LIMIT = 10_000  # grid points checked one by one before anything starts


class ParameterSpec(BaseModel):
    """One swept config field: a list of ``values``, or a range ``min``..``max`` with a ``distribution``
    (``uniform``, ``log_uniform``, ``int``, ``int_log_uniform``)."""

    model_config = ConfigDict(extra="forbid")

    values: list[Scalar] | None = Field(None, min_length=1, max_length=1000, description="The choices.")
    distribution: Literal["uniform", "log_uniform", "int", "int_log_uniform"] | None = Field(
        None, description="For a range: how to draw from it (default uniform)."
    )
    min: float | None = Field(None, description="A range's lower end (inclusive).")
    max: float | None = Field(None, description="A range's upper end (inclusive).")

    @model_validator(mode="after")
    def _one_kind(self) -> ParameterSpec:
        is_range = self.min is not None or self.max is not None or self.distribution is not None
        if self.values is not None and is_range:
            raise ValueError("give either 'values' or a range ('distribution', 'min', 'max'), not both")
        if self.values is None:
            if self.min is None or self.max is None:
                raise ValueError("a range needs both 'min' and 'max' (or give 'values' instead)")
            if not self.min < self.max:
                raise ValueError(f"'min' ({self.min:g}) must be below 'max' ({self.max:g})")
            if self.distribution in ("log_uniform", "int_log_uniform") and self.min <= 0:
                raise ValueError(f"a log range needs 'min' > 0 (got {self.min:g})")
            if self.distribution in ("int", "int_log_uniform") and not (
                float(self.min).is_integer() and float(self.max).is_integer()
            ):
                raise ValueError("an int range needs whole numbers for 'min' and 'max'")
        return self

    def distribution_(self) -> BaseDistribution:
        """The Optuna distribution this spec draws from."""
        if self.values is not None:
            return CategoricalDistribution(self.values)
        assert self.min is not None and self.max is not None
        if self.distribution in ("int", "int_log_uniform"):
            return IntDistribution(int(self.min), int(self.max), log=self.distribution == "int_log_uniform")
        return FloatDistribution(self.min, self.max, log=self.distribution == "log_uniform")

    def grid_values(self) -> list[Scalar] | None:
        """The values a grid walks: the list, or every integer of an int range; None for a float range."""
        if self.values is not None:
            return list(self.values)
        if self.distribution in ("int", "int_log_uniform"):
            assert self.min is not None and self.max is not None
            return list(range(int(self.min), int(self.max) + 1))
        return None

    def extremes(self) -> list[Scalar]:
        """What must each make a valid config: every listed value, or both ends of the range (and for a
        float range a fraction just above ``min``, which an integer field refuses)."""
        if self.values is not None:
            return list(self.values)
        assert self.min is not None and self.max is not None
        if self.distribution in ("int", "int_log_uniform"):
            return [int(self.min), int(self.max)]
        return [self.min, self.max, math.nextafter(self.min, self.max)]


class EarlyStopping(BaseModel):
    """ASHA: at step ``min_steps * reduction_factor**k`` (rung k) a trial goes on only if its metric is in
    the top ``1 / reduction_factor`` of the trials that reached that rung so far."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["asha"] = Field("asha", description="Asynchronous successive halving.")
    min_steps: int = Field(ge=1, description="The first rung's step; set it to an evaluation step.")
    reduction_factor: int = Field(3, ge=2, le=16, description="Keep the top 1/reduction_factor per rung.")


# --- config paths -----------------------------------------------------------------------------------


def config_paths(model: type[BaseModel] = TrainConfig, prefix: str = "") -> list[str]:
    """Every leaf field of the training config as a dotted path (``training.learning_rate``)."""
    out = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += config_paths(sub, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``base`` with each dotted path set to its value (a new dict; ``base`` is left alone)."""
    config = copy.deepcopy(base)
    for path, value in params.items():
        node = config
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def _path_hint(path: str, known: set[str]) -> str:
    """The paths it was most likely meant to be: close spellings, else its section's fields, else all."""
    close = difflib.get_close_matches(path, sorted(known), n=3, cutoff=0.85)
    if close:
        return f"did you mean {' or '.join(close)}?"
    section = path.rpartition(".")[0]
    fields = sorted(k.removeprefix(section + ".") for k in known if section and k.startswith(section + "."))
    if fields:
        return f"{section} has: {', '.join(fields)}"
    return f"the config has: {', '.join(sorted(known))}"


def config_problem(config: dict[str, Any]) -> str | None:
    """Why ``config`` is not a valid TrainConfig (its first error), or None."""
    try:
        TrainConfig.model_validate(config)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else err["msg"]
    return None


def space_problems(
    base: dict[str, Any], parameters: dict[str, ParameterSpec], method: Method, max_jobs: int | None
) -> list[Problem]:
    """Everything wrong with a search space over ``base`` (a resolved config), each at
    ``["parameters", path]``: unknown paths, values or range ends that make an invalid config, a grid
    over a float range or smaller than ``max_jobs``, grid points that are invalid together."""
    known = set(config_paths())
    problems = []
    for path, spec in parameters.items():
        loc: list[str | int] = ["parameters", path]
        if path not in known:
            problems.append(Problem(loc, f"unknown config path; {_path_hint(path, known)}", "unknown_path"))
            continue
        for i, value in enumerate(spec.extremes()):
            why = config_problem(apply_params(base, {path: value}))
            if why is None:
                continue
            if spec.values is None and i == 2:  # only the fraction failed
                msg = 'an integer field: a float range draws fractions; use "distribution": "int"'
            else:
                msg = f"{value!r} makes an invalid config ({why}): change the range"
            problems.append(Problem(loc, msg, "invalid"))
            break
        if method == "grid" and spec.grid_values() is None:
            problems.append(
                Problem(loc, "a grid needs 'values' or an int range: list the values to try", "grid")
            )
    if problems or method != "grid":
        return problems
    points = grid_points(parameters, seed=0)
    if max_jobs is not None and max_jobs > len(points):
        problems.append(
            Problem(["max_jobs"], f"the grid has {len(points)} points: set max_jobs <= {len(points)}")
        )
    for point in points[:GRID_LIMIT]:
        why = config_problem(apply_params(base, point))
        if why is not None:
            problems.append(Problem(["parameters"], f"the grid point {point} is not a valid config ({why})"))
            break
    return problems


# --- sampling ---------------------------------------------------------------------------------------


@dataclass
class TrialRecord:
    """One trial as the search sees it: its parameters, state, and its metric at each evaluation step."""

    number: int
    params: dict[str, Any]
    state: Literal["running", "complete", "pruned", "failed"]
    values: dict[int, float] = field(default_factory=dict)  # step -> the sweep's metric at that step
    rungs_passed: int = 0

    def best(self, direction: Direction) -> float | None:
        """The best finite metric value so far (the trial's result), or None."""
        finite = [v for v in self.values.values() if math.isfinite(v)]
        if not finite:
            return None
        return max(finite) if direction == "maximize" else min(finite)


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number``: a function of the sweep's seed and the trial's number only."""
    return (seed * 1_000_003 + number * 7_919) % 2**32


def grid_points(parameters: dict[str, ParameterSpec], seed: int) -> list[dict[str, Any]]:
    """Every grid point, in an order shuffled by ``seed`` (a sweep cut short by max_jobs is a sample)."""
    paths = sorted(parameters)
    values = [parameters[p].grid_values() or [] for p in paths]
    points = [dict(zip(paths, combo, strict=True)) for combo in itertools.product(*values)]
    random.Random(seed).shuffle(points)
    return points


def suggest(
    method: Method,
    parameters: dict[str, ParameterSpec],
    *,
    seed: int,
    direction: Direction,
    trials: list[TrialRecord],
    number: int,
    max_jobs: int,
) -> dict[str, Any]:
    """The parameters of trial ``number`` given the trials so far."""
    if method == "grid":
        return grid_points(parameters, seed)[number]
    distributions = {path: spec.distribution_() for path, spec in parameters.items()}
    with warnings.catch_warnings():
        # constant_liar is "experimental" in Optuna 4 (not in 5): the warning would fail a strict run.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if method == "random":
            sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(
                seed=trial_seed(seed, number)
            )
        else:
            # Optuna's default of 10 random trials first would leave a small sweep nothing to model.
            startup = min(10, max(2, max_jobs // 3))
            sampler = optuna.samplers.TPESampler(
                seed=trial_seed(seed, number), n_startup_trials=startup, constant_liar=True
            )
        study = _study(direction, sampler, trials, distributions)
        return dict(study.ask(distributions).params)


_STATES = {
    "running": TrialState.RUNNING,
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
}


def _study(
    direction: Direction,
    sampler: optuna.samplers.BaseSampler | None,
    trials: list[TrialRecord],
    distributions: dict[str, BaseDistribution],
    attrs: dict[int, dict[str, Any]] | None = None,
    values: dict[int, dict[int, float]] | None = None,
) -> optuna.Study:
    """An in-memory study holding ``trials`` (``attrs``/``values``: system attrs and intermediate values
    to use instead of a trial's own, by number)."""
    study = optuna.create_study(direction=direction, sampler=sampler)
    for t in sorted(trials, key=lambda t: t.number):
        steps = (values or {}).get(t.number, t.values)
        state = _STATES[t.state]
        result = t.best(direction) if state == TrialState.COMPLETE else None
        if state == TrialState.COMPLETE and result is None:
            state = TrialState.FAIL  # it finished without a finite metric
        study.add_trial(
            create_trial(
                state=state,
                value=result,
                params={k: v for k, v in t.params.items() if k in distributions},
                distributions={k: d for k, d in distributions.items() if k in t.params},
                intermediate_values={s: v for s, v in steps.items() if math.isfinite(v)},
                system_attrs=(attrs or {}).get(t.number, {}),
            )
        )
    return study


# --- early stopping ---------------------------------------------------------------------------------


@dataclass
class RungDecision:
    """ASHA's answer for one trial at one rung: go on (``pruned`` False) or stop."""

    number: int
    rung: int  # the rung decided (when pruned: the one it failed)
    step: int  # the evaluation step whose value was compared
    value: float
    pruned: bool
    rungs_passed: int  # the trial's rungs passed after this decision
    competitors: int  # trials that reached this rung, this one included
    best: float | None  # the best value at this rung

    def message(self, metric: str, reduction_factor: int) -> str:
        best = f"{self.best:.4g}" if self.best is not None else "none"
        return (
            f"Pruned by ASHA at rung {self.rung} (step {self.step}): {metric} {self.value:.4g} is not in the "
            f"top 1/{reduction_factor} of the {self.competitors} trials that reached this rung (best {best})."
        )


def rung_value(trial: TrialRecord, rung_step: int) -> tuple[int, float] | None:
    """The trial's (step, value) at its first evaluation at or after ``rung_step``, or None."""
    steps = sorted(s for s in trial.values if s >= rung_step)
    return (steps[0], trial.values[steps[0]]) if steps else None


def asha_decisions(
    trials: list[TrialRecord], *, direction: Direction, early_stopping: EarlyStopping
) -> list[RungDecision]:
    """The rung decisions due for the running trials, in trial order: for each rung a running trial has
    reached and not yet passed, Optuna's SuccessiveHalvingPruner compares its value at the rung with the
    values every other trial had at that rung (a trial's rungs are read from its own curve, so a late
    look decides the same as a prompt one). A pruned trial gets no further decision; a passed rung is
    never decided again (ASHA promotes, it never demotes)."""
    min_steps, factor = early_stopping.min_steps, early_stopping.reduction_factor
    passed = {t.number: t.rungs_passed for t in trials}
    decisions = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state != "running":
            continue
        while (at := rung_value(trial, min_steps * factor ** passed[trial.number])) is not None:
            decision = _decide(trials, trial, passed, at, direction, early_stopping)
            decisions.append(decision)
            if decision.pruned:
                break
            passed[trial.number] = decision.rungs_passed
    return decisions


def _decide(
    trials: list[TrialRecord],
    trial: TrialRecord,
    passed: dict[int, int],
    at: tuple[int, float],
    direction: Direction,
    early_stopping: EarlyStopping,
) -> RungDecision:
    min_steps, factor = early_stopping.min_steps, early_stopping.reduction_factor
    rung = passed[trial.number]
    # Every trial's rung values as SuccessiveHalvingPruner records them ("completed_rung_k"); the trial
    # decided now carries only the rungs it passed, and its curve up to the rung's evaluation.
    attrs: dict[int, dict[str, Any]] = {}
    for t in trials:
        reached = passed[t.number] if t.number == trial.number else _rungs_reached(t, min_steps, factor)
        attrs[t.number] = {
            f"completed_rung_{k}": v
            for k in range(reached)
            if (found := rung_value(t, min_steps * factor**k)) is not None and math.isfinite(v := found[1])
        }
    key = f"completed_rung_{rung}"
    at_rung = [a[key] for n, a in attrs.items() if key in a and n != trial.number] + [at[1]]
    finite = [v for v in at_rung if math.isfinite(v)]
    best = (max(finite) if direction == "maximize" else min(finite)) if finite else None
    if not math.isfinite(at[1]):  # a diverged curve: nothing to compare
        return RungDecision(trial.number, rung, at[0], at[1], True, rung, len(at_rung), best)
    cut = {trial.number: {s: v for s, v in trial.values.items() if s <= at[0]}}
    study = _study(direction, None, trials, {}, attrs, cut)
    index = sorted(t.number for t in trials).index(trial.number)  # trials are added in number order
    pruned = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=min_steps, reduction_factor=factor, min_early_stopping_rate=0, bootstrap_count=0
    ).prune(study, study.get_trials(deepcopy=False)[index])
    # The pruner records each rung it decided (several when one evaluation covers more than one rung).
    recorded = sum(k.startswith("completed_rung_") for k in study.get_trials()[index].system_attrs)
    decided = recorded - 1 if pruned else recorded
    return RungDecision(
        trial.number, decided if pruned else rung, at[0], at[1], bool(pruned), decided, len(at_rung), best
    )


def _rungs_reached(trial: TrialRecord, min_steps: int, factor: int) -> int:
    """How many rungs the trial's curve reaches (a pruned trial: at most one past those it passed)."""
    k = 0
    while rung_value(trial, min_steps * factor**k) is not None:
        k += 1
        if trial.state == "pruned" and k > trial.rungs_passed:
            break
    return k
