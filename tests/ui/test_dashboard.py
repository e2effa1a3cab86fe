"""The dashboard in a real browser, doing what a person does (issue 9).

Debian's chromium, driven by Playwright for Python (pointed at the system browser: nothing downloads one),
against a real `jobformer serve` with API keys and a real `jobformer worker` on PostgreSQL and Redis:
the page asks for a key; the SMS file is dropped on the upload zone; a job is started from the form (a bad
config first, whose error shows at its field); the loss chart gains points while it trains; the status
turns `succeeded`; a prediction is made in the page; a checkpoint is downloaded; two jobs are compared.
Each page's screenshot is saved under tests/ui/screenshots/ (git-ignored).
"""

from __future__ import annotations

import base64
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.integration.procs import wait_for
from tests.ui.browser import API_KEY, shot

pytestmark = [pytest.mark.integration]

TIMEOUT_MS = 180_000  # the job itself: a few hundred steps on a busy 2-core CPU

# The form's fields a person changes: a small model, a few hundred steps, evaluations often enough to see
# the curves grow (docs/design.md, "The dashboard").
FORM = {
    "tokenizer.max_vocab": "5000",
    "model.d_model": "32",
    "model.n_heads": "2",
    "model.n_layers": "1",
    "model.dim_feedforward": "64",
    "model.max_length": "48",
    "training.max_steps": "300",
    "training.learning_rate": "0.003",
    "training.warmup_steps": "10",
    "training.eval_every": "50",
    "device": "cpu",
}


