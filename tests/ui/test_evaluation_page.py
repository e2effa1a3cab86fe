"""The job page's evaluation report in a real browser (issue 10; docs/design.md, "Evaluations and batch
predictions"). A real `jobformer serve` and `jobformer worker`: the SMS file split in two files written
here (train, test), a tiny classifier trained with the test set through the API; the page, open while it
trains, shows the "Evaluation" section once the worker has evaluated the best checkpoint: the metrics
(above the majority class), the per-class table and the confusion matrix as a heatmap whose counts are the
API's. The new-job form's "Test set" drop-down sends `test_dataset_id`. Screenshot under
tests/ui/screenshots/ (git-ignored).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.procs import Service
from tests.ui.browser import shot, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIMEOUT_S = 180  # 100 steps and an evaluation of 800 rows on a busy 2-core CPU
TEST_ROWS = 800
CONFIG = {
    "task": "classification",
    "text_column": "text",
    "label_column": "label",
    "tokenizer": {"kind": "char"},
    "model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "dim_feedforward": 64, "max_length": 64},
    "training": {
        "max_steps": 100,
        "batch_size": 32,
        "learning_rate": 0.005,
        "warmup_steps": 5,
        "eval_every": 25,
    },
    "device": "cpu",
}


def split_sms(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The SMS file's last TEST_ROWS lines as the test file, the rest as the training file, both with a
    header naming the columns."""
    lines = (shared_data / "sms_spam" / "SMSSpamCollection.tsv").read_bytes().splitlines(keepends=True)
    train, test = tmp_path / "sms-train.tsv", tmp_path / "sms-test.tsv"
    header = b"label\ttext\n"
    train.write_bytes(header + b"".join(lines[:-TEST_ROWS]))
    test.write_bytes(header + b"".join(lines[-TEST_ROWS:]))
    return train, test


def upload(api: httpx.Client, path: Path) -> str:
    r = api.post("/datasets", files={"file": (path.name, path.read_bytes(), "text/tab-separated-values")})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait_for_evaluation(api: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        job = api.get(f"/jobs/{job_id}").json()
        assert job["status"] not in ("failed", "cancelled"), job
        ev = job.get("test_evaluation")
        if ev and ev["status"] in ("succeeded", "failed", "cancelled"):
            run = api.get(ev["url"]).json()
            assert run["status"] == "succeeded", run
            return run
        time.sleep(1)
    raise AssertionError(f"job {job_id}: no test evaluation within {TIMEOUT_S} s: {job}")


def test_the_job_page_shows_the_test_report_as_a_heatmap(
    page: Any, service: Service, shared_data: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    train_path, test_path = split_sms(shared_data, tmp_path)
    api = service.client()
    train_id, test_id = upload(api, train_path), upload(api, test_path)
    r = api.post("/jobs", json={"dataset_id": train_id, "test_dataset_id": test_id, "config": CONFIG})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    sign_in(page)
    page.goto(f"/#/jobs/{job_id}")  # open while it trains: the section fills in when the report lands
    expect(page.locator("#view .title-row [data-status]")).to_be_visible()

    run = wait_for_evaluation(api, job_id)
    report = run["report"]
    labels, matrix = report["labels"], report["confusion_matrix"]
    # It learned: better than calling every message the majority class.
    majority = max(sum(row) for row in matrix) / report["scored_rows"]
    assert report["scored_rows"] == TEST_ROWS and report["accuracy"] > majority

    section = page.locator(f"#evaluations [data-evaluation='{run['id']}']")
    expect(section).to_be_visible(timeout=30_000)
    expect(section.locator("[data-status]").first).to_have_text("succeeded")
    assert section.get_attribute("data-test") == "true"
    cells = section.locator(".heat-cell")
    expect(cells).to_have_count(len(labels) ** 2)
    shown = {
        (c.get_attribute("data-true"), c.get_attribute("data-predicted")): int(c.inner_text())
        for c in cells.all()
    }
    assert shown == {(t, p): matrix[i][j] for i, t in enumerate(labels) for j, p in enumerate(labels)}
    axis = section.locator(".heatmap .heat-label")
    assert [a.inner_text() for a in axis.all()] == labels + labels  # predicted across, true down
    # A cell is shaded by its share of the row: the row's largest count is its darkest cell.
    for i, t in enumerate(labels):
        alphas = [
            float(
                cells.nth(i * len(labels) + j)
                .evaluate("e => getComputedStyle(e).backgroundColor")
                .split(",")[-1][:-1]
            )
            for j in range(len(labels))
        ]
        assert alphas.index(max(alphas)) == matrix[i].index(max(matrix[i])), (t, alphas)
    for name in labels:
        row = section.locator(f"tr[data-class='{name}'] td")
        expect(row.nth(4)).to_have_text(str(report["per_class"][name]["support"]))
    expect(section.locator(".eval-stats")).to_contain_text(f"{report['accuracy']:.4g}"[:5])
    wrong = report["most_confidently_wrong"]
    if wrong:
        expect(section.locator(".wrong-examples tbody tr")).to_have_count(len(wrong))
        expect(section.locator(".wrong-examples tbody tr").first).to_contain_text(wrong[0]["predicted"])
    section.scroll_into_view_if_needed()
    shot(page, "job-evaluation")

    # The new-job form: "Test set" lists the datasets, preset from the job; its choice is sent.
    page.goto(f"/#/new?from={job_id}")
    expect(page.locator("#f-test_dataset_id option")).to_have_count(3)  # none, and the two files
    assert page.input_value("#f-test_dataset_id") == test_id
    page.select_option("#f-test_dataset_id", train_id)
    with page.expect_request(lambda r: r.url.endswith("/jobs") and r.method == "POST") as sent:
        page.click("#start-job")
    assert sent.value.post_data_json["test_dataset_id"] == train_id
    page.wait_for_url("**/#/jobs/*")
    new_id = page.url.rsplit("/", 1)[1]
    assert api.get(f"/jobs/{new_id}").json()["test_dataset_id"] == train_id
