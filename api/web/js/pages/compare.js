// Compare: two or more jobs' curves overlaid, and their configs side by side with the differences marked.

import { api } from "../api.js";
import { COLORS, Curves, LineChart } from "../charts.js";
import { badge, bestText, errorBox, fill, h, pageHeader, shortId } from "../ui.js";

export function render(view, { query }) {
  const ids = (query.get("ids") || "").split(",").filter(Boolean);
  const message = h("div");
  view.append(pageHeader("Compare jobs"), message);
  if (ids.length < 2) {
    picker(view, ids).catch((err) => fill(message, errorBox(err)));
    return null;
  }
  const charts = [];
  show(view, ids, charts).catch((err) => fill(message, errorBox(err)));
  return () => charts.forEach((c) => c.destroy());
}

async function picker(view, preselected) {
  const jobs = (await api("/jobs?limit=200")).data;
  const chosen = new Set(preselected);
  const go = h("button", { class: "primary", disabled: chosen.size < 2, onclick: () => (location.hash = `#/compare?ids=${[...chosen].join(",")}`) }, "Compare");
  const rows = jobs.map((j) =>
    h(
      "label",
      { class: "pick-row" },
      h("input", { type: "checkbox", checked: chosen.has(j.id), onchange: (e) => (e.target.checked ? chosen.add(j.id) : chosen.delete(j.id), (go.disabled = chosen.size < 2)) }),
      h("span", { class: "mono" }, shortId(j.id)),
      badge(j.status),
      h("span", j.config.task.replace("_", " ")),
      h("span", { class: "muted small" }, bestText(j.best)),
    ),
  );
  view.append(h("section", { class: "card" }, h("p", { class: "muted" }, "Pick two or more jobs."), rows.length ? rows : h("p", "No jobs yet."), h("div", { class: "form-actions" }, go)));
}

async function show(view, ids, charts) {
  const jobs = await Promise.all(ids.map((id) => api(`/jobs/${id}`)));
  const curves = await Promise.all(
    ids.map(async (id) => {
      const c = new Curves();
      c.add((await api(`/jobs/${id}/metrics?limit=100000`)).data);
      return c;
    }),
  );
  const legend = h(
    "div",
    { class: "legend" },
    jobs.map((j, i) => h("a", { class: "legend-item", href: `#/jobs/${j.id}` }, h("span", { class: "swatch", style: `background: ${COLORS[i % COLORS.length]}` }), h("span", { class: "mono" }, shortId(j.id)), badge(j.status), h("span", { class: "muted small" }, bestText(j.best)))),
  );
  const series = jobs.map((j, i) => ({ label: shortId(j.id), color: COLORS[i % COLORS.length], points: true }));
  const lm = jobs.every((j) => j.config.task === "language_modeling");
  const wanted = [
    ["Validation loss", "val_loss"],
    ["Train loss", "train_loss"],
    lm ? ["Validation perplexity", "val_perplexity"] : ["Validation macro-F1", "val_f1_macro"],
    ["Tokens/s", "train_tokens_per_second"],
  ];
  for (const [title, key] of wanted) {
    const chart = new LineChart({ title, series: series.map((s) => ({ ...s, points: key.startsWith("val") })) });
    charts.push(chart);
  }
  view.append(h("section", { class: "card" }, legend), h("div", { class: "chart-grid" }, charts.map((c) => c.el)), configTable(jobs));
  wanted.forEach(([, key], i) => charts[i].set(curves.map((c) => c.get(key))));
}

/** Flatten {"training": {"epochs": 3}} to [["training.epochs", 3]]. */
function flatten(obj, prefix = "") {
  return Object.entries(obj).flatMap(([k, v]) => (v && typeof v === "object" && !Array.isArray(v) ? flatten(v, `${prefix}${k}.`) : [[`${prefix}${k}`, v]]));
}

function configTable(jobs) {
  const flat = jobs.map((j) => new Map(flatten({ dataset: j.dataset_id, ...j.config })));
  const keys = [...new Set(flat.flatMap((m) => [...m.keys()]))];
  const show = (v) => (v === undefined ? "—" : JSON.stringify(v));
  let differing = 0;
  const rows = keys.map((k) => {
    const values = flat.map((m) => show(m.get(k)));
    const differs = new Set(values).size > 1;
    differing += differs;
    return h("tr", { class: differs ? "differs" : "", "data-key": k }, h("td", { class: "mono" }, k), values.map((v) => h("td", { class: "mono" }, v)));
  });
  const only = h("input", { type: "checkbox", onchange: (e) => table.classList.toggle("only-differences", e.target.checked) });
  const table = h("table", { class: "table config-diff", id: "config-diff" }, h("thead", h("tr", h("th", "Setting"), jobs.map((j) => h("th", { class: "mono" }, shortId(j.id))))), h("tbody", rows));
  return h(
    "section",
    { class: "card table-card" },
    h("div", { class: "card-header" }, h("h2", `Configs (${differing} ${differing === 1 ? "difference" : "differences"})`), h("label", { class: "small" }, only, " only the differences")),
    h("div", { class: "table-scroll" }, table),
  );
}
