// New job: a form built from the training config's JSON schema (/ui/config-schema.json), the text and
// label columns (text to text: source and target columns, docs/design.md "Text to text") as drop-downs of
// the dataset's columns, a JSON view of the same config, and the API's problem+json errors shown at the
// fields they name (docs/design.md, "The dashboard").

import { api, ApiError } from "../api.js";
import { errorBox, fill, h, pageHeader } from "../ui.js";

const SECTIONS = [
  ["tokenizer", "Tokenizer"],
  ["target_tokenizer", "Target tokenizer (text to text)"],
  ["model", "Model"],
  ["training", "Training"],
];

export function render(view, { query }) {
  const fields = new Map(); // "training.learning_rate" -> {input, schema, error}
  const top = h("div", { id: "form-errors" });
  const form = h("form", { id: "job-form", class: "job-form", novalidate: true, onsubmit: submit });
  const jsonText = h("textarea", { id: "config-json", class: "code", rows: 24, spellcheck: false });
  const jsonError = h("div", { class: "field-error" });
  const jsonPane = h("div", { class: "json-pane", hidden: true }, jsonText, jsonError);
  const formTab = h("button", { type: "button", class: "tab active", onclick: () => mode("form") }, "Form");
  const jsonTab = h("button", { type: "button", class: "tab", id: "json-tab", onclick: () => mode("json") }, "JSON");
  const submitButton = h("button", { class: "primary", type: "submit", id: "start-job" }, "Start training");
  let datasets = [];
  let current = "form";

  view.append(pageHeader("New job", h("div", { class: "tabs" }, formTab, jsonTab)), top, form);
  load().catch((err) => fill(top, errorBox(err)));

  async function load() {
    const [schema, list] = await Promise.all([api("/ui/config-schema.json"), api("/datasets?limit=1000")]);
    datasets = list.data;
    let preset = null;
    let datasetId = query.get("dataset");
    let testId = null;
    if (query.get("from")) {
      const job = await api(`/jobs/${query.get("from")}`);
      preset = job.config;
      datasetId = job.dataset_id;
      testId = job.test_dataset_id;
    }
    build(schema, datasetId || datasets[0]?.id, testId);
    if (preset) apply(preset);
  }

  function field(path, label, input, help) {
    const error = h("div", { class: "field-error", "data-error-for": path });
    const wrap = h("div", { class: "field", "data-field": path }, h("label", { for: `f-${path}` }, label), input, help ? h("div", { class: "help" }, help) : null, error);
    input.id = `f-${path}`;
    input.name = path;
    fields.set(path, { input, error, wrap });
    return wrap;
  }

  function build(schema, datasetId, testId) {
    const dataset = h(
      "select",
      { onchange: () => columns() },
      datasets.map((d) => h("option", { value: d.id, selected: d.id === datasetId }, `${d.filename} (${d.rows.toLocaleString()} rows)`)),
    );
    const task = h("select", { onchange: () => columns() }, schema.properties.task.enum.map((t) => h("option", { value: t }, t.replaceAll("_", " "))));
    const text = h("select");
    const label = h("select");
    const source = h("select");
    const target = h("select");
    const prop = schema.properties;
    const main = h(
      "fieldset",
      { class: "card" },
      h("legend", "Data"),
      h(
        "div",
        { class: "grid" },
        field("dataset_id", "Dataset", dataset, datasets.length ? null : h("a", { href: "#/datasets" }, "Upload one first")),
        field(
          "test_dataset_id",
          "Test set",
          h("select", h("option", { value: "" }, "none"), datasets.map((d) => h("option", { value: d.id, selected: d.id === testId }, `${d.filename} (${d.rows.toLocaleString()} rows)`))),
          "Optional: the best checkpoint is evaluated on it when training succeeds (the training file's columns).",
        ),
        field("task", "Task", task, schema.properties.task.description),
        field("text_column", "Text column", text, "The column with the texts."),
        field("label_column", "Label column", label, "The column with the classes (classification)."),
        field("source_column", "Source column", source, prop.source_column.description),
        field("target_column", "Target column", target, prop.target_column.description),
        field("shared_vocabulary", "Shared vocabulary", input(prop.shared_vocabulary), prop.shared_vocabulary.description),
        field("queue", "Queue", h("input", { type: "text", placeholder: "the server's default" }), "A worker queue (JOBFORMER_QUEUES)."),
        field("device", "Device", h("input", { type: "text", value: schema.properties.device.default }), schema.properties.device.description),
      ),
    );
    const sections = SECTIONS.map(([name, title]) => {
      const defs = defsOf(schema, name);
      const inputs = Object.entries(defs.properties).map(([key, prop]) => field(`${name}.${key}`, key.replaceAll("_", " "), input(prop), prop.description));
      return h("fieldset", { class: "card", "data-section": name }, h("legend", title), h("div", { class: "field-error", "data-error-for": name }), h("div", { class: "grid" }, inputs));
    });
    for (const [path, { input: el }] of fields) {
      const prop = propOf(schema, path);
      if (prop) el.dataset.schema = JSON.stringify(prop);
    }
    fill(form, main, sections, jsonPane, h("div", { class: "form-actions sticky" }, submitButton, h("span", { class: "muted small" }, "Every field has its default; only the task is required.")));
    columns();
  }

  function columns() {
    const d = datasets.find((x) => x.id === fields.get("dataset_id").input.value);
    const cols = d ? d.columns : [];
    const sample = (c) => (d?.preview[0]?.[c] ? ` — “${d.preview[0][c].slice(0, 30)}”` : "");
    const options = (preferred) => cols.map((c) => h("option", { value: c, selected: c === preferred }, `${c}${sample(c)}`));
    // Guess: a column named text/label, else the longest values for the text and the other for the label.
    const longest = [...cols].sort((a, b) => (d.preview[0]?.[b]?.length || 0) - (d.preview[0]?.[a]?.length || 0));
    const textGuess = cols.includes("text") ? "text" : longest[0];
    const labelGuess = cols.includes("label") ? "label" : longest.find((c) => c !== textGuess);
    fill(fields.get("text_column").input, options(textGuess));
    fill(fields.get("label_column").input, options(labelGuess));
    // Text to text: the schema's defaults, the first column is the source and the second the target.
    fill(fields.get("source_column").input, options(cols[0]));
    fill(fields.get("target_column").input, options(cols[1]));
    const task = fields.get("task").input.value;
    const pairs = task === "text_to_text";
    fields.get("label_column").wrap.hidden = task !== "classification";
    fields.get("text_column").wrap.hidden = pairs;
    for (const name of ["source_column", "target_column", "shared_vocabulary"]) fields.get(name).wrap.hidden = !pairs;
    form.querySelector('[data-section="target_tokenizer"]').hidden = !pairs || current === "json";
  }

  function columnValue(name) {
    const d = datasets.find((x) => x.id === fields.get("dataset_id").input.value);
    const value = fields.get(name).input.value;
    return d && !d.format.header && /^\d+$/.test(value) ? Number(value) : value; // by index without a header
  }

  /** The config the form says: task and columns always, other fields where they differ from the default. */
  function config() {
    const out = { task: fields.get("task").input.value };
    const pairs = out.task === "text_to_text";
    if (pairs) {
      out.source_column = columnValue("source_column");
      out.target_column = columnValue("target_column");
      if (fields.get("shared_vocabulary").input.checked) out.shared_vocabulary = true;
    } else out.text_column = columnValue("text_column");
    if (out.task === "classification") out.label_column = columnValue("label_column");
    const device = fields.get("device").input.value.trim();
    if (device && device !== "auto") out.device = device;
    for (const [path, { input: el }] of fields) {
      const [section, key] = path.split(".");
      if (!key || (section === "target_tokenizer" && !pairs)) continue;
      const prop = JSON.parse(el.dataset.schema);
      const value = read(el, prop);
      if (value !== undefined && value !== (prop.default ?? null)) (out[section] ||= {})[key] = value;
    }
    return out;
  }

  function apply(cfg) {
    const set = (path, value) => {
      const f = fields.get(path);
      if (!f) return;
      if (f.input.type === "checkbox") f.input.checked = Boolean(value);
      else f.input.value = value === null || value === undefined ? "" : String(value);
    };
    if (cfg.task) set("task", cfg.task);
    columns();
    for (const key of ["text_column", "label_column", "source_column", "target_column", "shared_vocabulary", "device"]) {
      if (cfg[key] !== undefined) set(key, cfg[key]);
    }
    for (const [section] of SECTIONS) for (const [key, value] of Object.entries(cfg[section] || {})) set(`${section}.${key}`, value);
  }

  function mode(next) {
    if (next === current) return;
    if (next === "json") {
      jsonText.value = JSON.stringify(config(), null, 2);
    } else {
      try {
        apply(JSON.parse(jsonText.value));
      } catch (err) {
        fill(jsonError, `Not valid JSON: ${err.message}`);
        return;
      }
    }
    current = next;
    fill(jsonError);
    formTab.classList.toggle("active", next === "form");
    jsonTab.classList.toggle("active", next === "json");
    for (const fs of form.querySelectorAll("fieldset")) fs.hidden = next === "json";
    const pairs = fields.get("task").input.value === "text_to_text";
    form.querySelector('[data-section="target_tokenizer"]').hidden = next === "json" || !pairs;
    jsonPane.hidden = next !== "json";
  }

  async function submit(event) {
    event.preventDefault();
    clearErrors();
    let cfg;
    try {
      cfg = current === "json" ? JSON.parse(jsonText.value) : config();
    } catch (err) {
      fill(jsonError, `Not valid JSON: ${err.message}`);
      return;
    }
    const body = { dataset_id: fields.get("dataset_id").input.value, config: cfg };
    const queue = fields.get("queue").input.value.trim();
    if (queue) body.queue = queue;
    const testSet = fields.get("test_dataset_id").input.value;
    if (testSet) body.test_dataset_id = testSet;
    submitButton.disabled = true;
    try {
      const job = await api("/jobs", { method: "POST", json: body });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      showErrors(err);
    } finally {
      submitButton.disabled = false;
    }
  }

  function clearErrors() {
    fill(top);
    fill(jsonError);
    for (const el of form.querySelectorAll("[data-error-for]")) fill(el);
    for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
  }

  /** Each problem at the field its `loc` names (["body", "config", "training", "learning_rate"]). */
  function showErrors(err) {
    fill(top, errorBox(err));
    if (!(err instanceof ApiError)) return;
    const lines = [];
    for (const e of err.problem.errors || []) {
      const loc = (e.loc || []).filter((p) => p !== "body");
      if (loc[0] === "config" && loc.length > 1) loc.shift();
      lines.push(`${loc.join(".")}: ${e.msg}`);
      for (let n = loc.length; n > 0; n--) {
        const slot = form.querySelector(`[data-error-for="${CSS.escape(loc.slice(0, n).join("."))}"]`);
        if (!slot) continue;
        slot.append(h("div", e.msg));
        slot.closest(".field")?.classList.add("invalid");
        break;
      }
    }
    if (current === "json") fill(jsonError, lines.map((l) => h("div", l)));
    form.querySelector(".invalid")?.scrollIntoView({ block: "center" });
  }
}

