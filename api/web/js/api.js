// The API as the pages call it: the key from the browser session, problem+json errors, ETags, uploads
// with progress, downloads and the job stream (docs/design.md, "The dashboard").

const KEY = "jobformer.api_key";
const MAX_ETAGS = 200;

/** A problem+json answer (RFC 9457): `status`, `detail` and the field `errors` with their `loc`. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

/** The server wants a key (401): the page has gone to the key form already. */
export class AuthNeeded extends Error {}

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const forgetKey = () => sessionStorage.removeItem(KEY);

function authHeaders(extra = {}) {
  const headers = { ...extra };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

/** Back to the key form, then to where the person was. */
export function askForKey(message) {
  const onForm = location.hash.startsWith("#/key");
  const next = onForm ? new URLSearchParams(location.hash.split("?")[1]).get("next") : location.hash;
  const params = new URLSearchParams({ next: next || "#/jobs" });
  if (message) params.set("why", message);
  location.hash = `#/key?${params}`;
}

async function body(response) {
  const type = response.headers.get("Content-Type") || "";
  if (response.status === 204) return null;
  if (type.includes("json")) return response.json();
  const text = await response.text();
  return { detail: text || response.statusText };
}

// GET answers by URL with their ETag: a 304 answers the cached body (the API may or may not send ETags).
const etags = new Map();

/** Call the API; answers the parsed JSON, throws ApiError (4xx/5xx) or AuthNeeded (401). */
export async function api(path, { method = "GET", json, headers = {}, signal } = {}) {
  const h = authHeaders(headers);
  const init = { method, headers: h, cache: "no-store", signal };
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const cached = method === "GET" ? etags.get(path) : undefined;
  if (cached) h["If-None-Match"] = cached.etag;
  const response = await fetch(path, init);
  if (response.status === 304 && cached) return cached.data;
  const data = await body(response);
  if (response.status === 401) {
    forgetKey();
    askForKey(data?.detail);
    throw new AuthNeeded(data?.detail || "an API key is needed");
  }
  if (!response.ok) throw new ApiError(response.status, data);
  const etag = response.headers.get("ETag");
  if (method === "GET" && etag) {
    if (etags.size >= MAX_ETAGS) etags.clear();
    etags.set(path, { etag, data });
  }
  return data;
}

/** POST a multipart form with upload progress (fetch cannot report it): `onProgress(fraction)`. */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, { detail: "the upload failed: the server did not answer" }));
    xhr.onload = () => {
      let data;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = { detail: xhr.responseText || xhr.statusText };
      }
      if (xhr.status === 401) {
        forgetKey();
        askForKey(data.detail);
        reject(new AuthNeeded(data.detail));
      } else if (xhr.status >= 400) reject(new ApiError(xhr.status, data));
      else resolve(data);
    };
    xhr.send(form);
  });
}

/** Download an answer as a file: fetched with the key (a plain link cannot send it), saved from a blob. */
export async function download(path, filename) {
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (response.status === 401) {
    askForKey();
    throw new AuthNeeded();
  }
  if (!response.ok) throw new ApiError(response.status, await body(response));
  const url = URL.createObjectURL(await response.blob());
  const a = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/**
 * Read the job's server-sent events (GET /jobs/{id}/stream) with fetch, which can send the key
 * (EventSource cannot). Calls `onEvent(name, data)` per event. Answers false at once when the server
 * has no stream (the caller polls instead), true when the stream ended.
 */
export async function readStream(path, onEvent, signal) {
  const response = await fetch(path, {
    headers: authHeaders({ Accept: "text/event-stream" }),
    cache: "no-store",
    signal,
  });
  if (response.status === 401) {
    askForKey();
    throw new AuthNeeded();
  }
  const type = response.headers.get("Content-Type") || "";
  if (!response.ok || !type.startsWith("text/event-stream")) return false;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return true;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}
