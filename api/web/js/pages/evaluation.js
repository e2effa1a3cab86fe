// The job page's "Evaluation" section (docs/design.md, "Evaluations and batch predictions"): the job's
// evaluations, its test set's first, each with accuracy and macro-F1 (perplexity for a language model),
// the per-class table, the confusion matrix as a heatmap (true rows, predicted columns, each cell shaded
// by its share of the row) and the most confidently wrong examples.

import { api } from "../api.js";
import { badge, fill, fmtNumber, fmtTime, h, shortId, TERMINAL } from "../ui.js";

/** The section's element and `refresh()`, which reloads the job and its evaluations (again in 2 s while
 * one is queued or running, or the test set's is about to be queued). */
export function evaluationSection(jobId) {
  const el = h("section", { class: "card", id: "evaluations", hidden: true });
  let timer = null;
  let stopped = false;

  async function refresh() {
    clearTimeout(timer);
    const [job, list] = await Promise.all([api(`/jobs/${jobId}`), api(`/jobs/${jobId}/evaluations`)]);
    const testId = job.test_evaluation?.id;
    const runs = [...list.data].sort((a, b) => (b.id === testId) - (a.id === testId) || a.created_at.localeCompare(b.created_at));
    el.hidden = runs.length === 0 && !job.test_dataset_id;
    fill(
      el,
      h("h2", "Evaluation"),
      runs.length ? runs.map((r) => evaluation(r, r.id === testId)) : h("p", { class: "muted" }, "The test set is evaluated when training succeeds."),
    );
    const testDue = job.test_dataset_id && job.status === "succeeded" && !testId;
    if (!stopped && (testDue || runs.some((r) => !TERMINAL.has(r.status)))) timer = setTimeout(() => refresh().catch(() => {}), 2000);
  }

  return {
    el,
    refresh,
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

function evaluation(run, isTest) {
  const r = run.report;
  const head = h(
    "div",
    { class: "eval-head" },
    h("strong", isTest ? "Test set" : `Evaluation ${shortId(run.id)}`),
    badge(run.status),
    h("span", { class: "muted small" }, `checkpoint ${run.checkpoint || "best"} · ${run.finished_at ? fmtTime(run.finished_at) : fmtTime(run.created_at)}`),
    h("a", { class: "small", href: `/evaluations/${run.id}`, target: "_blank" }, "JSON"),
  );
  const body = [];
  if (run.error) body.push(h("div", { class: "alert alert-error" }, `${run.error.code}: ${run.error.message}`));
  else if (!r) body.push(h("p", { class: "muted" }, run.progress ? `${run.progress.done} / ${run.progress.total} rows` : "Queued."));
  else if (r.task === "language_modeling") body.push(stats([["Perplexity", r.perplexity], ["Loss", r.loss], ["Tokens", r.tokens], ["Rows", r.rows]]));
  else if (r.task === "text_to_text") {
    body.push(stats([["BLEU", r.bleu], ["chrF", r.chrf], ["Loss", r.loss], ["Rows", r.rows]]));
    if (r.examples?.length) body.push(h("h3", "Examples (greedy)"), pairs(r.examples));
  }
  else {
    body.push(stats([["Accuracy", r.accuracy], ["Macro-F1", r.f1_macro], ["Loss", r.loss], ["Rows scored", r.scored_rows]]));
    const unseen = Object.entries(r.unseen_labels || {});
    if (unseen.length)
      body.push(h("div", { class: "alert alert-warn" }, `Labels the model never saw (rows not scored): ${unseen.map(([k, n]) => `${k} (${n})`).join(", ")}`));
    body.push(h("div", { class: "eval-grid" }, h("div", h("h3", "Confusion matrix"), heatmap(r.labels, r.confusion_matrix)), h("div", h("h3", "Per class"), perClass(r))));
    if (r.most_confidently_wrong?.length) body.push(h("h3", "Most confidently wrong"), wrong(r.most_confidently_wrong));
  }
  return h("div", { class: "evaluation", "data-evaluation": run.id, "data-test": isTest ? "true" : null }, head, body);
}

function stats(items) {
  return h(
    "div",
    { class: "stats eval-stats" },
    items.map(([label, v]) => h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, v === null || v === undefined ? "–" : fmtNumber(v)))),
  );
}

/** An HTML table: true labels down, predicted across; a cell's colour is its share of the row. */
function heatmap(labels, matrix) {
  const cells = matrix.map((row, i) => {
    const total = row.reduce((a, b) => a + b, 0);
    return h(
      "tr",
      h("th", { scope: "row", class: "heat-label" }, labels[i]),
      row.map((n, j) => {
        const share = total ? n / total : 0;
        const hue = i === j ? "79, 70, 229" : "220, 38, 38"; // right: the accent; wrong: red
        return h(
          "td",
          {
            class: "heat-cell",
            "data-true": labels[i],
            "data-predicted": labels[j],
            title: `true ${labels[i]}, predicted ${labels[j]}: ${n} (${(100 * share).toFixed(1)}% of the row)`,
            style: `background: rgba(${hue}, ${(0.06 + 0.84 * share).toFixed(3)}); color: ${share > 0.5 ? "#fff" : "var(--text)"}`,
          },
          n,
        );
      }),
    );
  });
  return h(
    "div",
    { class: "heatmap-wrap" },
    h(
      "table",
      { class: "heatmap" },
      h("thead", h("tr", h("th", { class: "heat-corner" }, h("span", "true ↓ / predicted →")), labels.map((l) => h("th", { scope: "col", class: "heat-label" }, l)))),
      h("tbody", cells),
    ),
  );
}

function perClass(r) {
  const rows = r.labels.map((name) => {
    const c = r.per_class[name];
    return h("tr", { "data-class": name }, h("td", h("span", { class: "badge badge-label" }, name)), h("td", fmtNumber(c.precision, 3)), h("td", fmtNumber(c.recall, 3)), h("td", fmtNumber(c.f1, 3)), h("td", c.support));
  });
  return h("table", { class: "table" }, h("thead", h("tr", ["Class", "Precision", "Recall", "F1", "Support"].map((c) => h("th", c)))), h("tbody", rows));
}

function wrong(examples) {
  return h(
    "table",
    { class: "table wrong-examples" },
    h("thead", h("tr", ["Row", "Text", "True", "Predicted", "Confidence"].map((c) => h("th", c)))),
    h(
      "tbody",
      examples.map((e) =>
        h("tr", h("td", { class: "mono small" }, e.row), h("td", { class: "wrong-text" }, e.text), h("td", h("span", { class: "badge badge-label" }, e.label)), h("td", h("span", { class: "badge badge-failed" }, e.predicted)), h("td", fmtNumber(e.confidence, 3))),
      ),
    ),
  );
}

function pairs(examples) {
  return h(
    "table",
    { class: "table pair-examples" },
    h("thead", h("tr", ["Source", "Reference", "Output"].map((c) => h("th", c)))),
    h("tbody", examples.map((e) => h("tr", h("td", e.source), h("td", e.reference), h("td", e.output)))),
  );
}
