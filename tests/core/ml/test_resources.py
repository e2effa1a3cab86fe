"""``resources.processes`` (docs/design.md, "A job on many processes in the service"): checked where the
config is, naming the field and the fix."""

from __future__ import annotations

import pytest

from core.ml.config import config_from_dict
from core.ml.errors import ConfigError


def _config(processes: object, batch_size: int = 16, accum: int = 1) -> dict:
    training = {"batch_size": batch_size, "grad_accum_steps": accum}
    return {"task": "classification", "training": training, "resources": {"processes": processes}}


def test_processes_default_one_and_divisible_accepted() -> None:
    assert config_from_dict({"task": "classification"}).resources.processes == 1
    assert config_from_dict(_config(4)).resources.processes == 4


@pytest.mark.parametrize(
    ("processes", "batch_size", "accum", "says"),
    [
        (0, 16, 1, "greater than or equal to 1"),
        (3, 16, 1, "make batch_size 15 or 18"),
        (4, 16, 8, "lower grad_accum_steps or processes"),
    ],
)
def test_bad_processes_named_with_the_fix(processes: int, batch_size: int, accum: int, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config_from_dict(_config(processes, batch_size, accum))
    assert [p.loc for p in refused.value.problems] == [["resources", "processes"]]
    assert says in str(refused.value)
