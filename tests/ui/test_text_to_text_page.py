"""Text to text in a real browser (issue 13; docs/design.md "Text to text"). A real `jobformer serve` and
`jobformer worker`: English-French pairs written here and uploaded; the new-job form, with the task
text_to_text, shows source and target column drop-downs of the file's columns (and no text column) and
sends them; a tiny model trains to `succeeded`; the job page charts BLEU and chrF and its predict box
answers each source line with the output text the API gives, with the chosen beam size. Screenshot under
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

TIMEOUT_S = 120


def write_pairs(shared_data: Path, path: Path, n: int) -> Path:
    with (shared_data / "translation" / "eng_fra.tsv").open(encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(n)]
    path.write_text("en\tfr\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def wait_for_end(api: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        job = api.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not end within {TIMEOUT_S} s")


def test_a_text_to_text_job_is_configured_charted_and_predicts_in_the_browser(
    page: Any, service: Service, shared_data: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    pairs = write_pairs(shared_data, tmp_path / "pairs.tsv", 400)
    api = service.client()
    r = api.post("/datasets", files={"file": (pairs.name, pairs.read_bytes(), "text/tab-separated-values")})
    assert r.status_code == 201, r.text

    sign_in(page)
    page.goto("/#/new")
    page.select_option("#f-task", "text_to_text")
    expect(page.locator("[data-field='source_column']")).to_be_visible()
    expect(page.locator("[data-field='text_column']")).to_be_hidden()
    expect(page.locator("[data-section='target_tokenizer']")).to_be_visible()
    expect(page.locator("#f-source_column option")).to_have_count(2)
    assert page.input_value("#f-source_column") == "en" and page.input_value("#f-target_column") == "fr"
    page.fill("[id='f-target_tokenizer.language']", "fr")
    for path, value in {
        "model.d_model": "64",
        "model.n_heads": "2",
        "model.n_layers": "1",
        "model.dim_feedforward": "128",
        "model.max_length": "12",
        "training.max_steps": "200",
        "training.eval_every": "50",
        "training.learning_rate": "0.005",
        "training.warmup_steps": "10",
    }.items():
        page.fill(f"[id='f-{path}']", value)
    page.fill("#f-device", "cpu")
    with page.expect_request(lambda r: r.url.endswith("/jobs") and r.method == "POST") as sent:
        page.click("#start-job")
    config = sent.value.post_data_json["config"]
    assert (config["task"], config["source_column"], config["target_column"]) == ("text_to_text", "en", "fr")
    assert "text_column" not in config and "label_column" not in config
    assert config["target_tokenizer"] == {"language": "fr"}
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]

    job = wait_for_end(api, job_id)
    assert job["status"] == "succeeded", job
    assert {"val_bleu", "val_chrf"} <= set(job["metrics"])
    sources = ["Go.", "I am cold.", "Thank you."]
    r = api.post(f"/jobs/{job_id}/predict", json={"texts": sources, "beam_size": 2})
    assert r.status_code == 200, r.text
    expected = [p["text"] for p in r.json()["data"]]
    assert any(expected), expected  # 200 steps on 360 pairs: short French outputs

    page.reload()
    expect(page.locator("#view .title-row [data-status]")).to_have_text("succeeded", timeout=30_000)
    expect(page.locator(".chart-grid")).to_contain_text("BLEU and chrF")
    page.fill("#predict-texts", "\n".join(sources))
    page.fill("#predict-beam", "2")
    with page.expect_request(lambda r: r.url.endswith("/predict") and r.method == "POST") as sent:
        page.click(".predict-form button[type=submit]")
    assert sent.value.post_data_json == {"texts": sources, "beam_size": 2}
    rows = page.locator("#predict-results .output-pair")
    expect(rows).to_have_count(3)
    for i, text in enumerate(expected):
        expect(rows.nth(i).locator(".output-text")).to_have_text(text or "(empty)")
    expect(page.locator("#predict-results")).to_contain_text("beam size 2")
    page.locator("#predict-results").scroll_into_view_if_needed()
    shot(page, "job-text-to-text")
