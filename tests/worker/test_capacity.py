"""Capacity queues (docs/design.md, "Queues" and "Memory"): where a job asking for N processes and M GiB
waits, which queues a worker consumes for what it offers, and the queue names the settings refuse
because they would clash."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import broker
from core.settings import Settings


def test_a_job_waits_where_only_big_enough_workers_look():
    assert broker.capacity_queue("gpu", 1) == "gpu"
    assert broker.capacity_queue("gpu", 4) == "gpu.p4"
    assert broker.consumed_queues("gpu", broker.Offer(1, None)) == ["gpu"]
    assert broker.consumed_queues("gpu", broker.Offer(3, None)) == ["gpu", "gpu.p2", "gpu.p3"]
    for processes in range(1, 9):
        for capacity in range(1, 9):
            served = broker.capacity_queue("q", processes) in broker.consumed_queues(
                "q", broker.Offer(capacity, None)
            )
            assert served == (processes <= capacity), (processes, capacity)
    # another queue's capacity queues are never consumed
    assert "cpu.p2" not in broker.consumed_queues("gpu", broker.Offer(8, None))


def test_memory_tiers_route_a_job_to_workers_with_the_memory_for_it():
    assert broker.memory_tier(1.0) == broker.memory_tier(4.0) == 0  # the plain tier: every worker
    assert (broker.memory_tier(4.1), broker.memory_tier(6.0), broker.memory_tier(9.0)) == (6, 6, 12)
    assert broker.capacity_queue("q", 1, 12) == "q.m12"
    assert broker.capacity_queue("q", 2, 12) == "q.p2.m12"
    cpu, gpu = broker.Offer(2, 23.5), broker.Offer(2, 80.0, gpu=True)
    assert broker.consumed_queues("q", cpu) == [
        "q",
        "q.m6",
        "q.m8",
        "q.m12",
        "q.m16",
        "q.p2",
        "q.p2.m6",
        "q.p2.m8",
    ]  # a CPU job's processes share the machine's memory: 2 x 12 > 23.5
    assert "q.p2.m64" in broker.consumed_queues("q", gpu)  # each GPU has its own
    assert "q.p2.m96" not in broker.consumed_queues("q", gpu)
    # A worker whose memory is unknown takes the plain tier only.
    assert broker.consumed_queues("q", broker.Offer(2, None)) == ["q", "q.p2"]
    for tier in (0, *broker.capacity.MEMORY_TIERS[:12]):
        for processes in (1, 2, 3):
            for offer in (cpu, gpu, broker.Offer(3, 100.0), broker.Offer(1, 5.0)):
                served = broker.capacity_queue("q", processes, tier) in broker.consumed_queues("q", offer)
                assert served == broker.fits(offer, broker.Needs(processes, tier)), (processes, tier, offer)


def test_a_job_needs_its_stated_or_estimated_memory():
    assert broker.job_needs({"task": "classification"}) == broker.Needs(1, 0)
    stated = {"task": "classification", "resources": {"processes": 2, "memory_gb": 20}}
    assert broker.job_needs(stated) == broker.Needs(2, 24)
    big = {"task": "language_modeling", "model": {"d_model": 512, "n_layers": 8, "max_length": 512}}
    assert broker.job_needs(big).memory_tier >= 12  # the estimate: over ten GiB
    assert broker.job_needs({"not": "a config"}) == broker.Needs(1, 0)  # unreadable: routed as before


def test_worker_memory_setting_wins_over_the_hardware():
    assert broker.local_offer(Settings(worker_memory_gb=7.5, worker_processes=2)) == broker.Offer(2, 7.5)
    measured = broker.local_offer(Settings())
    assert measured.memory_gib is not None and 0.5 < measured.memory_gib < 1e6


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


@pytest.mark.parametrize(
    "env",
    [{"queue_name": "gpu.p2"}, {"queues": "cpu,cpu.p4", "queue_name": "cpu"}, {"queue_name": "gpu.m16"}],
)
def test_queue_names_that_look_like_capacity_queues_are_refused(env):
    with pytest.raises(ValidationError, match="capacity queue"):
        Settings(**env)
    Settings(queue_name="gpu.p", queues="gpu.p,cpu.px")  # not a capacity queue's name
