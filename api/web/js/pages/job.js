// One job: its curves growing while it trains, status, progress and ETA, the error and what to change,
// checkpoints to download, a cancel button, a predict box, the events and the resolved config.

import { api, download } from "../api.js";
import { COLORS, Curves, LineChart, lrCurve } from "../charts.js";
import { followJob } from "../live.js";
import {
  badge,
  errorBox,
  fill,
  fmtBytes,
  fmtDuration,
  fmtNumber,
  fmtTime,
  h,
  progressBar,
  shortId,
  TERMINAL,
} from "../ui.js";
import { evaluationSection } from "./evaluation.js";
import { predictBox } from "./predict.js";

export function render(view, { args: [id] }) {
  const curves = new Curves();
  let job = null;
  let events = [];
  let charts = null;
  let predict = null;

  const title = h("h1", `Job ${shortId(id)}`);
  const statusEl = h("span");
  const cancelButton = h("button", { id: "cancel-job", class: "danger", hidden: true, onclick: cancel }, "Cancel");
  const retry = h("a", { class: "button", href: `#/new?from=${id}` }, "New job from this config");
  const message = h("div");
  const summary = h("section", { class: "card summary" });
  const failure = h("div");
  const chartGrid = h("div", { class: "chart-grid" });
  const predictSlot = h("section", { class: "card", id: "predict" }, h("h2", "Predict"));
  const checkpointList = h("section", { class: "card", id: "checkpoints" }, h("h2", "Checkpoints"));
  const timeline = h("ol", { class: "timeline", id: "events" });
  const configEl = h("pre", { class: "code", id: "config" });
  const evaluations = evaluationSection(id);

  view.append(
    h("div", { class: "page-header" }, h("div", { class: "title-row" }, title, statusEl), h("div", { class: "actions" }, retry, cancelButton)),
    message,
    summary,
    failure,
    chartGrid,
    evaluations.el,
    h("div", { class: "two-col" }, predictSlot, checkpointList),
    h(
      "div",
      { class: "two-col" },
      h("section", { class: "card" }, h("h2", "Events"), timeline),
      h("section", { class: "card" }, h("h2", "Resolved config"), configEl),
    ),
  );

  function setupCharts(task) {
    const lm = task === "language_modeling";
    charts = {
      loss: new LineChart({
        title: "Loss",
        series: [
          { label: "train", color: COLORS[0] },
          { label: "validation", color: COLORS[1], points: true },
        ],
      }),
      quality: lm
        ? new LineChart({ title: "Perplexity", series: [{ label: "validation", color: COLORS[2], points: true }] })
        : task === "text_to_text"
        ? new LineChart({
            // docs/design.md "Text to text": sacrebleu's BLEU and chrF of greedy outputs, 0-100
            title: "BLEU and chrF",
            series: [
              { label: "BLEU", color: COLORS[2], points: true },
              { label: "chrF", color: COLORS[3], points: true },
            ],
          })
        : new LineChart({
            title: "Accuracy and macro-F1",
            series: [
              { label: "accuracy", color: COLORS[2], points: true },
              { label: "macro-F1", color: COLORS[3], points: true },
            ],
          }),
      lr: new LineChart({ title: "Learning rate", series: [{ label: "lr", color: COLORS[5] }] }),
      speed: new LineChart({ title: "Tokens/s", series: [{ label: "tokens/s", color: COLORS[4], points: true }] }),
    };
    fill(chartGrid, Object.values(charts).map((c) => c.el));
  }

  function drawCharts() {
    if (!charts) return;
    const quality = {
      language_modeling: ["val_perplexity"],
      text_to_text: ["val_bleu", "val_chrf"],
    }[job.config.task] || ["val_accuracy", "val_f1_macro"];
    charts.loss.set([curves.get("train_loss"), curves.get("val_loss")]);
    charts.quality.set(quality.map((k) => curves.get(k)));
    charts.speed.set([curves.get("train_tokens_per_second")]);
    // The API records no learning-rate points (yet): the schedule is computed from the config, up to now.
    const recorded = ["train_lr", "train_learning_rate"].find((k) => curves.has(k));
    const total = job.progress?.total_steps;
    if (recorded) charts.lr.set([curves.get(recorded)]);
    else if (total) charts.lr.set([lrCurve(job.config.training, total, job.progress.step)]);
  }

  let shownEval = null;
  function showJob(next) {
    // A stream's `progress` message carries only what changed (status, progress, metrics): merged in.
    if (job === null && !next.config) return;
    const first = job === null;
    job = { ...job, ...next };
    if (first) {
      setupCharts(job.config.task);
      fill(configEl, JSON.stringify(job.config, null, 2));
      predict = predictBox(id, job.config.task);
      predictSlot.append(predict);
      datasetName();
    }
    fill(statusEl, badge(job.status));
    cancelButton.hidden = TERMINAL.has(job.status) || job.status === "cancelling";
    fill(summary, summaryGrid(job));
    fill(failure, job.error ? failureCard(job) : null);
    drawCharts();
    // The test set's evaluation is queued when training succeeds: load the section when its state moves.
    const evalKey = `${job.status}:${job.test_evaluation?.status ?? ""}`;
    if (first || evalKey !== shownEval) evaluations.refresh().catch(() => {});
    shownEval = evalKey;
  }

  let datasetLabel = shortId(job?.dataset_id);
  async function datasetName() {
    try {
      datasetLabel = (await api(`/datasets/${job.dataset_id}`)).filename;
    } catch {
      datasetLabel = `${shortId(job.dataset_id)} (deleted)`;
    }
    fill(summary, summaryGrid(job));
  }

  function summaryGrid(j) {
    const p = j.progress;
    const item = (label, value, attrs = {}) => h("div", { class: "stat", ...attrs }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value));
    return [
      h("div", { class: "summary-progress" }, progressBar(j)),
      h(
        "div",
        { class: "stats" },
        item("Dataset", h("a", { href: `#/datasets/${j.dataset_id}` }, datasetLabel || shortId(j.dataset_id))),
        item("Task", j.config.task.replaceAll("_", " ")),
        item("Step", p ? `${p.step} / ${p.total_steps}` : "–", { id: "job-step" }),
        item("Epoch", p ? `${p.epoch} / ${p.total_epochs}` : "–"),
        item("ETA", p && !TERMINAL.has(j.status) ? fmtDuration(p.eta_seconds) || "–" : "–"),
        item("Tokens/s", p?.tokens_per_second ? fmtNumber(p.tokens_per_second, 3) : "–"),
        item("Best", j.best ? `${j.best.metric} ${fmtNumber(j.best.value)} @ ${j.best.step}` : "–"),
        item("Queue", j.queue ? `${j.queue_name} · #${j.queue.position}` : j.queue_name),
      ),
      j.warnings.length ? h("div", { class: "alert alert-warn" }, j.warnings.map((w) => h("div", w))) : null,
    ];
  }

  function failureCard(j) {
    return h(
      "section",
      { class: "alert alert-error failure", id: "job-error" },
      h("strong", `Failed: ${j.error.code}`),
      h("div", j.error.message),
      h("div", h("a", { href: `#/new?from=${id}` }, "Change the config and start again →")),
    );
  }

  function showEvents(list, replace) {
    // Streamed events carry no id (their cursor is the message id): only listed ones are de-duplicated.
    const fresh = list.filter((e) => e.id === undefined || !events.some((o) => o.id === e.id));
    events = replace ? list : [...events, ...fresh];
    fill(
      timeline,
      events.map((e) =>
        h(
          "li",
          { class: `event event-${e.kind}` },
          h("span", { class: "event-time" }, fmtTime(e.time)),
          h("span", { class: "event-kind" }, e.kind.replace("_", " ")),
          h("span", { class: "event-message" }, e.message),
        ),
      ),
    );
    if (list.some((e) => e.kind === "checkpoint")) refreshCheckpoints();
  }

  async function refreshCheckpoints() {
    const list = await api(`/jobs/${id}/checkpoints`);
    const rows = list.data.map((c) =>
      h(
        "tr",
        { "data-checkpoint": c.name },
        h("td", h("span", { class: "mono" }, c.name), c.is_best ? h("span", { class: "badge badge-best" }, "best") : null),
        h("td", c.step),
        h("td", { class: "small mono" }, Object.entries(c.metrics).filter(([k]) => k.startsWith("val_")).map(([k, v]) => `${k.slice(4)} ${fmtNumber(v)}`).join(" · ")),
        h("td", fmtBytes(c.size_bytes)),
        h("td", h("button", { class: "small", onclick: () => download(`/jobs/${id}/checkpoints/${c.name}`, `${id}-${c.name}.tar.gz`).catch((err) => fill(message, errorBox(err))) }, "Download")),
      ),
    );
    const table = h("table", { class: "table" }, h("thead", h("tr", ["Name", "Step", "Validation", "Size", ""].map((c) => h("th", c)))), h("tbody", rows));
    fill(checkpointList, h("h2", "Checkpoints"), rows.length ? table : h("p", { class: "muted" }, "None yet: the first comes with the first evaluation."));
  }

  async function cancel() {
    cancelButton.disabled = true;
    try {
      showJob(await api(`/jobs/${id}/cancel`, { method: "POST" }));
    } catch (err) {
      fill(message, errorBox(err));
    } finally {
      cancelButton.disabled = false;
    }
  }

  const stop = followJob(
    id,
    {
      onJob: showJob,
      onPoints: (points) => curves.add(points) && drawCharts(),
      onEvents: showEvents,
      onEnd: async () => {
        await refreshCheckpoints();
        if (job) showJob(await api(`/jobs/${id}`));
      },
    },
    () => curves.lastStep,
  );
  api(`/jobs/${id}`).catch((err) => fill(message, errorBox(err)));
  refreshCheckpoints().catch(() => {});

  return () => {
    stop();
    evaluations.stop();
    if (charts) Object.values(charts).forEach((c) => c.destroy());
  };
}
