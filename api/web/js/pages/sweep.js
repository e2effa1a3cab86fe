// One sweep: its status and trials by state, the leaderboard best first (each trial's job, parameters,
// metric, steps, why it was pruned), the trials' validation curves overlaid (one colour per trial, the
// pruned ones dimmed) and a cancel button. GET /sweeps/{id} and the trials' /jobs/{id}/metrics are polled
// every 2 s while anything runs (docs/design.md, "The dashboard" and "Sweeps").

import { api } from "../api.js";
import { COLORS, Curves, LineChart } from "../charts.js";
import { badge, errorBox, every, fill, fmtNumber, h, shortId, TERMINAL } from "../ui.js";
import { countChips, trialsEnded } from "./sweeps.js";

const REFRESH_MS = 2000;
const ACTIVE = new Set(["queued", "running", "cancelling"]);
const TITLES = {
  val_f1_macro: "Validation macro-F1",
  val_accuracy: "Validation accuracy",
  val_loss: "Validation loss",
  val_perplexity: "Validation perplexity",
  train_loss: "Train loss",
};

/** Trial n's colour: the dashboard's eight, then hues a golden angle apart; pruned trials faded. */
export function trialColor(n, dim = false) {
  if (n < COLORS.length) return dim ? `${COLORS[n]}55` : COLORS[n];
  const hue = Math.round((n * 137.508) % 360);
  return dim ? `hsla(${hue}, 60%, 45%, 0.33)` : `hsl(${hue}, 60%, 45%)`;
}

