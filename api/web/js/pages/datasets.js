// Datasets: upload by drag and drop (or a file picker) with a progress bar, then what the server found
// (preview, columns, rows, format, warnings) and "Train on this"; below, the datasets stored so far.

import { api, upload } from "../api.js";
import { errorBox, fill, fmtAgo, fmtBytes, h, pageHeader } from "../ui.js";

export function render(view, { args: [id] }) {
  const detail = h("div", { id: "dataset-detail" });
  const list = h("tbody");
  const input = h("input", { type: "file", id: "dataset-file", accept: ".csv,.tsv,.txt,text/*", hidden: true, onchange: () => input.files[0] && send(input.files[0]) });
  const bar = h("div", { class: "progress-fill fill-running", style: "width: 0%" });
  const barLabel = h("span", { class: "progress-label" });
  const progress = h("div", { class: "progress", id: "upload-progress", hidden: true }, h("div", { class: "progress-track" }, bar), barLabel);
  const zone = h(
    "label",
    { class: "dropzone", id: "dropzone", for: "dataset-file" },
    h("div", { class: "dropzone-icon" }, "⇪"),
    h("div", h("strong", "Drop a CSV, TSV or text file here"), " or click to choose one"),
    h("div", { class: "muted small" }, "Checked for encoding, delimiter, header and rows; stored by its SHA-256."),
    input,
  );
  for (const name of ["dragenter", "dragover"]) zone.addEventListener(name, (e) => (e.preventDefault(), zone.classList.add("over")));
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]);
  });

  view.append(
    pageHeader("Datasets"),
    h("section", { class: "card" }, zone, progress),
    detail,
    h(
      "section",
      { class: "card table-card" },
      h("h2", "Stored datasets"),
      h("table", { class: "table", id: "datasets-table" }, h("thead", h("tr", ["File", "Rows", "Columns", "Size", "Uploaded", ""].map((c) => h("th", c)))), list),
    ),
  );

  async function send(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    progress.hidden = false;
    bar.className = "progress-fill fill-running";
    const show = (fraction) => {
      bar.style.width = `${(fraction * 100).toFixed(0)}%`;
      barLabel.textContent = fraction < 1 ? `Uploading ${file.name}: ${(fraction * 100).toFixed(0)}%` : "Checking the file…";
    };
    show(0);
    try {
      const dataset = await upload("/datasets", form, show);
      bar.style.width = "100%";
      bar.className = "progress-fill fill-succeeded";
      barLabel.textContent = `Uploaded ${file.name}: ${dataset.rows.toLocaleString()} rows`;
      history.pushState(null, "", `#/datasets/${dataset.id}`); // no re-render: the bar stays
      fill(detail, datasetCard(dataset));
      refreshList().catch(() => {});
    } catch (err) {
      progress.hidden = true;
      fill(detail, errorBox(err));
    } finally {
      input.value = "";
    }
  }

  async function refreshList() {
    const datasets = await api("/datasets?limit=1000");
    fill(
      list,
      datasets.data.length
        ? datasets.data.map((d) =>
            h(
              "tr",
              { "data-dataset": d.id },
              h("td", h("a", { href: `#/datasets/${d.id}` }, d.filename)),
              h("td", d.rows.toLocaleString()),
              h("td", { class: "small" }, d.columns.join(", ")),
              h("td", fmtBytes(d.size_bytes)),
              h("td", { class: "muted" }, fmtAgo(d.created_at)),
              h("td", h("a", { class: "button small", href: `#/new?dataset=${d.id}` }, "Train on this")),
            ),
          )
        : h("tr", h("td", { colspan: 6, class: "empty" }, "No datasets yet: drop a file above.")),
    );
  }

  refreshList().catch((err) => fill(detail, errorBox(err)));
  if (id) api(`/datasets/${id}`).then((d) => fill(detail, datasetCard(d)), (err) => fill(detail, errorBox(err)));
}

function datasetCard(d) {
  const fmt = d.format;
  const fact = (label, value) => h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value));
  const delimiter = { "\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe" }[fmt.delimiter] || fmt.delimiter || "none";
  return h(
    "section",
    { class: "card dataset-card", "data-dataset": d.id },
    h(
      "div",
      { class: "card-header" },
      h("h2", d.filename),
      h("a", { class: "button primary", id: "train-on-this", href: `#/new?dataset=${d.id}` }, "Train on this →"),
    ),
    h(
      "div",
      { class: "stats" },
      fact("Rows", h("span", { id: "dataset-rows" }, d.rows.toLocaleString())),
      fact("Columns", h("span", { class: "chips", id: "dataset-columns" }, d.columns.map((c) => h("span", { class: "chip" }, c)))),
      fact("Format", fmt.kind === "text" ? "plain text" : `${fmt.kind}, ${delimiter}-separated`),
      fact("Header", fmt.header ? "yes" : "no (by index)"),
      fact("Encoding", fmt.encoding),
      fact("Size", fmtBytes(d.size_bytes)),
    ),
    d.warnings.length ? h("div", { class: "alert alert-warn", id: "dataset-warnings" }, h("strong", "Warnings"), h("ul", d.warnings.map((w) => h("li", w)))) : null,
    h("h3", "Preview"),
    h(
      "div",
      { class: "table-scroll" },
      h(
        "table",
        { class: "table preview", id: "dataset-preview" },
        h("thead", h("tr", d.columns.map((c) => h("th", c)))),
        h("tbody", d.preview.map((row) => h("tr", d.columns.map((c) => h("td", row[c] ?? ""))))),
      ),
    ),
  );
}
