// The supervisor's page: state from /supervisor/api/state, live updates from /supervisor/events
// (server-sent events: "calls" each second, "alert" as alerts are logged, "lag" to reload).
// Every text from the server goes in with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};
const svg = (tag, attrs) => {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};
const pct = (p) => (p == null ? "–" : (100 * p).toFixed(0) + " %");
const ago = (ms) => {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
};
const time = (ms) => new Date(ms).toLocaleTimeString();

let selected = null;           // call id shown in the detail
const windows = new Map();     // call id -> Map(seq -> window), gathered while the page is open
const alertsById = new Map();

async function api(path, init) {
  const r = await fetch(path, Object.assign({ credentials: "same-origin" }, init));
  if (r.status === 401) { location.href = "/supervisor/login"; throw new Error("logged out"); }
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function renderCalls(calls) {
  const body = $("calls");
  body.replaceChildren();
  for (const c of calls) {
    const tr = el("tr", { class: c.state, "data-call": c.call_id },
      el("td", {}, c.call_id), el("td", {}, c.ani || "–"), el("td", {}, c.agent || "–"),
      el("td", {}, ago(c.started_wall_time_ms)), el("td", {}, c.state), el("td", {}, pct(c.p_spoof)));
    tr.addEventListener("click", () => select(c.call_id));
    body.append(tr);
  }
  $("no-calls").hidden = calls.length > 0;
  $("live-count").textContent = calls.length ? "(" + calls.length + ")" : "";
}

function renderEnded(calls) {
  const body = $("ended-calls");
  body.replaceChildren();
  for (const c of calls) {
    const s = c.summary || {};
    const tr = el("tr", { class: s.verdict || c.state, "data-call": c.call_id },
      el("td", {}, c.call_id), el("td", {}, (c.metadata && c.metadata.ani) || "–"),
      el("td", {}, c.ended_wall_time_ms ? time(c.ended_wall_time_ms) : "–"),
      el("td", {}, s.verdict || c.state), el("td", {}, pct(s.p_spoof_peak)));
    tr.addEventListener("click", () => select(c.call_id));
    body.append(tr);
  }
}

function ackLine(a) {
  return el("div", { class: "acked" },
    "acknowledged by " + a.by + " at " + time(a.at_ms) + (a.note ? ": " + a.note : ""));
}

function alertItem(a) {
  const li = el("li", { class: a.severity, "data-alert": a.id },
    el("strong", {}, a.kind.replace("_", " ")), " · ", a.severity, " · call ",
    el("a", { href: "#" }, a.call_id), " · " + pct(a.p_spoof) + " · " + time(a.wall_time_ms));
  li.querySelector("a").addEventListener("click", (e) => { e.preventDefault(); select(a.call_id); });
  if (a.acknowledged) {
    li.append(ackLine(a.acknowledged));
  } else {
    const form = $("ack-form").content.firstElementChild.cloneNode(true);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const data = new FormData(form);
      const ack = await api("/supervisor/api/alerts/" + encodeURIComponent(a.id) + "/ack", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ by: data.get("by"), note: data.get("note") }),
      });
      a.acknowledged = ack;
      form.replaceWith(ackLine(ack));
    });
    li.append(form);
  }
  return li;
}

function addAlert(a, atTop) {
  if (alertsById.has(a.id)) return;
  alertsById.set(a.id, a);
  const li = alertItem(a);
  if (atTop) $("alerts").prepend(li); else $("alerts").append(li);
}

function gather(callId, recent) {
  if (!windows.has(callId)) windows.set(callId, new Map());
  const m = windows.get(callId);
  for (const w of recent || []) m.set(w.seq, w);
  return [...m.values()].sort((a, b) => a.seq - b.seq);
}