export function render(view, { args: [id] }) {
  const curves = new Map(); // trial number -> Curves
  const complete = new Set(); // trials whose curves were read after they ended: nothing more will come
  let sweep = null;
  let charts = [];
  let chartKey = "";

  const statusEl = h("span");
  const cancelButton = h("button", { id: "cancel-sweep", class: "danger", hidden: true, onclick: cancel }, "Cancel sweep");
  const message = h("div");
  const summary = h("section", { class: "card summary", id: "sweep-summary" });
  const failure = h("div");
  const chartGrid = h("div", { class: "chart-grid", id: "sweep-charts" });
  const board = h("section", { class: "card table-card", id: "leaderboard" });
  const space = h("section", { class: "card", id: "search-space" }, h("h2", "Search space"));
  const configEl = h("pre", { class: "code", id: "config" });

  view.append(
    h(
      "div",
      { class: "page-header" },
      h("div", { class: "title-row" }, h("h1", `Sweep ${shortId(id)}`), statusEl),
      h("div", { class: "actions" }, h("a", { class: "button", href: "#/sweeps" }, "All sweeps"), cancelButton),
    ),
    message,
    summary,
    failure,
    board,
    chartGrid,
    h("div", { class: "two-col" }, space, h("section", { class: "card" }, h("h2", "Base config"), configEl)),
  );

  let datasetLabel = "";
  async function datasetName() {
    try {
      datasetLabel = (await api(`/datasets/${sweep.dataset_id}`)).filename;
    } catch {
      datasetLabel = `${shortId(sweep.dataset_id)} (deleted)`;
    }
    fill(summary, summaryGrid(sweep));
  }

  function show(next) {
    const first = sweep === null;
    sweep = next;
    if (first) {
      datasetName();
      fill(space, h("h2", "Search space"), spaceList(sweep));
      fill(configEl, JSON.stringify(sweep.config, null, 2));
    }
    fill(statusEl, badge(sweep.status));
    cancelButton.hidden = sweep.status !== "running";
    fill(summary, summaryGrid(sweep));
    fill(failure, sweep.error ? h("section", { class: "alert alert-error failure", id: "sweep-error" }, h("strong", `Failed: ${sweep.error.code}`), h("div", sweep.error.message)) : null);
    fill(board, h("div", { class: "card-header" }, h("h2", "Leaderboard"), countChips(sweep.counts)), leaderboard(sweep));
  }

  function summaryGrid(s) {
    const ended = trialsEnded(s);
    const percent = s.max_jobs ? (100 * ended) / s.max_jobs : 0;
    const item = (label, value, attrs = {}) => h("div", { class: "stat", ...attrs }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value));
    const asha = s.early_stopping ? `ASHA at ${rungs(s).join(", ")}` : "off";
    return [
      h(
        "div",
        { class: "summary-progress progress" },
        h("div", { class: "progress-track" }, h("div", { class: `progress-fill fill-${s.status}`, style: `width: ${percent}%` })),
        h("span", { class: "progress-label" }, `${ended} of ${s.max_jobs} trials ended`),
      ),
      h(
        "div",
        { class: "stats" },
        item("Best", s.best ? `${fmtNumber(s.best.metric)} (#${s.best.number})` : "–", { id: "sweep-best" }),
        item("Dataset", h("a", { href: `#/datasets/${s.dataset_id}` }, datasetLabel || shortId(s.dataset_id))),
        item("Method", s.method),
        item("Metric", `${s.metric} ${s.direction === "maximize" ? "↑" : "↓"}`),
        item("Trials", `${s.leaderboard.length} / ${s.max_jobs}`, { id: "sweep-trials" }),
        item("At once", String(s.max_parallel)),
        item("Early stopping", asha),
        item("Seed", String(s.seed)),
      ),
    ];
  }

  function leaderboard(s) {
    const paths = Object.keys(s.parameters);
    const head = h(
      "thead",
      h("tr", h("th", "Rank"), h("th", "Trial"), h("th", "Job"), h("th", "State"), paths.map((p) => h("th", { class: "mono" }, p)), h("th", s.metric), h("th", "Steps"), h("th", "Pruned because")),
    );
    const rows = s.leaderboard.map((t, i) =>
      h(
        "tr",
        { class: t.state === "pruned" ? "dimmed" : "", "data-trial": t.number, "data-state": t.state },
        h("td", { class: "muted" }, t.metric === null ? "–" : String(i + 1)),
        h("td", h("span", { class: "trial-tag" }, h("span", { class: "swatch", style: `background: ${trialColor(t.number)}` }), `#${t.number}`)),
        h("td", h("a", { class: "mono", href: `#/jobs/${t.job_id}` }, shortId(t.job_id))),
        h("td", { class: "nowrap" }, badge(t.state), s.best && s.best.number === t.number ? h("span", { class: "badge badge-best" }, "best") : null),
        paths.map((p) => h("td", { class: "mono small" }, paramText(t.params[p]))),
        h("td", { class: "mono", "data-metric": t.metric ?? "" }, t.metric === null ? "–" : fmtNumber(t.metric)),
        h("td", String(t.steps)),
        h("td", { class: "small muted pruned-reason" }, t.pruned || ""),
      ),
    );
    const empty = h("tr", h("td", { colspan: 7 + paths.length, class: "empty" }, "No trials yet."));
    return h("div", { class: "table-scroll" }, h("table", { class: "table", id: "leaderboard-table" }, head, h("tbody", rows.length ? rows : empty)));
  }

  // The charts are rebuilt when a trial appears or is pruned (uPlot's series are fixed at creation).
  function drawCharts() {
    const trials = [...sweep.leaderboard].sort((a, b) => a.number - b.number);
    const keys = [sweep.metric, sweep.metric === "val_loss" ? "train_loss" : "val_loss"];
    const key = trials.map((t) => `${t.number}${t.state === "pruned" ? "p" : ""}`).join(",");
    if (key !== chartKey) {
      charts.forEach((c) => c.destroy());
      charts = keys.map(
        (k) =>
          new LineChart({
            title: TITLES[k] || k,
            empty: trials.length ? "no evaluations yet" : "no trials yet",
            series: trials.map((t) => ({
              label: `#${t.number}${t.state === "pruned" ? " (pruned)" : ""}`,
              color: trialColor(t.number, t.state === "pruned"),
              dash: t.state === "pruned" ? [5, 4] : undefined,
              points: k.startsWith("val"),
            })),
          }),
      );
      fill(chartGrid, charts.map((c) => c.el));
      chartKey = key;
    }
    keys.forEach((k, i) => charts[i].set(trials.map((t) => curves.get(t.number)?.get(k) || new Map())));
  }

  async function readCurves() {
    const reads = sweep.leaderboard
      .filter((t) => !complete.has(t.number))
      .map(async (t) => {
        const ended = !ACTIVE.has(t.state); // known before the read: every point is in by then
        if (!curves.has(t.number)) curves.set(t.number, new Curves());
        const c = curves.get(t.number);
        const points = await api(`/jobs/${t.job_id}/metrics?since_step=${c.lastStep}&limit=100000`);
        c.add(points.data);
        if (ended) complete.add(t.number);
      });
    await Promise.all(reads);
  }

  async function cancel() {
    cancelButton.disabled = true;
    try {
      show(await api(`/sweeps/${id}/cancel`, { method: "POST" }));
    } catch (err) {
      fill(message, errorBox(err));
    } finally {
      cancelButton.disabled = false;
    }
  }

  const stop = every(REFRESH_MS, async () => {
    try {
      show(await api(`/sweeps/${id}`));
      await readCurves();
      drawCharts();
      fill(message);
    } catch (err) {
      fill(message, errorBox(err));
      throw err;
    }
    // Ended, and every trial's last points read: nothing will change any more.
    if (TERMINAL.has(sweep.status) && sweep.leaderboard.every((t) => complete.has(t.number))) stop();
  });

  return () => {
    stop();
    charts.forEach((c) => c.destroy());
  };
}

/** The steps where ASHA decides (min_steps × reduction_factor^k, before the last step). */
function rungs(s) {
  const { min_steps: first, reduction_factor: factor } = s.early_stopping;
  const last = s.config.training.max_steps ?? Infinity;
  const steps = [];
  for (let step = first; step < last && steps.length < 4; step *= factor) steps.push(step);
  return steps;
}

function paramText(value) {
  if (typeof value === "number") return fmtNumber(value, 3);
  return JSON.stringify(value);
}

/** The search space: each config path with its values or its range and how it is drawn. */
function spaceList(s) {
  const rows = Object.entries(s.parameters).map(([path, spec]) => {
    const how = spec.values ? spec.values.map((v) => JSON.stringify(v)).join(", ") : `${spec.distribution || "uniform"} ${fmtNumber(spec.min)} … ${fmtNumber(spec.max)}`;
    return h("tr", { "data-parameter": path }, h("td", { class: "mono" }, path), h("td", { class: "mono small" }, how));
  });
  return h("table", { class: "table" }, h("thead", h("tr", h("th", "Config path"), h("th", "Values"))), h("tbody", rows));
}
