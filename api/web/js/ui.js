// Small DOM helpers and formatters shared by the pages. Text always goes in as text (textContent), never
// as HTML: dataset previews and error messages come from users' files.

import { ApiError, AuthNeeded } from "./api.js";

/** h("div", {class: "card", onclick: f}, "text", child, [more]) -> an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  if (attrs === null || typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs)) {
    children.unshift(attrs); // h("h1", "Title"): no attributes
    attrs = {};
  }
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export function badge(status) {
  return h("span", { class: `badge badge-${status}`, "data-status": status }, status);
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "";
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

export function fmtAgo(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

export function fmtTime(iso) {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

export function fmtNumber(v, digits = 4) {
  if (v === null || v === undefined) return "";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString();
  return Number(v.toPrecision(digits)).toString();
}

/** The progress bar with its percent and ETA (a job's `progress`, or null before its first step). */
export function progressBar(job) {
  const p = job.progress;
  const percent = job.status === "succeeded" ? 100 : p ? p.percent : 0;
  const eta = p && !TERMINAL.has(job.status) && p.eta_seconds ? ` · ETA ${fmtDuration(p.eta_seconds)}` : "";
  return h(
    "div",
    { class: "progress", title: p ? `step ${p.step} of ${p.total_steps}` : "" },
    h("div", { class: "progress-track" }, h("div", { class: `progress-fill fill-${job.status}`, style: `width: ${percent}%` })),
    h("span", { class: "progress-label" }, `${percent.toFixed(0)}%${eta}`),
  );
}

export function bestText(best) {
  return best ? `${best.metric} ${fmtNumber(best.value)}` : "";
}

/** An error box for a failed call: the problem's detail and each field error. */
export function errorBox(err) {
  if (err instanceof AuthNeeded) return h("div");
  const problem = err instanceof ApiError ? err.problem : { detail: String(err?.message || err) };
  const lines = (problem.errors || []).map((e) => `${(e.loc || []).join(".")}: ${e.msg}`);
  // A single problem is usually the detail already: list the problems only when they add something.
  const items = lines.length > 1 || (lines.length && !problem.detail?.includes(lines[0])) ? lines.map((l) => h("li", l)) : [];
  return h(
    "div",
    { class: "alert alert-error", role: "alert" },
    h("strong", problem.title || "Something went wrong"),
    h("div", problem.detail || ""),
    items.length ? h("ul", items) : null,
  );
}

/** Run `fn` now and every `ms` after it finishes, until the returned stop() (or a 401). */
export function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      await fn();
    } catch (err) {
      if (err instanceof AuthNeeded) stopped = true;
      else console.warn("refresh failed", err);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

export function pageHeader(title, ...right) {
  return h("div", { class: "page-header" }, h("h1", title), h("div", { class: "actions" }, right));
}