function drawTimeline(ws, threshold, alerts) {
  const g = $("timeline");
  g.replaceChildren();
  const W = 600, H = 160, pad = 6;
  const end = Math.max(1000, ...ws.map((w) => w.end_ms), ...alerts.map((a) => a.audio_ms));
  const x = (ms) => pad + (W - 2 * pad) * (ms / end);
  const y = (p) => H - pad - (H - 2 * pad) * p;
  if (threshold != null) {
    g.append(svg("line", { class: "threshold", x1: 0, x2: W, y1: y(threshold), y2: y(threshold) }));
  }
  for (const a of alerts.filter((a) => a.kind !== "cleared")) {
    g.append(svg("line", { class: "alert", x1: x(a.audio_ms), x2: x(a.audio_ms), y1: 0, y2: H }));
  }
  for (const w of ws) {
    g.append(svg("circle", { class: "window", cx: x(w.end_ms), cy: y(w.p_spoof), r: 3 }));
  }
  if (ws.length) {
    const d = ws.map((w, i) => (i ? "L" : "M") + x(w.end_ms).toFixed(1) + " " + y(w.fused).toFixed(1)).join(" ");
    g.append(svg("path", { class: "fused", d }));
  }
}

function renderTranscript(segments, alerts) {
  const cues = new Set();
  for (const a of alerts) for (const c of a.cues || []) cues.add(c.text.toLowerCase());
  for (const s of segments) for (const c of s.cues || []) cues.add(c.text.toLowerCase());
  const box = $("transcript");
  box.replaceChildren();
  if (!segments.length) { box.append(el("p", { class: "muted" }, "No transcript (yet).")); return; }
  for (const s of segments) {
    const p = el("p", {});
    const text = s.text;
    // Highlight each cue's words where they occur.
    const lower = text.toLowerCase();
    let i = 0;
    const hits = [];
    for (const c of cues) {
      let at = lower.indexOf(c);
      while (c && at >= 0) { hits.push([at, at + c.length]); at = lower.indexOf(c, at + c.length); }
    }
    hits.sort((a, b) => a[0] - b[0]);
    for (const [a, b] of hits) {
      if (a < i) continue;
      p.append(text.slice(i, a), el("mark", {}, text.slice(a, b)));
      i = b;
    }
    p.append(text.slice(i));
    box.append(p);
  }
}

async function showDetail() {
  if (!selected) return;
  const d = await api("/supervisor/api/calls/" + encodeURIComponent(selected));
  const c = d.call;
  $("detail").hidden = false;
  $("detail-id").textContent = c.call_id + (c.metadata && c.metadata.ani ? " · " + c.metadata.ani : "");
  const verdict = (c.summary && c.summary.verdict) || c.state;
  const badge = $("detail-verdict");
  badge.textContent = verdict;
  badge.className = "badge " + verdict;
  const ws = gather(c.call_id, c.recent_windows);
  drawTimeline(ws, c.enter_threshold, d.alerts);
  const ev = $("evidence");
  ev.replaceChildren();
  for (const a of d.alerts) {
    for (const w of a.evidence || []) {
      ev.append(el("li", {}, (w.start_ms / 1000).toFixed(1) + "–" + (w.end_ms / 1000).toFixed(1) +
        " s: window " + pct(w.p_spoof) + ", fused " + pct(w.fused) + " (" + a.kind.replace("_", " ") + ")"));
    }
  }
  if (!ev.children.length) ev.append(el("li", { class: "muted" }, "No alert on this call."));
  renderTranscript(c.transcript || [], d.alerts);
}

function select(id) {
  selected = id;
  showDetail().catch(console.error);
}

async function load() {
  const s = await api("/supervisor/api/state");
  $("tenant").textContent = "tenant " + s.tenant;
  renderCalls(s.calls);
  renderEnded(s.ended);
  $("alerts").replaceChildren();
  alertsById.clear();
  for (const a of s.alerts) addAlert(a, false);
}

function connect() {
  const events = new EventSource("/supervisor/events");
  events.addEventListener("open", () => { $("link").textContent = "live"; });
  events.addEventListener("error", () => { $("link").textContent = "reconnecting…"; });
  events.addEventListener("calls", (e) => {
    renderCalls(JSON.parse(e.data));
    if (selected) showDetail().catch(console.error);
  });
  events.addEventListener("alert", (e) => {
    addAlert(JSON.parse(e.data), true);
  });
  events.addEventListener("lag", () => load().catch(console.error));
}

let searchTimer = null;
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(async () => {
    renderEnded(await api("/supervisor/api/ended?q=" + encodeURIComponent($("search").value)));
  }, 250);
});
// Ended calls refresh each minute; live ones come with the events.
setInterval(() => api("/supervisor/api/ended?q=" + encodeURIComponent($("search").value)).then(renderEnded).catch(console.error), 60000);

load().then(connect).catch(console.error);
