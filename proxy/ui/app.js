// modelplane's dashboard: plain JavaScript, no build step, nothing fetched from elsewhere.
// Everything shown comes from the admin API, the same JSON `modelplane status` renders:
//   /api/status (polled each second, and at once after each event), /api/events?follow=1 (SSE),
//   /api/requests (polled), /api/models/{m}/logs?follow=1 (SSE).
// SSE is read with fetch() rather than EventSource, so that the admin key can go in the
// Authorization header as it does for every other call.
"use strict";

const STATUS_EVERY = 1000; // ms between status polls
const REQUESTS_EVERY = 2500;
const MAX_EVENTS = 200;
const MAX_LOG_LINES = 1000;
const BAD_EVENTS = /Fail|Crash|Unschedulable|Refused|Error|Stale/;

const $ = (selector) => document.querySelector(selector);
const state = { status: null, logModel: "", logAbort: null, keyWaiters: [] };

// --- formatting --------------------------------------------------------------------------

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function size(bytes) {
  if (bytes == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes, i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i && n < 100 && n % 1 ? 1 : 0)} ${units[i]}`;
}

function duration(seconds) {
  if (seconds == null) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s % 86400 / 3600)}h`;
}

function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString([], { hour12: false });
}

// --- the admin API ---------------------------------------------------------------------------

function headers() {
  const key = sessionStorage.getItem("modelplane-key");
  return key ? { authorization: `Bearer ${key}` } : {};
}

// A 401 asks for the key once (every caller waiting on it), then the call is tried again.
function askKey() {
  return new Promise((resolve) => {
    state.keyWaiters.push(resolve);
    const dialog = $("#key-dialog");
    if (!dialog.open) dialog.showModal();
  });
}

async function api(path, options = {}) {
  for (;;) {
    const response = await fetch(path, { ...options, headers: { ...headers(), ...options.headers } });
    if (response.status !== 401) return response;
    await askKey();
  }
}

