// chuan serve's page: a chat over /v1/chat/completions (streamed) and live charts of the
// training runs under `chuan serve --runs DIR`. Plain browser JavaScript with no library and
// no other host: the server's Content-Security-Policy allows this origin only.
"use strict";

const KEY_STORAGE = "chuan.apiKey"; // sessionStorage: the key is forgotten with the tab
const POLL_MS = 2000; // how often the selected run's new metrics lines are fetched
const POLLS_PER_LIST = 5; // the run list is refreshed every this many polls
const CHARTS = [
  {
    canvas: "chart-loss",
    series: [
      { key: "loss", label: "train" },
      { key: "eval_loss", label: "held-out", dots: true },
    ],
  },
  { canvas: "chart-lr", series: [{ key: "lr", label: "learning rate" }] },
  { canvas: "chart-tokens", series: [{ key: "tokens_per_s", label: "tokens/s" }] },
];

const $ = (id) => document.getElementById(id);

const state = {
  config: null, // GET /v1/ui/config: {model, grounded, runs}
  history: [], // the conversation sent with each message: [{role, content}]
  replying: null, // the AbortController of the reply being streamed
  run: null, // the selected run's name
  lines: 0, // metrics lines of the selected run read so far
  records: [],
  lineErrors: [],
  selection: 0, // counts run selections: a poll answered after another selection is dropped
  polls: 0,
  polling: false,
  pollAgain: false,
  timer: null,
};

// -- talking to the server -------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// fetch with the key; a non-2xx answer becomes an ApiError with the server's message.
async function api(path, options = {}) {
  const headers = {
    ...authHeaders(),
    ...(options.body ? { "Content-Type": "application/json" } : {}),
  };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    throw await errorOf(response);
  }
  return response;
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body.error && body.error.message) {
      message = body.error.message;
      code = body.error.code;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

// What to tell the user about `err`; a missing or wrong key also puts the cursor in the key box.
function explain(err) {
  if (err.status === 401) {
    $("api-key").focus();
    return `This server needs an API key: enter it above and press "Use key". (${err.message})`;
  }
  if (err instanceof TypeError) {
    return `The server cannot be reached: ${err.message}`;
  }
  return err.message;
}

function showNotice(text) {
  $("notice").textContent = text;
  $("notice").hidden = false;
}

function hideNotice() {
  $("notice").hidden = true;
}

async function loadConfig() {
  try {
    state.config = await (await api("/v1/ui/config")).json();
  } catch (err) {
    state.config = null;
    $("model-name").textContent = "";
    showNotice(explain(err));
    return;
  }
  hideNotice();
  $("model-name").textContent = state.config.model;
  $("kb-state").textContent = state.config.grounded
    ? "Answers come from the server's knowledge base, with citations."
    : "";
  if (!$("runs-view").hidden) {
    startPolling();
  }
}

function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (key) {
    sessionStorage.setItem(KEY_STORAGE, key);
  } else {
    sessionStorage.removeItem(KEY_STORAGE);
  }
  loadConfig();
}

// -- chat ------------------------------------------------------------------------------

// The sampling fields the user filled in; an empty field is left to the server's default.
function samplingFields() {
  const fields = {};
  const numbers = {
    temperature: "temperature",
    top_p: "top-p",
    max_tokens: "max-tokens",
    seed: "seed",
  };
  for (const [name, id] of Object.entries(numbers)) {
    const text = $(id).value.trim();
    if (text !== "") {
      fields[name] = Number(text);
    }
  }
  const stop = $("stop")
    .value.split("\n")
    .filter((line) => line !== "");
  if (stop.length) {
    fields.stop = stop;
  }
  return fields;
}

function conversation() {
  const system = $("system-prompt").value.trim();
  return system ? [{ role: "system", content: system }, ...state.history] : [...state.history];
}

