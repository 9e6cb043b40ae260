// The status page: polls the fleet and the selected charts, follows the event log over server-sent events.
// Every value from the agent reaches the page as textContent, never as HTML.
"use strict";

const REFRESH_MS = 5000;
const MAX_STREAM_ROWS = 200;
const MARK_COLORS = { anomaly: "#c5221f", maintenance: "#e37400", health: "#7b61ff", signal: "#137333",
                      price_alert: "#e37400", risk: "#b06000", news: "#1a73e8", advice: "#9334e6" };
const SERIES_COLORS = ["#1a73e8", "#e37400", "#137333", "#9334e6", "#c5221f", "#007b83"];
const state = { sensor: null, symbol: null, charts: {} };

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : new Date(iso).toISOString();
}

// -- fleet -------------------------------------------------------------------------------------------
async function loadFleet() {
  const { sensors } = await getJSON("/status/api/fleet");
  const body = document.querySelector("#fleet tbody");
  body.replaceChildren(...sensors.map(fleetRow));
  document.getElementById("fleet-count").textContent = `${sensors.length} sensors`;
  if (!state.sensor && sensors.length) selectSensor(sensors[0].sensor);
}

function fleetRow(s) {
  const tr = el("tr");
  tr.dataset.sensor = s.sensor;
  if (s.sensor === state.sensor) tr.classList.add("selected");
  tr.append(el("td", s.sensor), el("td", s.score === null ? "–" : s.score.toFixed(2)),
            el("td", s.band || "–", s.band ? `band-${s.band}` : ""));
  const flags = el("td");
  flags.append(...s.flags.map((f) => el("span", f, "flag")));
  tr.append(flags, el("td", ago(s.last_seen)));
  tr.addEventListener("click", () => selectSensor(s.sensor));
  return tr;
}

// -- charts ------------------------------------------------------------------------------------------
function markers(marks) {
  // vertical lines at each event's time, coloured by kind
  return { hooks: { draw: (u) => {
    const ctx = u.ctx, dpr = devicePixelRatio, { left, top, width, height } = u.bbox;
    ctx.save();
    ctx.lineWidth = 1.5 * dpr;
    ctx.setLineDash([5 * dpr, 4 * dpr]);
    for (const m of marks) {
      const x = Math.round(u.valToPos(m.t, "x", true));
      if (x < left || x > left + width) continue;
      ctx.strokeStyle = m.color;
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
    }
    ctx.restore();
  } } };
}

function eventMarks(events, kinds) {
  // signals and advice by side: SELL red, BUY green, HOLD grey; everything else by kind
  const side = (e) => String((e.kind === "signal" ? e.data.signal : e.kind === "advice" ? e.data.action : "") || "");
  const color = (e) => (/SELL/.test(side(e)) ? "#c5221f" : /BUY/.test(side(e)) ? "#137333"
                        : side(e) === "HOLD" ? "#80868b" : MARK_COLORS[e.kind] || "#555");
  return events.filter((e) => kinds.includes(e.kind)).map((e) => ({
    t: Date.parse(e.ts) / 1000, color: color(e), kind: e.kind, id: e.id,
    label: `${e.ts.slice(11, 19)} ${e.kind}: ${e.message}`,
  }));
}

function drawChart(name, view, kinds) {
  const box = document.getElementById(`${name}-chart`);
  const names = Object.keys(view.series);
  const marks = eventMarks(view.events, kinds);
  // each metric on its own scale (pressure ~1000 and battery ~50 share no useful axis), an axis per metric
  const scaleOf = (n) => (name === "symbol" && n !== "volume" ? "price" : n);
  const axes = [{}];
  for (const [i, n] of names.entries()) {
    if (n === "volume" || axes.some((a) => a.scale === scaleOf(n))) continue;
    axes.push({ scale: scaleOf(n), side: axes.length % 2 ? 3 : 1, stroke: SERIES_COLORS[i % SERIES_COLORS.length],
                grid: { show: axes.length === 1 }, size: 60 });
  }
  const opts = {
    width: Math.max(300, box.clientWidth - 4), height: 260, plugins: [markers(marks)],
    scales: { x: { time: true } }, axes,
    series: [{}, ...names.map((n, i) => ({ label: n, stroke: SERIES_COLORS[i % SERIES_COLORS.length], spanGaps: true,
                                          scale: scaleOf(n), show: n !== "volume", points: { show: false } }))],
  };
  if (state.charts[name]) state.charts[name].destroy();
  state.charts[name] = new uPlot(opts, [view.t, ...names.map((n) => view.series[n])], box);
  box.dataset.points = String(view.t.length);
  const list = document.getElementById(`${name}-marks`);
  list.replaceChildren(...marks.slice(-40).reverse().map((m) => {
    const li = el("li", m.label);
    li.style.setProperty("--mark", m.color);
    li.dataset.kind = m.kind;
    li.dataset.id = String(m.id);
    return li;
  }));
}

async function selectSensor(id) {
  state.sensor = id;
  for (const tr of document.querySelectorAll("#fleet tbody tr")) tr.classList.toggle("selected", tr.dataset.sensor === id);
  await loadSensor();
}

async function loadSensor() {
  if (!state.sensor) return;
  const view = await getJSON(`/status/api/sensor/${encodeURIComponent(state.sensor)}`);
  document.getElementById("sensor-section").hidden = false;
  document.getElementById("sensor-name").textContent = view.sensor;
  drawChart("sensor", view, ["anomaly", "maintenance"]);
}

async function loadSymbols() {
  const { symbols } = await getJSON("/status/api/symbols");
  const box = document.getElementById("symbols");
  box.replaceChildren(...symbols.map((s) => {
    const b = el("button", s, s === state.symbol ? "selected" : "");
    b.addEventListener("click", () => { state.symbol = s; loadSymbols(); });
    return b;
  }));
  if (!state.symbol && symbols.length) state.symbol = symbols[0];
  if (state.symbol) {
    const view = await getJSON(`/status/api/symbol/${encodeURIComponent(state.symbol)}`);
    drawChart("symbol", view, ["signal", "price_alert", "advice"]);
  }
}

// -- live events -------------------------------------------------------------------------------------
function follow() {
  const live = document.getElementById("live");
  const list = document.getElementById("events");
  const source = new EventSource("/status/api/events");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  source.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    const li = el("li", null, `sev-${e.severity}`);
    li.dataset.id = String(e.id);
    li.dataset.kind = e.kind;
    li.dataset.key = e.key;
    li.append(el("span", e.ts.slice(11, 19) + " "), el("span", e.kind, "kind"), el("span", e.message));
    list.prepend(li);
    while (list.children.length > MAX_STREAM_ROWS) list.lastElementChild.remove();
    if (e.kind === "health" || e.kind === "maintenance") fleetSoon();
  };
}

let fleetTimer = null;
function fleetSoon() {
  // a burst of health events refreshes the table once, half a second after the first
  if (fleetTimer === null) fleetTimer = setTimeout(() => { fleetTimer = null; loadFleet(); }, 500);
}

function refresh() {
  return Promise.allSettled([loadFleet(), loadSensor(), loadSymbols()]);
}

follow();
refresh();
setInterval(refresh, REFRESH_MS);