async function json(path) {
  const response = await api(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// Server-sent events over fetch: calls onData with each `data:` payload (parsed JSON) until
// the signal aborts; reconnects after a broken stream; onState(true|false) tells connected.
async function follow(path, onData, signal, onState = () => {}) {
  let delay = 500;
  while (!signal.aborted) {
    try {
      const response = await api(path, { signal });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      onState(true);
      delay = 500;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) onData(JSON.parse(data));
        }
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    onState(false);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

// --- rendering: each cell is rewritten only when its HTML changed (buttons keep working) ------

function put(element, html) {
  if (element._html !== html) {
    element.innerHTML = html;
    element._html = html;
  }
}

function renderHeader(status) {
  const ready = $("#ready");
  ready.textContent = status.ready ? "ready" : "not ready";
  ready.className = `pill phase ${status.ready ? "Ready" : "Failed"}`;
  ready.title = status.readyReason || "";
  const applied = status.applied;
  $("#applied").textContent = applied ? applied.text : "nothing applied yet";
  $("#applied").title = applied && applied.commit ? applied.commit : "";
}

function renderAlerts(status) {
  const parts = [];
  const errors = status.errors || [];
  if (errors.length) {
    parts.push(`<div class="alert error"><b>${errors.length} invalid document${errors.length > 1 ? "s" : ""}: last valid version in force (Stale)</b>${
      errors.map((e) => `<div><code>${esc(e)}</code></div>`).join("")}</div>`);
  }
  for (const warning of status.warnings || []) {
    parts.push(`<div class="alert warning"><b>warning</b>${esc(warning)}</div>`);
  }
  for (const [runtime, why] of Object.entries(status.runtimesUnavailable || {})) {
    parts.push(`<div class="alert error"><b>runtime ${esc(runtime)} unavailable</b>${esc(why)}</div>`);
  }
  put($("#alerts"), parts.join(""));
}

function untilText(model, now) {
  if (model.pinned) return "never (pinned)";
  if (model.held) return "when unloaded";
  if (model.unloadAt == null) return "–";
  const left = model.unloadAt - now;
  return left <= 0 ? "now" : `in ${duration(left)}`;
}

const LOADED = new Set(["Ready", "Starting", "Draining"]);

function modelCells(model, now) {
  const tags = [];
  if (model.pinned) tags.push('<span class="tag pin">pinned</span>');
  if (model.held) tags.push('<span class="tag pin">loaded by hand</span>');
  if (model.sync && model.sync !== "Synced") {
    tags.push(`<span class="tag ${model.sync === "Stale" ? "stale" : ""}">${esc(model.sync)}</span>`);
  }
  for (const alias of model.aliases || []) tags.push(`<span class="tag" title="alias">${esc(alias)}</span>`);
  if (model.priority && model.priority !== "normal") {
    tags.push(`<span class="tag" title="priority">${esc(model.priority)}</span>`);
  }
  if (model.runtime) tags.push(`<span class="tag">${esc(model.runtime)}</span>`);
  if (model.node) tags.push(`<span class="tag" title="cluster node">on ${esc(model.node)}</span>`);
  if (model.quantization) tags.push(`<span class="tag">${esc(model.quantization)}</span>`);
  // the manifest in force: its file name and position (the whole path on hover)
  const where = model.where ? `<div class="where" title="${esc(model.where)}">${esc(model.where.split("/").pop())}</div>` : "";
  let phase = `<span class="phase ${esc(model.phase)}">${esc(model.phase)}</span>`;
  if (model.reason) phase += `<div class="reason">${esc(model.reason)}</div>`;
  if (model.retryAt) phase += `<div class="reason">next try in ${duration(model.retryAt - now)}</div>`;
  const dl = model.download;
  if (dl && dl.total && dl.done < dl.total) {
    const share = Math.floor(100 * dl.done / dl.total);
    phase += `<div class="bar" title="${share}%"><i class="dl" style="width:${share}%"></i></div>
      <div class="reason">${size(dl.done)} of ${size(dl.total)} (${share}%)</div>`;
  }
  const loaded = LOADED.has(model.phase);
  const canUnload = loaded && !model.pinned && model.sync !== "Suspended";
  const canLoad = !loaded && model.sync !== "Suspended" && model.sync !== "Orphan";
  const actions = `<div class="actions">
    <button data-action="load" data-model="${esc(model.name)}" class="primary" ${canLoad ? "" : "disabled"}>Load</button>
    <button data-action="unload" data-model="${esc(model.name)}" ${canUnload ? "" : "disabled"}>Unload</button>
    <button data-action="logs" data-model="${esc(model.name)}">Log</button></div>`;
  return {
    model: `<div class="name">${esc(model.name)}</div><div class="tags">${tags.join("")}</div>${where}`,
    phase,
    gpu: model.gpus && model.gpus.length ? esc(model.gpus.join(", ")) : (loaded ? "CPU" : "–"),
    vram: size(model.vram),
    idle: duration(model.idleFor),
    until: esc(untilText(model, now)),
    queue: `${model.queued ?? 0} / ${model.inFlight ?? 0}`,
    actions,
  };
}

const COLUMNS = [
  ["model", "Model", ""], ["phase", "Phase", ""], ["gpu", "GPU", ""], ["vram", "VRAM", "num"],
  ["idle", "Idle", "num"], ["until", "Unloads", ""], ["queue", "Queue", "num"], ["actions", "", ""],
];

function renderModels(status) {
  const body = $("#models tbody");
  const models = status.models || [];
  const now = Date.now() / 1000;
  const seen = new Set();
  for (const model of models) {
    seen.add(model.name);
    let row = body.querySelector(`tr[data-model="${CSS.escape(model.name)}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.model = model.name;
      for (const [key, label, cls] of COLUMNS) {
        const cell = row.insertCell();
        cell.dataset.col = key;
        if (label) cell.dataset.label = label;
        if (cls) cell.className = cls;
      }
    }
    body.appendChild(row); // keeps the order of the snapshot (sorted by name)
    row.dataset.phase = model.phase;
    const cells = modelCells(model, now);
    for (const cell of row.cells) put(cell, `<div class="v">${cells[cell.dataset.col]}</div>`);
  }
  for (const row of [...body.rows]) if (!seen.has(row.dataset.model)) row.remove();
  $("#no-models").hidden = models.length > 0;
  const loaded = models.filter((m) => LOADED.has(m.phase)).length;
  $("#model-count").textContent = `${loaded} of ${models.length} loaded`;
}

function renderGpus(gpus) {
  const sources = { nvml: "NVML", static: "Node manifest", "nvml+static": "NVML + Node manifest" };
  $("#gpu-source").textContent = gpus.source && gpus.source !== "none" ? `from ${sources[gpus.source] || gpus.source}` : "";
  const list = gpus.gpus || [];
  if (!list.length) {
    const why = (gpus.messages || []).join("; ");
    put($("#gpus"), `<p class="empty">No GPUs: models run on the CPU.${why ? ` <span class="muted">(${esc(why)})</span>` : ""}</p>`);
    return;
  }
  put($("#gpus"), list.map((g) => {
    const claimed = (g.claims || []).reduce((sum, c) => sum + c.bytes, 0);
    const used = g.used ?? claimed;
    const other = Math.max(0, used - claimed);
    const pct = (n) => `${Math.min(100, 100 * n / g.total).toFixed(1)}%`;
    const claims = (g.claims || []).map((c) => `${esc(c.model)} ${size(c.bytes)}`).join(", ");
    const util = g.utilization == null ? "" :
      `<div class="bar" title="utilisation ${g.utilization}%"><i class="util" style="width:${g.utilization}%"></i></div>`;
    return `<div class="gpu"><div class="head"><span><b>GPU ${g.index}</b> ${esc(g.name || "")}</span>
      <span class="muted">${size(used)} / ${size(g.total)}${g.utilization == null ? "" : ` · ${g.utilization}%`}${g.temperature == null ? "" : ` · ${g.temperature}°C`}</span></div>
      <div class="bar"><i class="claim" style="width:${pct(claimed)}"></i><i class="other" style="width:${pct(other)}"></i></div>${util}
      <div class="legend"><span><i class="claim" style="background:var(--accent)"></i>claimed ${size(claimed)}</span>
      <span><i style="background:var(--warn)"></i>other ${size(other)}</span>
      <span>available ${size(g.available)}</span></div>
      ${claims ? `<div class="reason">${claims}</div>` : ""}</div>`;
  }).join(""));
}

function renderLogChoices(models) {
  const select = $("#log-model");
  const names = models.map((m) => m.name);
  const current = [...select.options].map((o) => o.value);
  if (names.join("\n") !== current.join("\n")) {
    select.innerHTML = names.map((n) => `<option>${esc(n)}</option>`).join("");
    select.value = state.logModel;
  }
  if (!state.logModel && names.length) {
    const first = models.find((m) => LOADED.has(m.phase)) || models[0];
    showLog(first.name);
  }
}

async function refreshStatus() {
  try {
    const status = await json("/api/status");
    state.status = status;
    renderHeader(status);
    renderAlerts(status);
    renderModels(status);
    renderGpus(status.gpus || {});
    renderLogChoices(status.models || []);
  } catch (error) {
    $("#ready").textContent = "unreachable";
    $("#ready").className = "pill phase Failed";
  }
}

let soon = null;
function refreshSoon() { // after an event: a phase changed; show it now, not at the next poll
  clearTimeout(soon);
  soon = setTimeout(refreshStatus, 50);
}

// --- events, log, requests ------------------------------------------------------------------

function addEvent(event) {
  const list = $("#events");
  const item = document.createElement("li");
  const bad = BAD_EVENTS.test(event.kind) ? " bad" : "";
  item.innerHTML = `<time>${clock(event.time)}</time><span class="kind${bad}">${esc(event.kind)}</span>
    <span class="msg">${event.model ? `<b>${esc(event.model)}</b> ` : ""}${esc(event.message)}</span>`;
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
  refreshSoon();
}

function setLive(on) {
  $("#live-dot").classList.toggle("on", on);
  $("#live-text").textContent = on ? "live" : "reconnecting";
}

function showLog(model) {
  if (state.logAbort) state.logAbort.abort();
  state.logModel = model;
  $("#log-model").value = model;
  const log = $("#log");
  log.textContent = "";
  const abort = state.logAbort = new AbortController();
  $("#log-state").textContent = "";
  follow(`/api/models/${encodeURIComponent(model)}/logs?follow=1&lines=200`, (data) => {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
    log.append(data.line + "\n");
    while (log.childNodes.length > MAX_LOG_LINES) log.firstChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }, abort.signal, (on) => { $("#log-state").textContent = on ? "following" : "reconnecting"; });
}

async function refreshRequests() {
  try {
    const rows = await json("/api/requests?limit=25");
    const html = rows.map((r) => {
      const tokens = r.promptTokens == null && r.completionTokens == null ? "–" :
        `${r.promptTokens ?? "–"} / ${r.completionTokens ?? "–"}`;
      const cls = `s${String(r.status)[0]}`;
      const cell = (label, html, cls = "") => `<td data-label="${label}" class="${cls}"><div class="v">${html}</div></td>`;
      return `<tr>${cell("Time", clock(r.time))}${cell("Client", esc(r.client))}${cell("Model", esc(r.model))}${
        cell("Status", esc(r.status), cls)}${cell("Latency", r.latency == null ? "–" : `${(r.latency * 1000).toFixed(0)} ms`, "num")}${
        cell("Tokens", tokens, "num")}</tr>`;
    }).join("");
    put($("#requests tbody"), html);
    $("#no-requests").hidden = rows.length > 0;
  } catch (error) { /* the status poll shows that the service is unreachable */ }
}

// --- actions --------------------------------------------------------------------------------

function toast(message) {
  const box = $("#toast");
  box.textContent = message;
  box.classList.add("show");
  clearTimeout(box._timer);
  box._timer = setTimeout(() => box.classList.remove("show"), 6000);
}

async function byHand(action, model, button) {
  button.disabled = true;
  button.textContent = action === "load" ? "Loading…" : "Unloading…";
  refreshSoon();
  try {
    const response = await api(`/api/models/${encodeURIComponent(model)}/${action}`, { method: "POST" });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      toast(`${action} ${model}: ${(body.error && body.error.message) || `HTTP ${response.status}`}`);
    }
  } catch (error) {
    toast(`${action} ${model}: ${error.message}`);
  }
  refreshStatus();
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button || button.disabled) return;
  const { action, model } = button.dataset;
  if (action === "logs") {
    showLog(model);
    $("#log").scrollIntoView({ behavior: "smooth", block: "nearest" });
  } else {
    byHand(action, model, button);
  }
});

// --- start --------------------------------------------------------------------------------------

function start() {
  $("#key-form").addEventListener("submit", () => {
    sessionStorage.setItem("modelplane-key", $("#key-input").value.trim());
    for (const resolve of state.keyWaiters.splice(0)) resolve();
  });
  $("#log-model").addEventListener("change", (e) => showLog(e.target.value));
  refreshStatus();
  refreshRequests();
  setInterval(refreshStatus, STATUS_EVERY);
  setInterval(refreshRequests, REQUESTS_EVERY);
  follow("/api/events?follow=1&limit=50", addEvent, new AbortController().signal, setLive);
}

start();
