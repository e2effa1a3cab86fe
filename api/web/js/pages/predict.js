// The predict box of a job: classification (one text per line -> label and probability bars), a
// language model (prompt, temperature -> a sample) or text to text (one source per line, beam size ->
// one output text per source; docs/design.md "Text to text"). Answered by the job's best checkpoint so far.

import { api } from "../api.js";
import { errorBox, fill, h } from "../ui.js";

export function predictBox(id, task) {
  if (task === "language_modeling") return sampleBox(id);
  return task === "text_to_text" ? translateBox(id) : classifyBox(id);
}

function translateBox(id) {
  const texts = h("textarea", { id: "predict-texts", rows: 3, placeholder: "One source text per line, e.g.\nI am cold.\nThank you." });
  const beam = h("input", { id: "predict-beam", type: "number", min: "1", max: "16", value: "1" });
  const out = h("div", { class: "predictions", id: "predict-results" });
  const button = h("button", { class: "primary", type: "submit" }, "Predict");
  return h(
    "form",
    { class: "predict-form", onsubmit: submit },
    texts,
    h(
      "div",
      { class: "inline-fields" },
      h("label", { title: "1 is greedy decoding, more is beam search" }, "Beam size ", beam),
      button,
      h("span", { class: "muted small" }, "with the best checkpoint so far"),
    ),
    out,
  );

  async function submit(event) {
    event.preventDefault();
    const lines = texts.value.split("\n").map((t) => t.trim()).filter(Boolean);
    if (!lines.length) return fill(out, h("div", { class: "alert alert-warn" }, "Write a source text first."));
    button.disabled = true;
    try {
      const answer = await api(`/jobs/${id}/predict`, { method: "POST", json: { texts: lines, beam_size: Number(beam.value) } });
      const rows = answer.data.map((p, i) =>
        h(
          "div",
          { class: "prediction output-pair" },
          h("div", { class: "prediction-text muted" }, lines[i]),
          h("div", { class: "output-text" }, p.text || "(empty)"),
        ),
      );
      fill(out, rows, h("div", { class: "muted small" }, `checkpoint ${answer.checkpoint}, beam size ${beam.value}`));
    } catch (err) {
      fill(out, errorBox(err));
    } finally {
      button.disabled = false;
    }
  }
}

function classifyBox(id) {
  const texts = h("textarea", {
    id: "predict-texts",
    rows: 3,
    placeholder: "One text per line, e.g.\nWINNER!! Claim your free prize now\nare we still on for lunch?",
  });
  const out = h("div", { class: "predictions", id: "predict-results" });
  const button = h("button", { class: "primary", type: "submit" }, "Predict");
  return h(
    "form",
    { class: "predict-form", onsubmit: submit },
    texts,
    h("div", { class: "form-actions" }, button, h("span", { class: "muted small" }, "with the best checkpoint so far")),
    out,
  );

  async function submit(event) {
    event.preventDefault();
    const lines = texts.value.split("\n").map((t) => t.trim()).filter(Boolean);
    if (!lines.length) return fill(out, h("div", { class: "alert alert-warn" }, "Write a text to classify first."));
    button.disabled = true;
    try {
      const answer = await api(`/jobs/${id}/predict`, { method: "POST", json: { texts: lines } });
      fill(out, answer.data.map((p, i) => prediction(lines[i], p)), h("div", { class: "muted small" }, `checkpoint ${answer.checkpoint}`));
    } catch (err) {
      fill(out, errorBox(err));
    } finally {
      button.disabled = false;
    }
  }
}

function prediction(text, p) {
  const bars = Object.entries(p.probabilities)
    .sort((a, b) => b[1] - a[1])
    .map(([label, prob]) =>
      h(
        "div",
        { class: "prob-row" },
        h("span", { class: "prob-label" }, label),
        h("div", { class: "prob-track" }, h("div", { class: `prob-fill${label === p.label ? " top" : ""}`, style: `width: ${(prob * 100).toFixed(1)}%` })),
        h("span", { class: "prob-value mono" }, `${(prob * 100).toFixed(1)}%`),
      ),
    );
  return h(
    "div",
    { class: "prediction", "data-label": p.label },
    h("div", { class: "prediction-head" }, h("span", { class: "prediction-text" }, text), h("span", { class: "badge badge-label" }, p.label)),
    bars,
  );
}

function sampleBox(id) {
  const prompt = h("textarea", { id: "predict-prompt", rows: 3, placeholder: "A prompt, e.g. ROMEO:" });
  const temperature = h("input", { id: "predict-temperature", type: "number", min: "0.05", max: "5", step: "0.05", value: "0.8" });
  const tokens = h("input", { id: "predict-tokens", type: "number", min: "1", max: "4096", value: "200" });
  const out = h("div", { id: "predict-results" });
  const button = h("button", { class: "primary", type: "submit" }, "Sample");
  return h(
    "form",
    { class: "predict-form", onsubmit: submit },
    prompt,
    h(
      "div",
      { class: "inline-fields" },
      h("label", "Temperature ", temperature),
      h("label", "New tokens ", tokens),
      button,
    ),
    out,
  );

  async function submit(event) {
    event.preventDefault();
    button.disabled = true;
    try {
      const answer = await api(`/jobs/${id}/predict`, {
        method: "POST",
        json: { prompt: prompt.value, temperature: Number(temperature.value), max_new_tokens: Number(tokens.value) },
      });
      fill(out, h("pre", { class: "sample" }, h("strong", prompt.value), answer.text), h("div", { class: "muted small" }, `checkpoint ${answer.checkpoint}`));
    } catch (err) {
      fill(out, errorBox(err));
    } finally {
      button.disabled = false;
    }
  }
}
