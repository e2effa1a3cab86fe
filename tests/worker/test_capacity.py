"""Capacity queues (docs/design.md, "Queues"): where a job asking for N processes waits, which queues a
worker offering C processes consumes, and the queue names the settings refuse because they would clash."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import broker
from core.settings import Settings


def test_a_job_waits_where_only_big_enough_workers_look():
    assert broker.capacity_queue("gpu", 1) == "gpu"
    assert broker.capacity_queue("gpu", 4) == "gpu.p4"
    assert broker.consumed_queues("gpu", 1) == ["gpu"]
    assert broker.consumed_queues("gpu", 3) == ["gpu", "gpu.p2", "gpu.p3"]
    for processes in range(1, 9):
        for capacity in range(1, 9):
            served = broker.capacity_queue("q", processes) in broker.consumed_queues("q", capacity)
            assert served == (processes <= capacity), (processes, capacity)
    # another queue's capacity queues are never consumed
    assert "cpu.p2" not in broker.consumed_queues("gpu", 8)


@pytest.mark.parametrize(
    ("config", "processes"),
    [
        (None, 1),
        ({}, 1),
        ({"resources": {}}, 1),
        ({"resources": {"processes": 1}}, 1),
        ({"resources": {"processes": 3}}, 3),
    ],
)
def test_job_processes(config, processes):
    assert broker.job_processes(config) == processes


def test_worker_capacity_setting_wins_over_the_hardware():
    assert broker.worker_capacity(Settings(worker_processes=3)) == 3
    assert broker.worker_capacity(Settings()) == broker.local_processes() >= 1


@pytest.mark.parametrize("env", [{"queue_name": "gpu.p2"}, {"queues": "cpu,cpu.p4", "queue_name": "cpu"}])
def test_queue_names_that_look_like_capacity_queues_are_refused(env):
    with pytest.raises(ValidationError, match="capacity queue"):
        Settings(**env)
    Settings(queue_name="gpu.p", queues="gpu.p,cpu.px")  # not a capacity queue's name
