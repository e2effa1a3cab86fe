// The dashboard's router: one page module per route, all under `/` with the route in the hash, so the
// server serves one file (docs/design.md, "The dashboard").

import { forgetKey, getKey } from "./api.js";
import * as compare from "./pages/compare.js";
import * as datasets from "./pages/datasets.js";
import * as job from "./pages/job.js";
import * as jobs from "./pages/jobs.js";
import * as key from "./pages/key.js";
import * as newJob from "./pages/new-job.js";
import * as sweep from "./pages/sweep.js";
import * as sweeps from "./pages/sweeps.js";

// "#/jobs/abc?x=1" -> the page, its path arguments and its query.
const ROUTES = [
  [/^#\/jobs\/([\w-]+)$/, job, "jobs"],
  [/^#\/jobs$/, jobs, "jobs"],
  [/^#\/sweeps\/([\w-]+)$/, sweep, "sweeps"],
  [/^#\/sweeps$/, sweeps, "sweeps"],
  [/^#\/datasets\/([\w-]+)$/, datasets, "datasets"],
  [/^#\/datasets$/, datasets, "datasets"],
  [/^#\/new$/, newJob, "new"],
  [/^#\/compare$/, compare, "compare"],
  [/^#\/key$/, key, ""],
];

const view = document.getElementById("view");
let cleanup = null;

function route() {
  const [path, query = ""] = (location.hash || "#/jobs").split("?");
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  if (!found) {
    location.hash = "#/jobs";
    return;
  }
  const [pattern, page, nav] = found;
  cleanup?.();
  cleanup = null;
  view.replaceChildren();
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === nav));
  document.getElementById("forget-key").hidden = !getKey();
  const args = path.match(pattern).slice(1);
  cleanup = page.render(view, { args, query: new URLSearchParams(query) }) || null;
}

document.getElementById("forget-key").addEventListener("click", () => {
  forgetKey();
  location.hash = "#/key";
});
window.addEventListener("hashchange", route);
route();
