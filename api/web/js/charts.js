// Line charts over training steps, drawn with the vendored uPlot (api/web/vendor/uplot/VERSION), and the
// metric points they are made of (docs/design.md, "The dashboard").

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { h } from "./ui.js";

export const COLORS = ["#4f46e5", "#e11d48", "#059669", "#d97706", "#0891b2", "#7c3aed", "#64748b", "#db2777"];

/** A job's metric points by curve ("train_loss", "val_accuracy", ...) and step; adding is idempotent. */
export class Curves {
  constructor() {
    this.curves = new Map();
    this.lastStep = 0;
  }

  /** Add API points `{step, split, name, value}`; answers how many were new. */
  add(points) {
    let added = 0;
    for (const p of points) {
      const key = `${p.split}_${p.name}`;
      if (!this.curves.has(key)) this.curves.set(key, new Map());
      const curve = this.curves.get(key);
      if (!curve.has(p.step)) added += 1;
      curve.set(p.step, p.value);
      this.lastStep = Math.max(this.lastStep, p.step);
    }
    return added;
  }

  has(key) {
    return this.curves.has(key) && this.curves.get(key).size > 0;
  }

  get(key) {
    return this.curves.get(key) || new Map();
  }
}

/** Align curves (Maps step -> value) on their union of steps, as uPlot wants: [xs, ys1, ys2, ...]. */
export function align(curves) {
  const steps = new Set();
  for (const c of curves) for (const s of c.keys()) steps.add(s);
  const xs = [...steps].sort((a, b) => a - b);
  return [xs, ...curves.map((c) => xs.map((s) => (c.has(s) ? c.get(s) : null)))];
}

/**
 * A chart card: `series` is [{label, color, dash}], `set(curves)` redraws with one Map per series.
 * The card's `data-points` counts the points drawn (the browser test watches it grow).
 */
export class LineChart {
  constructor({ title, series, yLabel = "", logY = false, empty = "no points yet" }) {
    this.series = series;
    this.plotEl = h("div", { class: "chart-plot" });
    this.emptyEl = h("div", { class: "chart-empty" }, empty);
    this.el = h("section", { class: "card chart", "data-chart": title, "data-points": "0" },
      h("h3", title), this.plotEl, this.emptyEl);
    this.opts = {
      width: 400,
      height: 220,
      scales: { x: { time: false }, y: logY ? { distr: 3 } : {} },
      axes: [
        { label: "step", stroke: "#64748b", grid: { stroke: "#eef0f4" }, ticks: { stroke: "#e2e8f0" } },
        { label: yLabel, stroke: "#64748b", grid: { stroke: "#eef0f4" }, ticks: { stroke: "#e2e8f0" }, size: 56 },
      ],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      series: [
        { label: "step" },
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 2,
          dash: s.dash,
          spanGaps: true,
          points: { show: s.points ?? false, size: 5 },
        })),
      ],
    };
    this.plot = null;
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(this.plotEl);
  }

  fit() {
    const width = Math.max(240, this.plotEl.clientWidth);
    if (this.plot && width !== this.plot.width) this.plot.setSize({ width, height: this.opts.height });
  }

  set(curves) {
    const data = align(curves);
    const count = data.slice(1).reduce((n, ys) => n + ys.filter((v) => v !== null).length, 0);
    this.el.dataset.points = String(count);
    this.emptyEl.hidden = count > 0;
    if (!count) return;
    if (!this.plot) {
      this.opts.width = Math.max(240, this.plotEl.clientWidth || 400);
      this.plot = new uPlot(this.opts, data, this.plotEl);
    } else {
      this.plot.setData(data);
    }
  }

  destroy() {
    this.resize.disconnect();
    this.plot?.destroy();
  }
}

// The learning rate schedule, as core/ml/optim.py lr_at computes it: linear warmup, then cosine decay to
// MIN_LR_RATIO of the peak. The API records no learning-rate points, so the page draws it from the config.
const MIN_LR_RATIO = 0.1;

export function lrAt(step, peak, warmup, total) {
  if (step < warmup) return (peak * (step + 1)) / (warmup + 1);
  const progress = Math.min(1, (step - warmup) / Math.max(1, total - warmup));
  return peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + Math.cos(Math.PI * progress)));
}

/** The schedule's curve (step -> lr) for a config and its total steps, up to `upTo` steps. */
export function lrCurve(training, total, upTo = total) {
  const curve = new Map();
  const n = Math.min(upTo, total);
  const stride = Math.max(1, Math.floor(total / 200));
  for (let s = 0; s <= n; s += stride) curve.set(s, lrAt(s, training.learning_rate, training.warmup_steps, total));
  if (n > 0) curve.set(n, lrAt(n, training.learning_rate, training.warmup_steps, total));
  return curve;
}
