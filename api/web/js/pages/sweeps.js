// Sweeps: every hyperparameter search in a table (status, method, trials by state, best metric),
// refreshed every 2 s (docs/design.md, "The dashboard" and "Sweeps").

import { api } from "../api.js";
import { badge, errorBox, every, fill, fmtAgo, fmtNumber, h, pageHeader, shortId } from "../ui.js";

const REFRESH_MS = 2000;

// The order trial states are listed in: the live ones first, then how they ended.
export const STATE_ORDER = ["running", "queued", "cancelling", "succeeded", "pruned", "failed", "cancelled"];

/** "2 running · 3 succeeded · 1 pruned": a sweep's `counts`, each as a small badge with its number. */
export function countChips(counts) {
  const states = Object.keys(counts).sort((a, b) => rank(a) - rank(b));
  if (!states.length) return h("span", { class: "muted small" }, "no trials yet");
  return h(
    "span",
    { class: "count-chips" },
    states.map((s) => h("span", { class: `badge badge-${s}`, "data-count": s }, `${counts[s]} ${s}`)),
  );
}

function rank(state) {
  const i = STATE_ORDER.indexOf(state);
  return i < 0 ? STATE_ORDER.length : i;
}

/** Trials that ended out of the sweep's max_jobs. */
export function trialsEnded(sweep) {
  return sweep.leaderboard.filter((t) => !["queued", "running", "cancelling"].includes(t.state)).length;
}

export function bestTrialText(sweep) {
  return sweep.best ? `${sweep.metric} ${fmtNumber(sweep.best.metric)} · #${sweep.best.number}` : "";
}

export function render(view) {
  const body = h("tbody");
  const message = h("div");
  const count = h("span", { class: "muted" });
  view.append(
    pageHeader("Sweeps"),
    message,
    h(
      "div",
      { class: "card table-card" },
      h(
        "table",
        { class: "table", id: "sweeps-table" },
        h("thead", h("tr", ["Sweep", "Status", "Method", "Trials", "By state", "Best", "Created"].map((c) => h("th", c)))),
        body,
      ),
    ),
    count,
  );

  function row(sweep) {
    return h(
      "tr",
      { "data-sweep": sweep.id },
      h("td", h("a", { class: "mono", href: `#/sweeps/${sweep.id}` }, shortId(sweep.id))),
      h("td", badge(sweep.status)),
      h("td", sweep.method, sweep.early_stopping ? h("span", { class: "muted small" }, " + ASHA") : null),
      h("td", { class: "nowrap" }, `${trialsEnded(sweep)} / ${sweep.max_jobs}`),
      h("td", countChips(sweep.counts)),
      h("td", { class: "mono small" }, bestTrialText(sweep)),
      h("td", { class: "muted", title: sweep.created_at }, fmtAgo(sweep.created_at)),
    );
  }

  return every(REFRESH_MS, async () => {
    try {
      const sweeps = await api("/sweeps?limit=100");
      fill(message);
      fill(body, sweeps.data.length ? sweeps.data.map(row) : h("tr", h("td", { colspan: 7, class: "empty" }, emptyText())));
      fill(count, sweeps.count > sweeps.data.length ? `${sweeps.data.length} of ${sweeps.count} shown` : "");
    } catch (err) {
      fill(message, errorBox(err));
      throw err;
    }
  });
}

function emptyText() {
  return h("span", "No sweeps yet. Start one with ", h("code", "POST /sweeps"), " or ", h("code", "jobformer sweep"), ".");
}
