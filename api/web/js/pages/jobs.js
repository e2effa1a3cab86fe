// Jobs: every job in a table, filtered by status, refreshed every 2 s; pick two or more to compare.

import { api } from "../api.js";
import { badge, bestText, errorBox, every, fill, fmtAgo, h, pageHeader, progressBar, shortId } from "../ui.js";

const STATUSES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const REFRESH_MS = 2000;

export function render(view, { query }) {
  const status = query.get("status") || "";
  const selected = new Set();
  const datasetNames = new Map();

  const filter = h(
    "select",
    { id: "status-filter", "aria-label": "Status", onchange: (e) => go(e.target.value) },
    h("option", { value: "" }, "All statuses"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)),
  );
  const compareButton = h("button", { id: "compare-selected", disabled: true, onclick: compare }, "Compare selected");
  const body = h("tbody");
  const message = h("div");
  const count = h("span", { class: "muted" });
  view.append(
    pageHeader("Jobs", filter, compareButton, h("a", { class: "button primary", href: "#/new" }, "New job")),
    message,
    h(
      "div",
      { class: "card table-card" },
      h(
        "table",
        { class: "table", id: "jobs-table" },
        h("thead", h("tr", ["", "Job", "Dataset", "Task", "Status", "Progress", "Best", "Created"].map((c) => h("th", c)))),
        body,
      ),
    ),
    count,
  );

  function go(value) {
    location.hash = value ? `#/jobs?status=${value}` : "#/jobs";
  }

  function compare() {
    location.hash = `#/compare?ids=${[...selected].join(",")}`;
  }

  async function names(jobs) {
    if (jobs.every((j) => datasetNames.has(j.dataset_id))) return;
    const list = await api("/datasets?limit=1000");
    for (const d of list.data) datasetNames.set(d.id, d.filename);
    for (const j of jobs) if (!datasetNames.has(j.dataset_id)) datasetNames.set(j.dataset_id, shortId(j.dataset_id));
  }

  function row(job) {
    const box = h("input", {
      type: "checkbox",
      "aria-label": `select job ${job.id}`,
      checked: selected.has(job.id),
      onchange: (e) => {
        e.target.checked ? selected.add(job.id) : selected.delete(job.id);
        compareButton.disabled = selected.size < 2;
      },
    });
    return h(
      "tr",
      { "data-job": job.id },
      h("td", box),
      h("td", h("a", { class: "mono", href: `#/jobs/${job.id}` }, shortId(job.id))),
      h("td", datasetNames.get(job.dataset_id)),
      h("td", job.config.task.replace("_", " ")),
      h("td", badge(job.status)),
      h("td", { class: "cell-progress" }, progressBar(job)),
      h("td", { class: "mono small" }, bestText(job.best)),
      h("td", { class: "muted", title: job.created_at }, fmtAgo(job.created_at)),
    );
  }

  return every(REFRESH_MS, async () => {
    try {
      const jobs = await api(`/jobs?limit=200${status ? `&status=${status}` : ""}`);
      await names(jobs.data);
      fill(message);
      fill(body, jobs.data.length ? jobs.data.map(row) : h("tr", h("td", { colspan: 8, class: "empty" }, emptyText(status))));
      fill(count, jobs.count > jobs.data.length ? `${jobs.data.length} of ${jobs.count} shown` : "");
    } catch (err) {
      fill(message, errorBox(err));
      throw err;
    }
  });
}

function emptyText(status) {
  if (status) return `No ${status} jobs.`;
  return h("span", "No jobs yet. ", h("a", { href: "#/datasets" }, "Upload a dataset"), " and train on it.");
}
