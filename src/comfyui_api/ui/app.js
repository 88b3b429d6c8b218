"use strict";

// The dashboard: polls the probes and GET /ui/jobs, and follows each unfinished job's Server-Sent Events. Streams are
// read with fetch(), not EventSource, which cannot send the Authorization header that API_KEYS requires.

const KEY_STORAGE = "comfyui-api.key";
const JOBS_INTERVAL_MS = 2000;
const PROBES_INTERVAL_MS = 3000;
const RECONNECT_MS = 2000;
const JOB_LIMIT = 50;
// Browsers open at most six connections to one host over HTTP/1.1: open streams must leave room for the polls.
const MAX_STREAMS = 4;
const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
const ACTIVE = new Set(["queued", "running", "canceling"]);
const IMAGE_NAME = /\.(png|jpe?g|webp|gif)$/i;

const state = {
  filter: "all",
  jobs: new Map(), // id → the job as /ui/jobs lists it, updated by its stream, plus `preview`
  cards: new Map(), // id → its card's elements
  streams: new Map(), // id → AbortController
  thumbs: new Map(), // output URL → Promise of an object URL
  locked: false, // a data route answered 401: nothing is polled until a key is given
};

class Unauthorized extends Error {}

const $ = (id) => document.getElementById(id);

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = apiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized(await errorMessage(response));
  return response;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    const error = body.error;
    if (typeof error === "string") return error;
    if (error && typeof error.message === "string") return error.message;
  } catch {
    // not JSON: the status line says enough
  }
  return `${response.status} ${response.statusText}`.trim();
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Key ------------------------------------------------------------------------------------------------------------
function lock(message) {
  state.locked = true;
  for (const controller of state.streams.values()) controller.abort();
  state.streams.clear();
  $("key-panel").hidden = false;
  $("jobs-panel").hidden = true;
  const error = $("key-error");
  error.hidden = !apiKey();
  error.textContent = apiKey() ? `The key was refused: ${message}` : "";
  $("key-input").focus();
}

function unlock() {
  state.locked = false;
  $("key-panel").hidden = true;
  $("jobs-panel").hidden = false;
  $("forget-key").hidden = !apiKey();
}