def test_a_person_uploads_trains_watches_predicts_and_downloads(page: Any, shared_data: Path) -> None:
    from playwright.sync_api import expect

    # The server has keys: the page asks for one; a wrong one is refused there, the right one lets in.
    page.goto("/")
    expect(page.locator("#api-key")).to_be_visible()
    shot(page, "key")
    page.fill("#api-key", "not-the-key")
    page.click("text=Continue")
    expect(page.locator(".key-card .alert-error")).to_contain_text("invalid API key")
    page.fill("#api-key", API_KEY)
    page.click("text=Continue")
    expect(page.locator("#jobs-table")).to_contain_text("No jobs yet")

    # Upload: the SMS file dropped on the zone; the page shows what the server found.
    page.click("nav >> text=Datasets")
    sms = shared_data / "sms_spam" / "SMSSpamCollection.tsv"
    drop = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "text/tab-separated-values" }));
            return dt;
        }""",
        [sms.name, base64.b64encode(sms.read_bytes()).decode()],
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": drop})
    expect(page.locator("#dataset-rows")).to_have_text("5,574")
    expect(page.locator("#dataset-columns .chip")).to_have_text(["0", "1"])
    expect(page.locator("#dataset-preview tbody tr").first).to_contain_text("Go until jurong point")
    expect(page.locator("#upload-progress")).to_contain_text("Uploaded SMSSpamCollection.tsv")
    shot(page, "datasets")

    # New job from the dataset: the columns are drop-downs of its columns; a bad value is refused by the
    # API and its error shows at the field it names.
    page.click("#train-on-this")
    expect(page.locator("#f-text_column option")).to_have_count(2)
    page.select_option("#f-text_column", "1")
    page.select_option("#f-label_column", "0")
    for name, value in FORM.items():
        page.fill(f"[id='f-{name}']", value)
    page.fill("[id='f-training.learning_rate']", "0")
    page.click("#start-job")
    field_error = page.locator("[data-error-for='training.learning_rate']")
    expect(field_error).to_contain_text("greater than 0")
    expect(page.locator("[data-field='training.learning_rate']")).to_have_class("field invalid")
    shot(page, "new-job-error")
    page.fill("[id='f-training.learning_rate']", FORM["training.learning_rate"])
    page.click("#json-tab")
    config_json = page.input_value("#config-json")
    assert '"text_column": 1' in config_json and '"max_steps": 300' in config_json
    streams: list[tuple[str, int, str]] = []
    page.on(
        "response",
        lambda r: r.url.endswith("/stream") and streams.append((r.url, r.status, r.headers["content-type"])),
    )
    polls: list[str] = []
    page.on("request", lambda r: "/metrics?since_step=" in r.url and polls.append(r.url))
    page.click("#start-job")
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]

    # The job page: the loss chart gains points while the job runs.
    loss = page.locator("[data-chart='Loss']")
    seen: list[int] = []

    def chart_grew() -> bool:
        status = page.get_attribute("#view .title-row [data-status]", "data-status")
        points = int(loss.get_attribute("data-points") or 0)
        if status == "running" and points and (not seen or points > seen[-1]):
            seen.append(points)
        return len(seen) >= 2 or status in ("succeeded", "failed", "cancelled")

    wait_for(chart_grew, "the loss chart to gain points while the job runs", timeout=TIMEOUT_MS / 1000)
    assert len(seen) >= 2, f"saw the loss chart only at {seen} points while running"
    shot(page, "job-running")
    # The page follows the job's server-sent events (read with fetch, the key sent along).
    assert streams and streams[0][0].endswith(f"/jobs/{job_id}/stream"), streams
    assert streams[0][1:] == (200, "text/event-stream; charset=utf-8"), streams
    expect(page.locator("#view .title-row [data-status]")).to_have_text("succeeded", timeout=TIMEOUT_MS)
    expect(page.locator("#checkpoints [data-checkpoint]").first).to_be_visible()
    for chart in ("Loss", "Accuracy and macro-F1", "Learning rate", "Tokens/s"):
        assert int(page.get_attribute(f"[data-chart='{chart}']", "data-points") or 0) > 0, chart
    assert int(loss.get_attribute("data-points") or 0) > seen[-1]
    expect(page.locator("#job-step")).to_contain_text("300 / 300")
    assert polls == [], "the stream carried every point: the page had no reason to poll"
    # The timeline grew from the stream's events too: from queued to succeeded, each once.
    kinds = page.locator("#events .event-kind").all_inner_texts()
    assert kinds[0] == "queued" and kinds[-1] == "succeeded", kinds
    assert kinds.count("started") == 1 and "checkpoint" in kinds, kinds

    # Predict in the page: a spam text and a plain one, labelled with probability bars.
    page.fill(
        "#predict-texts",
        "WINNER!! You have won a free prize, call 09061701461 now to claim\nok see you at home later",
    )
    page.click("#predict button[type=submit]")
    predictions = page.locator("#predict-results .prediction")
    expect(predictions).to_have_count(2)
    assert [predictions.nth(i).get_attribute("data-label") for i in range(2)] == ["spam", "ham"]
    expect(predictions.first.locator(".prob-row")).to_have_count(2)
    shot(page, "job")

    # Download a checkpoint: a .tar.gz with the weights.
    with page.expect_download() as info:
        page.locator("#checkpoints [data-checkpoint] button").first.click()
    archive = Path(info.value.path())
    with tarfile.open(archive) as tar:
        assert any(n.endswith("model.safetensors") for n in tar.getnames())

    # A second job from the first one's config, with another learning rate, then both compared.
    page.click("text=New job from this config")
    expect(page.locator("[id='f-training.max_steps']")).to_have_value("300")
    page.fill("[id='f-training.max_steps']", "100")
    page.fill("[id='f-training.learning_rate']", "0.001")
    page.click("#start-job")
    page.wait_for_url("**/#/jobs/*")
    second = page.url.rsplit("/", 1)[1]
    assert second != job_id
    expect(page.locator("#view .title-row [data-status]")).to_have_text("succeeded", timeout=TIMEOUT_MS)

    page.click("nav >> text=Jobs")
    expect(page.locator("#jobs-table [data-job]")).to_have_count(2)
    expect(page.locator(f"#jobs-table [data-job='{job_id}'] [data-status]")).to_have_text("succeeded")
    shot(page, "jobs")
    page.check(f"[aria-label='select job {job_id}']")
    page.check(f"[aria-label='select job {second}']")
    page.click("#compare-selected")
    differs = page.locator("#config-diff tr.differs")
    expect(differs).to_have_count(2)
    assert sorted(differs.nth(i).get_attribute("data-key") for i in range(2)) == [
        "training.learning_rate",
        "training.max_steps",
    ]
    expect(page.locator("[data-chart='Validation loss']")).not_to_have_attribute("data-points", "0")
    shot(page, "compare")