function addMessage(role, text) {
  const item = document.createElement("li");
  item.className = `message ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "You" : state.config ? state.config.model : "model";
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  item.append(label, content);
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

// The `data:` payloads of a server-sent-events response, as they arrive.
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      return;
    }
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) {
        yield data;
      }
    }
  }
}

function showCitations(item, citations) {
  if (!citations.length) {
    return;
  }
  const list = document.createElement("ol");
  list.className = "citations";
  for (const c of citations) {
    const entry = document.createElement("li");
    const where = document.createElement("strong");
    where.textContent = `[${c.index}] ${c.source}${c.line ? `:${c.line}` : ""}`;
    const text = document.createElement("span");
    text.textContent = ` ${c.text.length > 240 ? `${c.text.slice(0, 240)}…` : c.text}`;
    entry.append(where, text);
    list.append(entry);
  }
  item.append(list);
}

function showMeta(item, text) {
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = text;
  item.append(meta);
}

// Streams the reply into `item`; resolves with its text and finish reason.
async function streamReply(response, item) {
  const content = item.querySelector(".content");
  let chunks = 0;
  let finish = null;
  for await (const data of sseData(response)) {
    if (data === "[DONE]") {
      return { text: content.textContent, finish };
    }
    const chunk = JSON.parse(data);
    if (chunk.error) {
      throw new ApiError(500, chunk.error.message, chunk.error.code);
    }
    for (const choice of chunk.choices || []) {
      if (choice.delta && choice.delta.content) {
        content.textContent += choice.delta.content;
        item.dataset.chunks = String(++chunks);
      }
      finish = choice.finish_reason || finish;
    }
    if (chunk.citations) {
      showCitations(item, chunk.citations);
    }
  }
  throw new ApiError(502, "the reply stream ended before [DONE]: the server stopped answering");
}

async function send(text) {
  if (!state.config) {
    await loadConfig();
    if (!state.config) {
      return;
    }
  }
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const item = addMessage("assistant", "");
  item.dataset.state = "streaming";
  item.dataset.chunks = "0";
  const body = {
    model: state.config.model,
    messages: conversation(),
    stream: true,
    ...samplingFields(),
  };
  state.replying = new AbortController();
  setReplying(true);
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      body: JSON.stringify(body),
      signal: state.replying.signal,
    });
    const reply = await streamReply(response, item);
    state.history.push({ role: "assistant", content: reply.text });
    item.dataset.state = "done";
    if (reply.finish === "length") {
      showMeta(item, "stopped at max_tokens");
    }
  } catch (err) {
    if (err.name === "AbortError") {
      // Stopped by the user: what came so far stays as the model's turn.
      state.history.push({
        role: "assistant",
        content: item.querySelector(".content").textContent,
      });
      item.dataset.state = "stopped";
      showMeta(item, "stopped");
    } else {
      state.history.pop(); // the message was not answered: it is not part of the conversation
      item.dataset.state = "error";
      item.classList.add("failed");
      showMeta(item, explain(err));
    }
  } finally {
    state.replying = null;
    setReplying(false);
  }
}

function setReplying(replying) {
  $("send").disabled = replying;
  $("stop-reply").disabled = !replying;
}

function submitMessage(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || state.replying) {
    return;
  }
  $("message").value = "";
  send(text);
}

function newConversation() {
  if (state.replying) {
    state.replying.abort();
  }
  state.history = [];
  $("messages").replaceChildren();
}

// -- runs ------------------------------------------------------------------------------

function runPath(name) {
  return name.split("/").map(encodeURIComponent).join("/");
}

async function loadRuns() {
  let runs;
  try {
    runs = (await (await api("/v1/runs")).json()).data;
  } catch (err) {
    $("runs-state").textContent =
      err.code === "no_runs" ? "This server was started without --runs DIR." : explain(err);
    return;
  }
  const list = $("runs");
  list.replaceChildren();
  for (const run of runs) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = run.name === state.run ? "run selected" : "run";
    button.dataset.run = run.name;
    button.textContent = run.name;
    const detail = document.createElement("span");
    detail.className = "muted small";
    detail.textContent = `${plural(run.lines, "line")} · ${new Date(run.modified * 1000).toLocaleString()}`;
    button.append(detail);
    button.addEventListener("click", () => selectRun(run.name));
    item.append(button);
    list.append(item);
  }
  $("runs-state").textContent = runs.length
    ? ""
    : "No run under the runs dir has a metrics.jsonl yet.";
  if (state.run === null && runs.length) {
    const newest = runs.reduce((a, b) => (b.modified > a.modified ? b : a));
    selectRun(newest.name);
  }
}

function selectRun(name) {
  state.selection++;
  state.run = name;
  state.lines = 0;
  state.records = [];
  state.lineErrors = [];
  $("run-title").textContent = name;
  for (const button of document.querySelectorAll("#runs .run")) {
    button.classList.toggle("selected", button.dataset.run === name);
  }
  drawRun();
  pollNow();
}

// Fetches the selected run's lines after those already read and adds them to the charts.
async function pollRun() {
  const selection = state.selection;
  let body;
  try {
    body = await (await api(`/v1/runs/${runPath(state.run)}/metrics?after=${state.lines}`)).json();
  } catch (err) {
    $("run-status").textContent = explain(err);
    return;
  }
  if (selection !== state.selection) {
    return; // a run was selected meanwhile: this answer is for lines it no longer has
  }
  if (body.after < state.lines) {
    // The file was rewritten with fewer lines (a resumed run): start over.
    state.records = [];
    state.lineErrors = [];
  }
  state.records = state.records.concat(body.records); // (a spread would overflow on a long run)
  state.lineErrors = state.lineErrors.concat(body.errors);
  state.lines = body.lines;
  drawRun();
}

function drawRun() {
  const last = state.records[state.records.length - 1];
  const step = last && last.step !== undefined ? ` · last step ${last.step}` : "";
  $("run-status").textContent = state.run
    ? `${plural(state.lines, "line")}${step} · read ${new Date().toLocaleTimeString()}`
    : "";
  const errors = $("run-errors");
  errors.replaceChildren();
  for (const problem of state.lineErrors) {
    const item = document.createElement("li");
    item.textContent = `line ${problem.line}: ${problem.message}`;
    errors.append(item);
  }
  for (const chart of CHARTS) {
    drawChart(
      $(chart.canvas),
      chart.series.map((s) => ({ ...s, points: pointsOf(s.key) })),
    );
  }
  showLatest(last);
}

// (step, value) of every record with a number under `key`; a record without a step is placed
// by its position.
function pointsOf(key) {
  const points = [];
  state.records.forEach((record, i) => {
    const value = record[key];
    if (typeof value === "number") {
      points.push([typeof record.step === "number" ? record.step : i, value]);
    }
  });
  return points;
}

function showLatest(record) {
  const table = $("latest");
  table.replaceChildren();
  if (!record) {
    return;
  }
  for (const [key, value] of Object.entries(record)) {
    const row = table.insertRow();
    row.insertCell().textContent = key;
    row.insertCell().textContent =
      typeof value === "number" ? formatNumber(value) : JSON.stringify(value);
  }
}

// Polls now, or right after the poll under way: one poll at a time, so that no two read the
// same lines.
function pollNow() {
  state.pollAgain = true;
  if (!state.polling) {
    pollLoop();
  }
}

async function pollLoop() {
  clearTimeout(state.timer);
  if (state.polling || $("runs-view").hidden) {
    return;
  }
  state.polling = true;
  try {
    do {
      state.pollAgain = false;
      if (state.polls++ % POLLS_PER_LIST === 0) {
        await loadRuns();
      }
      if (state.run !== null) {
        await pollRun();
      }
    } while (state.pollAgain && !$("runs-view").hidden);
  } finally {
    state.polling = false;
  }
  if (!$("runs-view").hidden) {
    state.timer = setTimeout(pollLoop, POLL_MS);
  }
}

function startPolling() {
  state.polls = 0;
  pollNow();
}

// -- charts ----------------------------------------------------------------------------

function plural(count, noun) {
  return `${count.toLocaleString("en-US")} ${noun}${count === 1 ? "" : "s"}`;
}

function formatNumber(value) {
  const size = Math.abs(value);
  if (Number.isInteger(value) || size >= 1000) {
    return Math.round(value).toLocaleString("en-US");
  }
  if (size !== 0 && size < 0.01) {
    return value.toExponential(2).replace(/\.?0+e/, "e");
  }
  return String(Number(value.toPrecision(4)));
}

// Round axis ends and a tick step of 1, 2, 2.5 or 5 times a power of ten covering
// [low, high]; `whole` keeps the step at 1 or more (optimizer steps are whole numbers).
function niceScale(low, high, whole) {
  if (low === high) {
    const pad = low === 0 ? 1 : Math.abs(low) * 0.1;
    [low, high] = [low - pad, high + pad];
  }
  const rough = (high - low) / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= rough);
  if (whole) {
    step = Math.max(1, Math.round(step));
  }
  return { low: Math.floor(low / step) * step, high: Math.ceil(high / step) * step, step };
}

// [min, max] of a column without spreading it into arguments (a long run has many points).
function extent(points, column) {
  let low = Infinity;
  let high = -Infinity;
  for (const point of points) {
    low = Math.min(low, point[column]);
    high = Math.max(high, point[column]);
  }
  return [low, high];
}

function cssColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// Draws each series' points (lines, or dots where `dots`) on shared axes, and records how
// many points the chart holds in its `data-points` attribute.
function drawChart(canvas, series) {
  const total = series.reduce((n, s) => n + s.points.length, 0);
  canvas.dataset.points = String(total);
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) {
    return; // hidden: drawn again when shown
  }
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = cssColor("--muted");
  if (!total) {
    ctx.fillText(`no ${series.map((s) => s.key).join(" or ")} in this run yet`, 12, height / 2);
    return;
  }
  const box = { left: 70, right: width - 24, top: 12, bottom: height - 26 };
  const all = series.flatMap((s) => s.points);
  const [xLow, xHigh] = extent(all, 0);
  const xs = niceScale(
    xLow,
    xHigh,
    all.every((p) => Number.isInteger(p[0])),
  );
  const ys = niceScale(...extent(all, 1), false);
  const x = (v) => box.left + ((v - xs.low) / (xs.high - xs.low)) * (box.right - box.left);
  const y = (v) => box.bottom - ((v - ys.low) / (ys.high - ys.low)) * (box.bottom - box.top);
  drawAxes(ctx, box, xs, ys, x, y);
  series.forEach((s, i) => drawSeries(ctx, s, cssColor(`--series-${i}`), x, y));
  if (series.filter((s) => s.points.length).length > 1) {
    drawLegend(ctx, series, box);
  }
}

// The ticks of a scale, computed from their index so that no rounding error piles up.
function ticksOf(scale) {
  const count = Math.round((scale.high - scale.low) / scale.step);
  return Array.from({ length: count + 1 }, (_, i) => scale.low + i * scale.step);
}

function drawAxes(ctx, box, xs, ys, x, y) {
  ctx.strokeStyle = cssColor("--grid");
  ctx.fillStyle = cssColor("--muted");
  ctx.lineWidth = 1;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (const value of ticksOf(ys)) {
    const at = Math.round(y(value)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(box.left, at);
    ctx.lineTo(box.right, at);
    ctx.stroke();
    ctx.fillText(formatNumber(value), box.left - 6, at);
  }
  ctx.textBaseline = "top";
  ctx.textAlign = "center";
  for (const value of ticksOf(xs)) {
    ctx.fillText(formatNumber(value), x(value), box.bottom + 6);
  }
}

function drawSeries(ctx, s, color, x, y) {
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  ctx.lineWidth = 1.5;
  if (s.dots || s.points.length === 1) {
    for (const [px, py] of s.points) {
      ctx.beginPath();
      ctx.arc(x(px), y(py), 3, 0, 2 * Math.PI);
      ctx.fill();
    }
    return;
  }
  ctx.beginPath();
  s.points.forEach(([px, py], i) => (i ? ctx.lineTo(x(px), y(py)) : ctx.moveTo(x(px), y(py))));
  ctx.stroke();
}

// The series' names, right-aligned above the plot where a falling curve leaves room.
function drawLegend(ctx, series, box) {
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  const widths = series.map((s) => 24 + ctx.measureText(s.label).width);
  let at = box.right - widths.reduce((a, b) => a + b, 0);
  series.forEach((s, i) => {
    ctx.fillStyle = cssColor(`--series-${i}`);
    ctx.fillRect(at, box.top + 4, 10, 3);
    ctx.fillStyle = cssColor("--text");
    ctx.fillText(s.label, at + 14, box.top + 6);
    at += widths[i];
  });
}

// -- page ------------------------------------------------------------------------------

function showView(tab) {
  for (const other of document.querySelectorAll(".tab")) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    $(other.dataset.view).hidden = !selected;
  }
  if (tab.id === "tab-runs") {
    startPolling();
  } else {
    clearTimeout(state.timer);
  }
}

function start() {
  $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("key-form").addEventListener("submit", useKey);
  $("chat-form").addEventListener("submit", submitMessage);
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      submitMessage(event);
    }
  });
  $("stop-reply").addEventListener("click", () => state.replying && state.replying.abort());
  $("clear").addEventListener("click", newConversation);
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showView(tab));
  }
  window.addEventListener("resize", drawRun);
  loadConfig();
}

start();
