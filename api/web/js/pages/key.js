// The key form: shown when the server needs an API key (any 401). The key is kept in sessionStorage, for
// this browser tab only, and checked with one call before the person goes back where they were.

import { api, AuthNeeded, setKey } from "../api.js";
import { errorBox, h } from "../ui.js";

export function render(view, { query }) {
  const next = query.get("next") || "#/jobs";
  const input = h("input", {
    id: "api-key",
    name: "key",
    type: "password",
    autocomplete: "off",
    placeholder: "the key from JOBFORMER_API_KEYS",
    required: true,
  });
  const message = h("div", { class: "form-message" });
  const why = query.get("why");
  const form = h(
    "form",
    { class: "card key-card", onsubmit: submit },
    h("h1", "API key"),
    h("p", { class: "muted" }, "This server needs an API key. It is kept for this browser tab only."),
    why && why !== "this server needs an API key: send 'Authorization: Bearer <key>'"
      ? h("div", { class: "alert alert-error" }, why)
      : null,
    h("label", { for: "api-key" }, "Key"),
    input,
    message,
    h("button", { class: "primary", type: "submit" }, "Continue"),
  );
  view.append(h("div", { class: "centered" }, form));
  input.focus();

  async function submit(event) {
    event.preventDefault();
    setKey(input.value.trim());
    message.replaceChildren();
    try {
      await api("/jobs?limit=1");
      location.hash = next;
    } catch (err) {
      if (!(err instanceof AuthNeeded)) message.append(errorBox(err));
    }
  }
}