function propOf(schema, path) {
  const [section, key] = path.split(".");
  if (!key) return null;
  return defsOf(schema, section).properties[key];
}

/** A section's definition: a $ref, or (an optional section such as target_tokenizer) anyOf [$ref, null]. */
function defsOf(schema, section) {
  const prop = schema.properties[section];
  const ref = prop.$ref || prop.anyOf.find((t) => t.$ref).$ref;
  return schema.$defs[ref.split("/").pop()];
}

/** An input for a schema property: a select for enums, a checkbox for booleans, else a text/number box. */
function input(prop) {
  const types = prop.anyOf ? prop.anyOf.map((t) => t.type) : [prop.type];
  const bounds = prop.anyOf ? prop.anyOf[0] : prop;
  if (prop.enum) return h("select", prop.enum.map((v) => h("option", { value: v, selected: v === prop.default }, v)));
  if (types.includes("boolean")) return h("input", { type: "checkbox", checked: prop.default === true });
  const numeric = types.includes("integer") || types.includes("number");
  return h("input", {
    type: numeric ? "number" : "text",
    step: types.includes("integer") ? "1" : "any",
    min: bounds.minimum ?? bounds.exclusiveMinimum,
    max: bounds.maximum ?? bounds.exclusiveMaximum,
    value: prop.default === null || prop.default === undefined ? "" : String(prop.default),
    placeholder: types.includes("null") ? "none" : "",
  });
}

/** The value of an input for its property: undefined when empty and required (the default applies). */
function read(el, prop) {
  const types = prop.anyOf ? prop.anyOf.map((t) => t.type) : [prop.type];
  if (el.type === "checkbox") return el.checked;
  const raw = el.value.trim();
  if (raw === "") return types.includes("null") ? null : undefined;
  if (types.includes("integer") || types.includes("number")) {
    const n = Number(raw);
    return Number.isNaN(n) ? raw : n; // the API names the field and says what it wants
  }
  return raw;
}
