"""The sweep pages in a real browser (issue 11): a small sweep started through the API, then watched.

Debian's chromium through Playwright (as tests/ui/test_dashboard.py), against a real `jobformer serve` with
a key and one real `jobformer worker` on PostgreSQL and Redis, short heartbeats so the worker's reaper
drives the search every pass. Three trials of a tiny model, one at a time, ASHA from step 20: the sweeps
list links the sweep; its page fills the leaderboard while the trials run, its curves gain points, and
its status ends `succeeded` with every trial on the board, best first, each linking its job. Screenshots
go under tests/ui/screenshots/ (git-ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.procs import Service, wait_for
from tests.ui.browser import API_KEY, shot, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMEOUT_S = 240  # three trials of 150 steps on a busy 2-core CPU take about a minute

SWEEP = {
    "config": {
        "task": "classification",
        "text_column": 1,
        "label_column": 0,
        "tokenizer": {"kind": "char"},
        "model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "dim_feedforward": 64, "max_length": 64},
        # Long enough that a page polling every 2 s sees a trial's curve grow on a quiet machine too.
        "training": {"max_steps": 150, "batch_size": 32, "warmup_steps": 5, "eval_every": 10, "seed": 0},
        "device": "cpu",
    },
    "parameters": {"training.learning_rate": {"distribution": "log_uniform", "min": 1e-3, "max": 3e-2}},
    "method": "random",
    "max_jobs": 3,
    "max_parallel": 1,
    "seed": 7,
    "early_stopping": {"type": "asha", "min_steps": 20, "reduction_factor": 2},
}
# Predicting "ham" for every message: macro-F1 of the majority class (86.6% of the file).
MAJORITY_F1 = 0.464


@pytest.fixture
def service_options() -> dict:
    """Short heartbeats (tests/integration/procs.py, ``start_service``): the worker's reaper advances the
    sweep every ~1.5 s (it runs every heartbeat_timeout / 4)."""
    return {"api_keys": (API_KEY,)}


def start_sweep(api: httpx.Client, shared_data: Path) -> str:
    sms = shared_data / "sms_spam" / "SMSSpamCollection.tsv"
    r = api.post("/datasets", files={"file": (sms.name, sms.read_bytes(), "text/tab-separated-values")})
    assert r.status_code == 201, r.text
    r = api.post("/sweeps", json={"dataset_id": r.json()["id"], **SWEEP})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_the_sweep_page_fills_while_the_trials_run(page: Any, service: Service, shared_data: Path) -> None:
    from playwright.sync_api import expect

    sweep_id = start_sweep(service.client(), shared_data)
    sign_in(page)

    # The list: the sweep, its method, running; its link opens the sweep page.
    page.click("nav >> text=Sweeps")
    expect(page.locator("nav a.active")).to_have_text("Sweeps")
    listed = page.locator(f"#sweeps-table [data-sweep='{sweep_id}']")
    expect(listed).to_contain_text("random + ASHA")
    expect(listed.locator("[data-status]")).to_have_text("running")
    listed.locator("a").click()
    page.wait_for_url(f"**/#/sweeps/{sweep_id}")

    # While it runs: the leaderboard gains trials and the metric chart gains points.
    status = page.locator("#view .title-row [data-status]")
    expect(status).to_have_text("running")
    expect(page.locator("#cancel-sweep")).to_be_visible()
    expect(page.locator("#search-space [data-parameter='training.learning_rate']")).to_contain_text(
        "log_uniform 0.001 … 0.03"
    )
    chart = page.locator("#sweep-charts [data-chart='Validation macro-F1']")
    rows = page.locator("#leaderboard-table tbody tr[data-trial]")
    seen: list[tuple[int, int]] = []

    def grew() -> bool:
        running = status.inner_text() == "running"
        now = (rows.count(), int(chart.get_attribute("data-points") or 0) if chart.count() else 0)
        if running and now[1] and (not seen or now > seen[-1]):
            seen.append(now)
        grown = len({n for n, _ in seen}) >= 2 and len({p for _, p in seen}) >= 2
        return grown or not running

    wait_for(grew, "the leaderboard and the curves to grow while the sweep runs", timeout=TIMEOUT_S)
    assert len({n for n, _ in seen}) >= 2, f"saw (trials, points) only at {seen} while running"
    assert len({p for _, p in seen}) >= 2, f"the curves never gained points while running: {seen}"
    assert [p for _, p in seen] == sorted(p for _, p in seen), seen
    shot(page, "sweep-running")

    # The end: succeeded, every trial on the board once, best first, each linking its job.
    expect(status).to_have_text("succeeded", timeout=TIMEOUT_S * 1000)
    expect(page.locator("#cancel-sweep")).to_be_hidden()
    expect(rows).to_have_count(3)
    expect(page.locator("#sweep-trials")).to_contain_text("3 / 3")
    numbers = [int(rows.nth(i).get_attribute("data-trial")) for i in range(3)]
    assert sorted(numbers) == [0, 1, 2]
    metrics = [float(rows.nth(i).locator("[data-metric]").get_attribute("data-metric")) for i in range(3)]
    assert metrics == sorted(metrics, reverse=True), metrics
    assert metrics[0] > MAJORITY_F1 + 0.1, "the best trial learned: it beats predicting the majority class"
    expect(rows.first.locator(".badge-best")).to_have_text("best")
    states = [rows.nth(i).get_attribute("data-state") for i in range(3)]
    assert set(states) <= {"succeeded", "pruned"}, states
    for i, state in enumerate(states):
        reason = rows.nth(i).locator(".pruned-reason").inner_text()
        assert reason.startswith("Pruned by ASHA") if state == "pruned" else reason == "", (state, reason)
    # One curve per trial, each with its evaluations (a pruned trial's stop short).
    expect(chart).not_to_have_attribute("data-points", "0")
    assert int(chart.get_attribute("data-points")) >= 3 * 2
    legend = page.locator("#sweep-charts [data-chart='Validation macro-F1'] .u-legend .u-series")
    expect(legend).to_have_count(4)  # the step and the three trials
    shot(page, "sweep")

    # The best trial's link opens its job; a pruned trial's job was cancelled (ASHA's cancel can land
    # after a pruned trial logged a better evaluation than the survivors, so the best may be pruned).
    best_job = rows.first.locator("a").get_attribute("href").rsplit("/", 1)[1]
    rows.first.locator("a").click()
    page.wait_for_url(f"**/#/jobs/{best_job}")
    job_status = {"succeeded": "succeeded", "pruned": "cancelled"}[states[0]]
    expect(page.locator("#view .title-row [data-status]")).to_have_text(job_status)

    page.click("nav >> text=Sweeps")
    expect(listed.locator("[data-status]")).to_have_text("succeeded")
    expect(listed).to_contain_text("3 / 3")
    shot(page, "sweeps")