function onKeySubmit(event) {
  event.preventDefault();
  const key = $("key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("key-input").value = "";
  unlock();
  refreshJobs();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  state.jobs.clear();
  for (const card of state.cards.values()) card.root.remove();
  state.cards.clear();
  $("forget-key").hidden = true;
  refreshJobs();
}

// Server state ---------------------------------------------------------------------------------------------------
function setPill(id, kind, text) {
  const pill = $(id);
  pill.dataset.state = kind;
  pill.querySelector("b").textContent = text;
}

async function probe(path) {
  try {
    const response = await api(path);
    return { ok: response.ok, body: await response.json().catch(() => null) };
  } catch {
    return null; // unreachable
  }
}

async function refreshProbes() {
  const [health, ready, v2] = await Promise.all([probe("/health"), probe("/ready"), probe("/api/v2/health")]);
  if (health === null) {
    setPill("state-server", "bad", "unreachable");
  } else {
    setPill("state-server", health.ok ? "good" : "bad", health.body?.status ?? (health.ok ? "healthy" : "not healthy"));
  }
  if (ready === null) setPill("state-ready", "bad", "unknown");
  else setPill("state-ready", ready.ok ? "good" : "warn", ready.ok ? "ready" : "not ready");
  const comfy = v2?.body?.comfyui;
  if (!comfy) {
    setPill("state-comfy", "bad", "unknown");
    setPill("state-queue", "unknown", "–");
    return;
  }
  if (comfy.up && comfy.connected) setPill("state-comfy", "good", "up");
  else setPill("state-comfy", comfy.up ? "warn" : "bad", comfy.up ? "up, not connected" : "down");
  const depth = comfy.queue_remaining ?? 0;
  setPill("state-queue", depth > 0 ? "busy" : "good", depth === 1 ? "1 prompt" : `${depth} prompts`);
}

// Jobs -------------------------------------------------------------------------------------------------------------
function listPath() {
  const status = state.filter === "failed" ? "&status=failed" : "";
  return `/ui/jobs?limit=${JOB_LIMIT}${status}`;
}

async function refreshJobs() {
  if (state.locked) return;
  let listed;
  try {
    const response = await api(listPath());
    if (!response.ok) throw new Error(await errorMessage(response));
    listed = (await response.json()).jobs;
  } catch (error) {
    if (error instanceof Unauthorized) {
      lock(error.message);
      return;
    }
    showJobsError(`Could not list the jobs: ${error.message}`);
    return;
  }
  unlock();
  showJobsError("");
  const seen = new Set();
  for (const job of listed) {
    seen.add(job.id);
    const known = state.jobs.get(job.id);
    // A terminal status heard on the stream stands until the store has it too.
    if (known && TERMINAL.has(known.status) && !TERMINAL.has(job.status)) continue;
    state.jobs.set(job.id, { ...job, preview: known?.preview ?? null });
  }
  for (const id of [...state.jobs.keys()]) if (!seen.has(id)) state.jobs.delete(id);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  render(listed.map((job) => job.id));
  followStreams();
}

function showJobsError(message) {
  const box = $("jobs-error");
  box.hidden = !message;
  box.textContent = message;
}

function visible(job) {
  if (state.filter === "active") return ACTIVE.has(job.status);
  if (state.filter === "failed") return job.status === "failed";
  return true;
}

function render(order) {
  const container = $("jobs");
  let shown = 0;
  for (const id of order) {
    const job = state.jobs.get(id);
    if (!job || !visible(job)) continue;
    const card = state.cards.get(id) ?? createCard(job);
    updateCard(card, job);
    container.appendChild(card.root); // in list order: appending an existing node moves it
    shown += 1;
  }
  for (const [id, card] of state.cards) {
    const job = state.jobs.get(id);
    if (!job || !visible(job)) {
      card.root.remove();
      state.cards.delete(id);
    }
  }
  $("jobs-empty").hidden = shown > 0;
}

function createCard(job) {
  const root = el("article", "job");
  root.dataset.id = job.id;
  const main = el("div", "job-main");
  const head = el("div", "job-head");
  const status = el("span", "badge status");
  const id = el("code", "job-id", job.id);
  id.title = job.id;
  const kind = el("span", "kind", job.kind === "v2" ? "v2 job" : "/prompt");
  const created = el("time", "muted small");
  head.append(status, id, kind, created);
  const bar = el("div", "bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  const fill = el("div", "fill");
  bar.appendChild(fill);
  const detail = el("div", "progress-text muted small");
  const error = el("div", "job-error");
  error.hidden = true;
  const outputs = el("div", "outputs");
  main.append(head, bar, detail, error, outputs);
  const preview = el("figure", "preview");
  preview.hidden = true;
  const previewImage = el("img");
  previewImage.alt = "Latest preview";
  preview.append(previewImage, el("figcaption", "muted small", "live preview"));
  root.append(main, preview);
  const card = { root, status, created, bar, fill, detail, error, outputs, preview, previewImage, outputKeys: "" };
  state.cards.set(job.id, card);
  return card;
}

function updateCard(card, job) {
  card.root.dataset.status = job.status;
  card.status.textContent = job.status;
  card.status.dataset.status = job.status;
  card.created.textContent = new Date(job.created_at).toLocaleTimeString();
  card.created.dateTime = job.created_at;

  const value = Math.max(0, Math.min(1, job.progress?.value ?? (job.status === "succeeded" ? 1 : 0)));
  const percent = Math.round(value * 100);
  card.fill.style.width = `${percent}%`;
  card.bar.setAttribute("aria-valuenow", String(percent));
  card.detail.textContent = progressText(job, percent);

  const error = job.status === "succeeded" ? null : job.error;
  card.error.hidden = !error;
  if (error) {
    // The failing node, unless the message names it already (a node's execution error does).
    const named = !error.node_id || error.message.includes(`node ${error.node_id}`);
    const where = named ? "" : ` (node ${error.node_id}${error.class_type ? `, ${error.class_type}` : ""})`;
    card.error.textContent = `${error.message}${where}`;
  }

  const showPreview = Boolean(job.preview) && !TERMINAL.has(job.status);
  card.preview.hidden = !showPreview;
  if (showPreview && card.previewImage.src !== job.preview) card.previewImage.src = job.preview;

  const keys = job.outputs.map((output) => output.url ?? output.name).join("\n");
  if (keys !== card.outputKeys) {
    card.outputKeys = keys;
    card.outputs.replaceChildren(...job.outputs.map(outputTile));
  }
}

function progressText(job, percent) {
  if (job.status === "queued") {
    return job.queue_position == null ? "queued" : `queued · ${job.queue_position} ahead`;
  }
  const progress = job.progress;
  if (!progress || TERMINAL.has(job.status)) return `${percent}%`;
  const parts = [`${percent}%`];
  if (progress.nodes_total) parts.push(`node ${progress.nodes_done}/${progress.nodes_total}`);
  if (progress.current_node_class) parts.push(progress.current_node_class);
  if (progress.steps) parts.push(`step ${progress.step ?? 0}/${progress.steps}`);
  return parts.join(" · ");
}

function outputTile(output) {
  const isImage = output.url && ((output.content_type ?? "").startsWith("image/") || IMAGE_NAME.test(output.name));
  if (!isImage) {
    const file = el("span", "file", output.name || "output");
    if (output.size_bytes != null) file.title = `${output.size_bytes} bytes`;
    return file;
  }
  const link = el("a", "thumb");
  link.target = "_blank";
  link.rel = "noopener";
  link.title = output.name;
  const image = el("img");
  image.alt = output.name;
  link.appendChild(image);
  // Asset contents are behind the key too: fetched with it, shown from an object URL.
  thumbnail(output.url).then(
    (url) => {
      image.src = url;
      link.href = url;
    },
    () => link.classList.add("missing"),
  );
  return link;
}

function thumbnail(url) {
  let promise = state.thumbs.get(url);
  if (!promise) {
    promise = api(url).then(async (response) => {
      if (!response.ok) throw new Error(await errorMessage(response));
      return URL.createObjectURL(await response.blob());
    });
    promise.catch(() => state.thumbs.delete(url)); // tried again on the next render
    state.thumbs.set(url, promise);
  }
  return promise;
}

// Live events --------------------------------------------------------------------------------------------------------
function followStreams() {
  for (const [id, controller] of state.streams) {
    const job = state.jobs.get(id);
    if (!job || TERMINAL.has(job.status)) {
      controller.abort();
      state.streams.delete(id);
    }
  }
  const running = [...state.jobs.values()].filter((job) => !TERMINAL.has(job.status));
  // Running jobs first: theirs are the events that move.
  running.sort((a, b) => (a.status === "running" ? 0 : 1) - (b.status === "running" ? 0 : 1));
  for (const job of running) {
    if (state.streams.size >= MAX_STREAMS) break;
    if (!state.streams.has(job.id)) follow(job);
  }
}

function follow(job) {
  const controller = new AbortController();
  state.streams.set(job.id, controller);
  stream(job.id, job.events_url, controller.signal).finally(() => {
    if (state.streams.get(job.id) === controller) state.streams.delete(job.id);
  });
}

async function stream(id, url, signal) {
  let lastEventId = null;
  while (!signal.aborted) {
    try {
      const headers = lastEventId ? { "Last-Event-ID": lastEventId } : {};
      const response = await api(url, { headers, signal });
      if (!response.ok || !response.body) return; // gone (404, past its retention) or refused: the poll shows it
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (!event) continue;
          if (event.id) lastEventId = event.id;
          if (apply(id, event)) return; // the terminal status: the stream ends with it
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof Unauthorized) {
        lock(error.message);
        return;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
  }
}

function parseEvent(block) {
  const event = { name: "message", id: null, data: [] };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.name = value;
    else if (field === "id") event.id = value;
    else if (field === "data") event.data.push(value);
  }
  if (event.data.length === 0) return null;
  try {
    return { ...event, data: JSON.parse(event.data.join("\n")) };
  } catch {
    return null;
  }
}

// The job's state after `event`; whether the event ended its stream.
function apply(id, event) {
  const job = state.jobs.get(id);
  if (!job) return true;
  const data = event.data;
  let ended = false;
  if (event.name === "status") {
    job.status = data.status;
    job.queue_position = data.queue_position ?? null;
    ended = TERMINAL.has(data.status);
  } else if (event.name === "progress") {
    job.progress = data;
  } else if (event.name === "preview") {
    job.preview = `data:${data.content_type};base64,${data.data_base64}`;
  } else if (event.name === "output") {
    const output = { ...data, url: sameOriginPath(data.url) };
    if (!job.outputs.some((known) => (known.url ?? known.name) === (output.url ?? output.name))) {
      job.outputs = [...job.outputs, output];
    }
  }
  const card = state.cards.get(id);
  if (card) updateCard(card, job);
  if (ended) {
    refreshJobs(); // the list has what the stream does not carry: the error, the final outputs
    refreshProbes(); // and ComfyUI's queue has moved
  }
  return ended;
}

// A v2 output's URL, absolute on the stream, as the path the list gives it; another host's URL is not shown.
function sameOriginPath(url) {
  if (typeof url !== "string") return null;
  const parsed = new URL(url, location.href);
  return parsed.origin === location.origin && parsed.pathname.startsWith("/api/v2/assets/") ? parsed.pathname : null;
}

// Start ----------------------------------------------------------------------------------------------------------
function setFilter(filter) {
  state.filter = filter;
  for (const button of $("filters").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.filter === filter));
  }
  refreshJobs();
}

function start() {
  $("key-form").addEventListener("submit", onKeySubmit);
  $("forget-key").addEventListener("click", forgetKey);
  $("filters").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-filter]");
    if (button) setFilter(button.dataset.filter);
  });
  $("forget-key").hidden = !apiKey();
  refreshProbes();
  refreshJobs();
  setInterval(() => document.hidden || refreshProbes(), PROBES_INTERVAL_MS);
  setInterval(() => document.hidden || refreshJobs(), JOBS_INTERVAL_MS);
}

start();
