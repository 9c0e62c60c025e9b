// ddpm playground: the page talks to the local server's JSON API (/api/...) and draws on canvases.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { T: 250, drawn: [], bounds: null, reverse: null, images: null, polling: null };

function say(text, kind = "info") {
  const m = $("message");
  m.textContent = text;
  m.className = text ? kind : "";
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function fill(select, names) {
  select.innerHTML = "";
  for (const name of names) select.add(new Option(name, name));
}

// ----- drawing points on a canvas, in data coordinates ------------------------------------------
function boundsOf(points, margin = 0.15) {
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const [x, y] of points) {
    x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
  }
  const half = Math.max(x1 - x0, y1 - y0) * (0.5 + margin) || 1;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  return [cx - half, cx + half, cy - half, cy + half];
}

function toPixel(canvas, b, x, y) {
  return [(x - b[0]) / (b[1] - b[0]) * canvas.width, (b[3] - y) / (b[3] - b[2]) * canvas.height];
}

function plot(canvas, layers, b) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const { points, color, size = 2 } of layers) {
    ctx.fillStyle = color;
    for (const [x, y] of points) {
      const [px, py] = toPixel(canvas, b, x, y);
      ctx.fillRect(px - size / 2, py - size / 2, size, size);
    }
  }
}

function plotLoss(losses) {
  const canvas = $("loss"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (losses.length < 2) return;
  const raw = losses.map(Math.log), k = Math.max(1, Math.floor(raw.length / 30));
  const logs = raw.map((_, i) => {  // running mean over k logged points: the trend, not the batch noise
    const window = raw.slice(Math.max(0, i - k + 1), i + 1);
    return window.reduce((a, b) => a + b, 0) / window.length;
  });
  const lo = Math.min(...logs), hi = Math.max(...logs);
  ctx.strokeStyle = "#36c";
  ctx.beginPath();
  logs.forEach((v, i) => {
    const px = i / (logs.length - 1) * canvas.width;
    const py = canvas.height - 5 - (v - lo) / ((hi - lo) || 1) * (canvas.height - 10);
    i ? ctx.lineTo(px, py) : ctx.moveTo(px, py);
  });
  ctx.stroke();
  ctx.fillStyle = "#222";
  ctx.fillText(`loss ${Math.exp(logs[logs.length - 1]).toFixed(4)} (running mean, log scale)`, 6, 12);
}

// ----- the drawing tool: strokes sampled to points in [-4, 4]^2 ------------------------------------
const DRAW_BOUNDS = [-4, 4, -4, 4];
function setupDrawing() {
  const canvas = $("draw");
  let down = false, last = null;
  const add = (event) => {
    const r = canvas.getBoundingClientRect();
    const px = event.clientX - r.left, py = event.clientY - r.top;
    if (last && Math.hypot(px - last[0], py - last[1]) < 4) return;
    last = [px, py];
    state.drawn.push([px / canvas.width * 8 - 4, 4 - py / canvas.height * 8]);
    redrawDrawing();
  };
  canvas.addEventListener("mousedown", (e) => { down = true; last = null; add(e); });
  canvas.addEventListener("mousemove", (e) => { if (down) add(e); });
  window.addEventListener("mouseup", () => { down = false; });
  $("clear-drawing").addEventListener("click", () => { state.drawn = []; redrawDrawing(); });
  redrawDrawing();
}

function redrawDrawing() {
  plot($("draw"), [{ points: state.drawn, color: "#222", size: 3 }], DRAW_BOUNDS);
  $("drawn-count").textContent = `${state.drawn.length} points drawn`;
}

// ----- training ---------------------------------------------------------------------------------
async function trainBody() {
  const source = document.querySelector("input[name=source]:checked").value;
  const body = {
    source, dataset: $("dataset").value, schedule: $("schedule").value,
    T: Number($("T").value), width: Number($("width").value), steps: Number($("steps").value),
  };
  if (source === "drawn") body.points = state.drawn;
  if (source === "csv") {
    const file = $("csv").files[0];
    if (!file) throw new Error("choose a CSV file first");
    body.csv = await file.text();
  }
  return body;
}

async function train() {
  try {
    const body = await trainBody();
    await api("/api/train", body);
    state.T = body.T;
    say("training...");
    setTrained(false);
    $("cancel").disabled = false;
    poll();
  } catch (e) {
    say(e.message, "error");
  }
}

function poll() {
  clearTimeout(state.polling);
  state.polling = setTimeout(async () => {
    let s;
    try {
      s = await api("/api/status");
    } catch (e) {
      say(`lost the server: ${e.message}`, "error");
      return;
    }
    $("progress").max = s.total || 1;
    $("progress").value = s.step || 0;
    $("progress-text").textContent = `${s.state}: step ${s.step || 0} / ${s.total || "?"}`;
    plotLoss(s.losses || []);
    if (s.state === "running") return poll();
    $("cancel").disabled = true;
    if (s.state === "done") {
      if (s.task !== "diffusion") { $("sampler").value = s.sampler; $("reverse-steps").value = s.steps; }
      say(s.task === "diffusion" ? "trained: scrub the sliders below"
        : `distilled: the student samples with ${s.sampler} in ${s.steps} calls`);
      await trained();
    }
    else if (s.state === "failed") say(`training failed: ${s.error}`, "error");
    else if (s.state === "cancelled") say("training cancelled");
  }, 300);
}

async function distill() {
  try {
    await api("/api/distill", { method: $("distill-method").value, to_steps: Number($("distill-steps").value) });
    say("distilling...");
    setTrained(false);
    $("cancel").disabled = false;
    poll();
  } catch (e) {
    say(e.message, "error");
  }
}

function setTrained(on) {
  for (const id of ["forward-t", "reverse-run", "field-t", "distance-run", "distill-run"]) $(id).disabled = !on;
  if (!on) { $("reverse-i").disabled = true; state.reverse = null; }
}

async function trained() {
  for (const id of ["forward-t", "field-t"]) $(id).max = state.T - 1;
  $("field-t").value = Math.round(state.T * 0.4);
  const data = await api("/api/forward?t=0");
  state.bounds = boundsOf(data.points, 0.25);
  setTrained(true);
  await Promise.all([showForward(), showField(), runReverse()]);
}

// ----- the three views ------------------------------------------------------------------------
async function showForward() {
  try {
    const d = await api(`/api/forward?t=${$("forward-t").value}`);
    $("forward-label").textContent = `t = ${d.t + 1}: ᾱ_t = ${d.alpha_bar.toFixed(4)} (signal kept), `
      + `1 - ᾱ_t = ${(1 - d.alpha_bar).toFixed(4)} (noise)`;
    plot($("forward"), [{ points: d.points, color: "#36c" }], state.bounds);
  } catch (e) { say(e.message, "error"); }
}

// a step slider over `frames` frames, at the first one, drawn by `show`
function armSlider(id, frames, show) {
  const slider = $(id);
  slider.max = frames - 1;
  slider.value = 0;
  slider.disabled = false;
  show();
}

async function runReverse() {
  try {
    say("sampling...");
    state.reverse = await api("/api/reverse", { sampler: $("sampler").value, steps: Number($("reverse-steps").value) });
    armSlider("reverse-i", state.reverse.t.length, showReverse);
    say("sampled: move the step slider");
  } catch (e) { say(e.message, "error"); }
}

function showReverse() {
  const r = state.reverse, i = Number($("reverse-i").value);
  if (!r) return;
  const last = i === r.t.length - 1;
  $("reverse-label").textContent = last ? "the samples (t = 0)"
    : `step ${i + 1} of ${r.t.length - 1}: t = ${r.t[i]}; blue x_t, orange predicted x0`;
  const layers = [{ points: r.x_t[i], color: "#36c" }];
  if (!last) layers.push({ points: r.x0[i], color: "rgba(240,120,0,0.6)" });
  plot($("reverse"), layers, state.bounds);
}

async function showField() {
  try {
    const d = await api(`/api/field?t=${$("field-t").value}`);
    const canvas = $("field"), ctx = canvas.getContext("2d"), b = state.bounds;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#c33";
    d.grid.forEach(([x, y], k) => {
      const [px, py] = toPixel(canvas, b, x, y);
      const [qx, qy] = toPixel(canvas, b, x + 0.3 * (d.x0[k][0] - x), y + 0.3 * (d.x0[k][1] - y));
      ctx.beginPath(); ctx.moveTo(px, py); ctx.lineTo(qx, qy); ctx.stroke();
      ctx.fillStyle = "#c33"; ctx.fillRect(qx - 1, qy - 1, 2, 2);
    });
    $("field-label").textContent = `t = ${d.t + 1}: arrows point from x_t towards the predicted x0 (x 0.3)`;
  } catch (e) { say(e.message, "error"); }
}

async function measure() {
  try {
    $("distance").textContent = "measuring...";
    const d = await api("/api/distance", { sampler: $("sampler").value, steps: Number($("reverse-steps").value) });
    $("distance").textContent = `SW1 = ${d.swd.toFixed(4)}, noise floor = ${d.swd_floor.toFixed(4)}, `
      + `ratio = ${d.swd_ratio.toFixed(2)} (1 = as close as a second draw of the real data)`;
  } catch (e) { say(e.message, "error"); $("distance").textContent = ""; }
}

// ----- the images page ----------------------------------------------------------------------------
async function loadRuns() {
  try {
    const d = await api("/api/runs");
    $("runs-root").textContent = d.runs.length ? `image runs under ${d.root}`
      : `no image runs under ${d.root} (start the playground with --runs DIR)`;
    fill($("run"), d.runs.map((r) => r.path));
    const guide = $("img-guide");
    guide.innerHTML = "";
    guide.add(new Option("(none: the null label)", ""));
    for (const r of d.runs) guide.add(new Option(r.path, r.path));
    state.runs = Object.fromEntries(d.runs.map((r) => [r.path, r]));
    runChanged();
  } catch (e) { say(e.message, "error"); }
}

function runChanged() {
  const run = state.runs && state.runs[$("run").value];
  const select = $("img-class");
  select.innerHTML = "";
  select.add(new Option("(none)", ""));
  for (const name of (run && run.classes) || []) select.add(new Option(name, name));
  if (run) { $("img-sampler").value = run.sampler; $("img-steps").value = run.steps || 20; }
}

async function sampleImages() {
  try {
    say("sampling images...");
    const g = $("img-guidance").value;
    state.images = await api("/api/images", {
      run: $("run").value, n: Number($("img-n").value), sampler: $("img-sampler").value,
      steps: Number($("img-steps").value), class: $("img-class").value, guidance: g === "" ? null : Number(g),
      guide: $("img-guide").value,
    });
    armSlider("img-i", state.images.t.length, showImages);
    say("sampled: move the step slider");
  } catch (e) { say(e.message, "error"); }
}

function showImages() {
  const r = state.images, i = Number($("img-i").value);
  if (!r) return;
  $("img-xt").src = r.x_t[i];
  $("img-x0").src = r.x0[i];
  $("img-label").textContent = i === r.t.length - 1 ? "the samples" : `t = ${r.t[i]}`;
}

// ----- wiring ------------------------------------------------------------------------------------
function showPage(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.page === name);
  $("page-points").classList.toggle("hidden", name !== "points");
  $("page-images").classList.toggle("hidden", name !== "images");
  if (name === "images") loadRuns();
}

async function main() {
  const info = await api("/api/info");
  fill($("dataset"), info.datasets);
  fill($("schedule"), info.schedules);
  fill($("sampler"), info.samplers);
  fill($("img-sampler"), info.samplers);
  $("sampler").value = "dpm++2m-sde";
  setupDrawing();
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showPage(tab.dataset.page));
  $("train").addEventListener("click", train);
  $("cancel").addEventListener("click", () => api("/api/cancel", {}).catch((e) => say(e.message, "error")));
  $("forward-t").addEventListener("input", showForward);
  $("reverse-run").addEventListener("click", runReverse);
  $("reverse-i").addEventListener("input", showReverse);
  $("field-t").addEventListener("input", showField);
  $("distance-run").addEventListener("click", measure);
  $("distill-run").addEventListener("click", distill);
  $("run").addEventListener("change", runChanged);
  $("img-run").addEventListener("click", sampleImages);
  $("img-i").addEventListener("input", showImages);
  const s = await api("/api/status");
  if (s.state === "running") poll();
}

main().catch((e) => say(e.message, "error"));
