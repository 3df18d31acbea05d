// The technician's page.  Talks only to the collector's HTTP+JSON API (same as the CLI):
// login -> cookie + CSRF token; live picture over server-sent events (at most 1/s);
// trends fetched every few seconds; every text from the server goes in with textContent.
"use strict";

const API = "/api/v1";
const state = {
  csrf: null,
  operator: null,
  config: null,
  events: null,
  beds: new Map(),          // session_id -> {el, bed}
  trendTimers: new Map(),   // session_id -> timer
  alerts: [],
  audio: null,
  beepTimer: null,
  subjects: [],
  lastUpdate: 0,
  lastAlive: 0,             // Date.now() of the last update or heartbeat from the collector
  lastSeenLocal: null,      // the collector's clock then, in the site's zone ("02:10 +08:00")
  noData: false,            // the collector has been silent too long: every card is greyed out
  spiro: new Map(),         // session_id -> open spirometry session (from the live picture)
  compactMode: "auto",      // "auto" (compact from COMPACT_FROM beds), "on", "off"; kept in localStorage
};

const $ = (id) => document.getElementById(id);
const STALE_S = 15;  // a reading older than this is not shown as the current value
const COMPACT_FROM = 3;   // from this many beds the cards go compact (auto): 8 fit on a 1366x768 screen
const COMPACT_KEY = "collector.compact";
const COMPACT_WORDS = { auto: t("Compact: auto"), on: t("Compact: on"), off: t("Compact: off") };
// Review states of the history view, as msgids.
const REVIEW_WORDS = { not_needed: t("not needed"), needs_review: t("needs review"), resolved: t("resolved"), reopened: t("re-opened") };
// The link states the server sends, as msgids (t() needs literals to find them in the catalogue).
const LINK_STATES = { searching: t("searching"), connecting: t("connecting"), connected: t("connected"), lost: t("lost"),
  reconnecting: t("reconnecting"), closed: t("closed") };
// The stream pill's words, as msgids for setStream().
const STREAM_WORDS = [t("connecting…"), t("live"), t("no updates"), t("reconnecting…"), t("NO DATA")];
// Session and review states the server sends, listed so the catalogue has them.
const STATE_WORDS = [t("open"), t("stopped"), t("resolved"), t("met"), t("not met"), t("needs review"), t("unknown"),
  t("ELIGIBLE"), t("INELIGIBLE"), t("INCOMPLETE"), t("UNKNOWN"), t("NEEDS_REVIEW")];

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const opts = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  if (method !== "GET" && state.csrf) opts.headers["X-CSRF-Token"] = state.csrf;
  let resp;
  try {
    resp = await fetch(API + path, opts);
  } catch (e) {
    throw new ApiError(0, t("the collector is not answering; is the daemon running?"));
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    // a message the server sent with its id is shown in the reader's language (login errors), others as sent
    const msg = data && data.message_id ? t(data.message_id, data.params) : (data && (data.error || data.detail)) || `HTTP ${resp.status}`;
    if (resp.status === 401 && path !== "/login" && state.operator) showLogin(t("Your login expired. Log in again."));
    throw new ApiError(resp.status, typeof msg === "string" ? msg : JSON.stringify(msg));
  }
  return data;
}

function setResult(el, text, ok) {
  el.textContent = text;
  el.classList.toggle("error", !ok);
  el.classList.toggle("ok", !!ok);
}

function fmtHMS(s) {
  if (s === null || s === undefined || !isFinite(s)) return "--";
  s = Math.max(0, Math.floor(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}`;
}

function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "--";
  s = Math.max(0, Math.round(s));
  if (s < 60) return t("{s} s", { s });
  if (s < 3600) return s % 60 ? t("{m} min {s} s", { m: Math.floor(s / 60), s: s % 60 }) : t("{m} min", { m: s / 60 });
  return t("{h} h {m} min", { h: Math.floor(s / 3600), m: String(Math.floor((s % 3600) / 60)).padStart(2, "0") });
}

function fmtAgo(s) {
  if (s === null || s === undefined) return t("none yet");
  if (s < 90) return t("{n} s ago", { n: Math.round(s) });
  if (s < 5400) return t("{n} min ago", { n: Math.round(s / 60) });
  return t("{n} h ago", { n: (s / 3600).toFixed(1) });
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// -- login ------------------------------------------------------------------------------------
function showLogin(message) {
  stopLive();
  state.operator = null;
  state.csrf = null;
  $("app-view").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
  $("login-password").value = "";
  $("login-name").focus();
}

async function onLogin(ev) {
  ev.preventDefault();
  unlockAudio();
  $("login-submit").disabled = true;
  try {
    const out = await api("POST", "/login", { name: $("login-name").value.trim(), password: $("login-password").value });
    state.csrf = out.csrf_token;
    state.operator = out.operator;
    await showApp();
  } catch (e) {
    $("login-error").textContent = e.message;
  } finally {
    $("login-submit").disabled = false;
    $("login-password").value = "";
  }
}

async function onLogout() {
  try { await api("POST", "/logout", {}); } catch (e) { /* already gone */ }
  showLogin(t("Logged out."));
}

async function boot() {
  $("login-form").addEventListener("submit", onLogin);
  $("login-language").addEventListener("change", onLoginLanguage);
  try {
    const me = await api("GET", "/me");
    if (me.operator) {
      state.csrf = me.csrf_token;
      state.operator = me.operator;
      await showApp();
      return;
    }
  } catch (e) { /* not logged in */ }
  await useLoginLanguage();
  showLogin("");
}

// The login screen in the site's language, or the one its switch picked (kept in this browser).
async function useLoginLanguage() {
  try { await loadLoginLanguage(fetchJson); } catch (e) { /* msgids (English) show */ }
  $("login-language").value = I18N.language;
}

async function onLoginLanguage() {
  rememberLoginLanguage($("login-language").value);
  await useLoginLanguage();
}

// -- main view --------------------------------------------------------------------------------
let wired = false;
async function showApp() {
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("operator").textContent = state.operator;
  if (!wired) { wireForms(); wired = true; }
  loadCompactMode();
  await useLanguage();
  state.config = await api("GET", "/web/config");
  window.siteTimeZone = state.config.site_timezone;
  fillConfigLists();
  await refreshSubjects();
  await refreshSessions();
  startLive();
}

function shortLocal(local) {
  // "2026-12-02 02:10:05 +08:00" -> "02:10 +08:00"
  if (!local) return null;
  const parts = local.split(" ");
  return parts.length >= 3 ? `${parts[1].slice(0, 5)} ${parts[parts.length - 1]}` : local;
}

function alive(local) {
  state.lastAlive = Date.now();
  if (local) state.lastSeenLocal = shortLocal(local);
  if (state.noData) leaveNoData();
}

function noDataAfterMs() {
  const beat = (state.config && state.config.heartbeat_s) || 2;
  return Math.max(4000, 2 * beat * 1000);  // two heartbeats missed: the collector or the stream is gone
}

function enterNoData() {
  state.noData = true;
  const text = state.lastSeenLocal ? t("NO DATA FROM COLLECTOR since {time}", { time: state.lastSeenLocal }) : t("NO DATA FROM COLLECTOR since the page was opened");
  const banner = $("nodata-banner");
  banner.textContent = t("{nodata} — the values below are not live. Check the collector computer (is collector run still running?).", { nodata: text });
  banner.hidden = false;
  document.body.classList.add("nodata");
  for (const { el: node } of state.beds.values()) {
    node.classList.add("nodata");
    const b = node.querySelector(".nodata-text");
    b.textContent = text;
    b.hidden = false;
    for (const v of node.querySelectorAll(".vital .value")) { v.textContent = "–"; v.classList.add("none"); }
    const link = node.querySelector(".link");
    link.textContent = t("no data");
    link.className = "link pill bad";
    node.querySelector(".since").textContent = t("unknown");
    node.querySelector(".since").classList.add("bad");
  }
  for (const link of document.querySelectorAll("#spiro-open .spiro-link")) { link.textContent = t("no data"); link.className = "spiro-link pill bad"; }
  setStream("NO DATA", "bad");
  updateBeeping();
}

async function leaveNoData() {
  state.noData = false;
  $("nodata-banner").hidden = true;
  document.body.classList.remove("nodata");
  for (const { el: node } of state.beds.values()) {
    node.classList.remove("nodata");
    node.querySelector(".nodata-text").hidden = true;
  }
  updateBeeping();
  // Back: take the whole picture from the API again (beds started or stopped meanwhile, alerts, lists).
  try {
    render(await api("GET", "/web/status"));
    await refreshSubjects();
    await refreshSessions();
    for (const [sid, entry] of state.beds) loadNotes(sid, entry.el);
  } catch (e) { /* the stream goes on; the next update renders */ }
}

function startLive() {
  stopLive();
  const es = new EventSource(API + "/events/stream");
  state.events = es;
  setStream("connecting…", "warn");
  es.addEventListener("update", (ev) => {
    const pic = JSON.parse(ev.data);
    state.lastPic = pic;
    setStream("live", "ok");
    state.lastUpdate = Date.now();
    alive(pic.now_local);
    render(pic);
  });
  es.addEventListener("heartbeat", (ev) => {
    const hb = JSON.parse(ev.data);
    alive(hb.now_local);
    if (!state.lastUpdate || Date.now() - state.lastUpdate > 5000) setStream("no updates", "bad");
    else setStream("live", "ok");
  });
  es.addEventListener("expired", () => showLogin(t("Your login expired. Log in again.")));
  es.onerror = async () => {
    setStream("reconnecting…", "bad");
    // The stream broke: if the collector does not answer either, say so now rather than after the heartbeats.
    if (!state.noData) {
      try {
        const r = await fetch(API + "/health", { cache: "no-store" });
        if (!r.ok) throw new Error(String(r.status));
      } catch (e) { if (!state.noData && state.events === es) enterNoData(); }
    }
    if (es.readyState === EventSource.CLOSED) {
      try { await api("GET", "/me"); setTimeout(startLive, 3000); } catch (e) { /* showLogin already called on 401 */ }
    }
  };
  // Heartbeats come every few seconds: when they stop, nothing on the page is live any more.
  state.lastAlive = Date.now();
  state.staleTimer = setInterval(() => {
    if (!state.noData && Date.now() - state.lastAlive > noDataAfterMs()) enterNoData();
  }, 500);
}

function stopLive() {
  if (state.events) { state.events.close(); state.events = null; }
  clearInterval(state.staleTimer);
  for (const t of state.trendTimers.values()) clearInterval(t);
  state.trendTimers.clear();
  for (const { el } of state.beds.values()) el.remove();
  state.beds.clear();
  state.alerts = [];
  state.noData = false;
  $("nodata-banner").hidden = true;
  document.body.classList.remove("nodata");
  renderAlerts();
}

// -- language -------------------------------------------------------------------------------------
// The catalogue comes through the page's own API helper (same cookie, same error handling).
const fetchJson = (path) => api("GET", path.startsWith(API) ? path.slice(API.length) : path);

async function useLanguage() {
  let language = "en";
  try { language = (await api("GET", "/me/language")).language || "en"; } catch (e) { /* English stays */ }
  try { await loadLanguage(language, fetchJson); } catch (e) { /* msgids (English) show */ }
  $("language").value = I18N.language;
}

async function onLanguage() {
  const select = $("language");
  select.disabled = true;
  try {
    const out = await api("POST", "/me/language", { language: select.value });
    await loadLanguage(out.language, fetchJson);
    await rerender();
  } catch (e) {
    select.value = I18N.language;
  } finally {
    select.disabled = false;
  }
}

async function rerender() {
  // Every text the script wrote is written again in the new language.
  fillConfigLists();
  if (state.noData) enterNoData();
  else if (state.lastPic) render(state.lastPic);
  else setStream("connecting…", "warn");
  if (state.stream) setStream(...state.stream);
  renderAlerts();
  applyCompact();
  if (state.historyOf && $("history-dialog").open) await showHistory(state.historyOf);
  await refreshSubjects();
  await refreshSessions();
}

function setStream(text, kind) {
  // text is a msgid (listed in STREAM_WORDS); kept so a language switch can write it again
  state.stream = [text, kind];
  const s = $("stream-state");
  s.textContent = t(text);
  s.className = `pill ${kind}`;
}

function render(pic) {
  $("clock").textContent = pic.now_local || (pic.now_utc.replace("T", " ").slice(0, 19) + " UTC");
  $("disk").textContent = pic.disk_free_mb === null ? "" : t("disk {gb} GB free", { gb: (pic.disk_free_mb / 1000).toFixed(1) });
  const seen = new Set();
  for (const bed of pic.beds) {
    seen.add(bed.session_id);
    let entry = state.beds.get(bed.session_id);
    if (!entry) {
      entry = { el: makeBed(bed), bed };
      state.beds.set(bed.session_id, entry);
      $("beds").appendChild(entry.el);
      scheduleTrends(bed.session_id, entry.el);
    }
    entry.bed = bed;
    updateBed(entry.el, bed);
  }
  for (const [sid, entry] of state.beds) {
    if (!seen.has(sid)) {
      entry.el.remove();
      clearInterval(state.trendTimers.get(sid));
      state.trendTimers.delete(sid);
      state.beds.delete(sid);
    }
  }
  $("no-beds").hidden = state.beds.size > 0;
  renderSpiro(pic.spirometry || []);
  applyCompact();
  state.alerts = pic.alerts;
  renderAlerts();
}

function makeBed(bed) {
  const node = $("bed-template").content.firstElementChild.cloneNode(true);
  node.dataset.session = bed.session_id;
  applyI18n(node);
  node.querySelector(".stop").addEventListener("click", () => askStop(bed.session_id));
  node.querySelector(".history-open").addEventListener("click", () => showHistory(bed.subject_id));
  node.querySelector(".note-form").addEventListener("submit", (ev) => onNote(ev, bed.session_id, node));
  node.querySelector(".note-open").addEventListener("click", () => openNote(node));
  node.querySelector(".note-text").addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") { ev.preventDefault(); closeNote(node); }
  });
  node.querySelector(".note-text").setAttribute("aria-label", t("Note for night #{night}", { night: bed.session_id }));
  loadNotes(bed.session_id, node);
  return node;
}

async function loadNotes(sid, node) {
  let notes;
  try { notes = await api("GET", `/sessions/${sid}/notes`); } catch (e) { return; }
  const list = node.querySelector(".notes");
  list.textContent = "";
  for (const n of notes.slice(-3)) {
    list.appendChild(el("li", {}, `${shortLocal(n.noted_local) || n.noted_utc} · ${n.noted_by}: ${n.text}`));
  }
}

// A compact card has no room for the note field: its Note button opens it in place of the chart.
function openNote(node) {
  node.classList.add("noting");
  const b = node.querySelector(".note-open");
  b.textContent = t("Note");
  b.setAttribute("aria-expanded", "true");
  setResult(node.querySelector(".note-result"), "", true);
  node.querySelector(".note-text").focus();
}

function closeNote(node) {
  if (!node.classList.contains("noting")) return;
  node.classList.remove("noting");
  const b = node.querySelector(".note-open");
  b.setAttribute("aria-expanded", "false");
  b.focus();
}

async function onNote(ev, sid, node) {
  ev.preventDefault();
  const input = node.querySelector(".note-text"), result = node.querySelector(".note-result");
  const text = input.value.trim();
  if (!text) { setResult(result, t("Write what happened first."), false); return; }
  try {
    await api("POST", `/sessions/${sid}/notes`, { text });
    input.value = "";
    setResult(result, t("Noted."), true);
    if (node.classList.contains("noting")) {
      closeNote(node);
      node.querySelector(".note-open").textContent = t("Noted.");  // until the button is used again
    }
    await loadNotes(sid, node);
  } catch (e) {
    setResult(result, e.message, false);
  }
}

function updateBed(node, bed) {
  const q = (sel) => node.querySelector(sel);
  if (state.noData) return;  // a late update never un-greys a card; only the collector coming back does
  q(".subject").textContent = bed.subject_id;
  q(".session").textContent = t("night #{night}", { night: bed.session_id });
  const link = q(".link");
  link.textContent = t(LINK_STATES[bed.link_state] || bed.link_state);
  link.className = "link pill " + (bed.link_state === "connected" ? "ok" : "bad");
  q(".device").textContent = [bed.device_name, bed.protocol.toUpperCase(), bed.device].filter(Boolean).join(" · ");
  const spo2 = q(".spo2 .value"), pulse = q(".pulse .value");
  // Never show an old number as if it were current: no link or no fresh sample -> "--".
  const stale = bed.link_state !== "connected" || bed.seconds_since_last_sample === null || bed.seconds_since_last_sample > STALE_S;
  const noSpo2 = stale || bed.spo2_pct === null, noPulse = stale || bed.pulse_bpm === null;
  spo2.textContent = noSpo2 ? "–" : Math.round(bed.spo2_pct);
  pulse.textContent = noPulse ? "–" : Math.round(bed.pulse_bpm);
  spo2.classList.toggle("none", noSpo2);
  pulse.classList.toggle("none", noPulse);
  spo2.classList.toggle("low", !stale && bed.spo2_pct !== null && bed.spo2_pct < 90);
  const flag = q(".state-flag");
  const flagText = bed.link_state !== "connected" ? t("NO LINK") : bed.finger_out ? t("FINGER OUT") : "";
  flag.hidden = !flagText;
  flag.textContent = flagText;
  const thr = bed.t90_threshold_pct;
  const t90 = bed.t90_pct;
  q(".t90-value").textContent = t90 === null ? "T90 --" : `T90 ${t90.toFixed(2)} %`;
  q(".t90-value").classList.toggle("over", t90 !== null && t90 > thr);
  q(".t90-note").textContent = t("provisional · criterion ≤ {limit} %", { limit: thr });
  // Compact cards: the limit next to the value (never cut), "provisional" as a badge with the full text as its tooltip.
  q(".t90-limit-text").textContent = "· ≤ " + thr + " %";  // symbols and the number only: nothing to translate
  q(".t90-prov").title = q(".t90-note").textContent;
  const scale = thr * 2;
  const fill = q(".t90-fill");
  fill.style.width = `${Math.min(100, ((t90 || 0) / scale) * 100)}%`;
  fill.classList.toggle("over", t90 !== null && t90 > thr);
  q(".t90-limit").style.left = "50%";
  q(".t90-bar").setAttribute("aria-label", t("T90 {t90} against the {limit} % line", { t90: t90 === null ? t("unknown") : t90.toFixed(2) + " %", limit: thr }));
  q(".analysed").textContent = fmtHMS(bed.analysed_s);
  q(".since").textContent = fmtAgo(bed.seconds_since_last_sample);
  q(".since").classList.toggle("bad", bed.seconds_since_last_sample !== null && bed.seconds_since_last_sample > 30);
  q(".nadir").textContent = bed.nadir_spo2 === null || bed.nadir_spo2 === undefined ? "--" : `${Math.round(bed.nadir_spo2)} %`;
  q(".samples").textContent = bed.samples.toLocaleString("en");
  node.classList.toggle("alerting", state.alerts.some((a) => a.session_id === bed.session_id && !a.acknowledged_by));
}

function scheduleTrends(sid, node) {
  let n = 0;
  const tick = async () => {
    if (!state.beds.has(sid)) return;
    try {
      const t30 = await api("GET", `/sessions/${sid}/trend?minutes=30`);
      drawTrend(node.querySelector(".chart-30"), t30);
      if (n % 3 === 0) drawTrend(node.querySelector(".chart-all"), await api("GET", `/sessions/${sid}/trend`));
    } catch (e) { /* the next tick retries; the stream shows the connection state */ }
    n += 1;
  };
  tick();
  state.trendTimers.set(sid, setInterval(tick, 5000));
}

// -- alerts -------------------------------------------------------------------------------------
function renderAlerts() {
  const box = $("alerts");
  box.textContent = "";
  const pending = state.alerts.filter((a) => !a.acknowledged_by);
  for (const a of state.alerts) {
    // active: red and pulsing; cleared but not yet seen: amber, "cleared at"; acknowledged (still holds): grey.
    const st = a.state || (a.acknowledged_by ? "acknowledged" : a.active ? "active" : "cleared");
    const row = el("div", { class: `alert ${a.acknowledged_by ? "acked" : "pending"} state-${st}`, role: "group", "data-kind": a.kind, "data-state": st });
    row.appendChild(el("strong", { class: "alert-title" }, st === "cleared" ? t("{title} — cleared", { title: t(a.title) }) : st === "acknowledged" ? t("{title} — still holds", { title: t(a.title) }) : t(a.title)));
    row.appendChild(el("span", { class: "alert-where" }, a.subject_id ? t("{subject} · night #{night}", { subject: a.subject_id, night: a.session_id }) : t("collector")));
    row.appendChild(el("span", { class: "alert-msg" }, alertText(a)));
    const first = a.raised_local || (a.raised_utc.slice(11, 19) + " UTC");
    // A repeating alert is one row: "116 times since 03:00 +08:00, last 05:58 +08:00".
    const raised = (a.raise_count || 1) > 1
      ? t("{count} times since {first}, last {last}", { count: a.raise_count, first, last: a.last_raised_local || (a.last_raised_utc || a.raised_utc).slice(11, 19) + " UTC" })
      : first;
    row.appendChild(el("span", { class: "alert-time muted" }, st === "cleared" && a.cleared_local ? t("{raised} → cleared {cleared}", { raised, cleared: a.cleared_local }) : raised));
    if (a.acknowledged_by) {
      row.appendChild(el("span", { class: "muted" }, a.acknowledged_local ? t("acknowledged by {name} at {time}", { name: a.acknowledged_by, time: a.acknowledged_local }) : t("acknowledged by {name}", { name: a.acknowledged_by })));
    } else {
      const b = el("button", { type: "button", class: "ack", "aria-label": t("Acknowledge: {title} {subject}", { title: t(a.title), subject: a.subject_id || "" }) }, t("Acknowledge"));
      b.addEventListener("click", () => ackAlert(a.id, b));
      row.appendChild(b);
    }
    box.appendChild(row);
  }
  document.title = (state.noData ? t("(NO DATA) ") : pending.length ? `(${pending.length}!) ` : "") + t("Collector · beds");
  for (const { el: node, bed } of state.beds.values()) {
    node.classList.toggle("alerting", pending.some((a) => a.session_id === bed.session_id));
  }
  updateBeeping();
}

function updateBeeping() {
  // Sounds while an alert waits for a person, and while the collector is silent.
  setBeeping(state.noData || state.alerts.some((a) => !a.acknowledged_by));
  document.body.dataset.beeping = state.beepTimer ? "on" : "off";
}

async function ackAlert(id, button) {
  button.disabled = true;
  try {
    const out = await api("POST", `/alerts/${id}/ack`, { note: null });
    state.alerts = state.alerts.map((a) => (a.id === id ? { ...a, ...out, acknowledged_by: out.acknowledged_by || state.operator } : a)).filter((a) => a.active || !a.acknowledged_by);
    renderAlerts();
  } catch (e) {
    button.disabled = false;
    button.textContent = t("Retry: {error}", { error: e.message });
  }
}

function unlockAudio() {
  try {
    if (!state.audio) state.audio = new (window.AudioContext || window.webkitAudioContext)();
    if (state.audio.state === "suspended") state.audio.resume();
  } catch (e) { state.audio = null; }
}

function beep() {
  const ctx = state.audio;
  $("sound-hint").hidden = !!(ctx && ctx.state === "running");
  if (!ctx || ctx.state !== "running") return;
  const t = ctx.currentTime;
  for (const [start, freq] of [[0, 880], [0.25, 660]]) {
    const osc = ctx.createOscillator(), gain = ctx.createGain();
    osc.type = "sine";
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, t + start);
    gain.gain.exponentialRampToValueAtTime(0.3, t + start + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t + start + 0.2);
    osc.connect(gain).connect(ctx.destination);
    osc.start(t + start);
    osc.stop(t + start + 0.22);
  }
}

function setBeeping(on) {
  if (on && !state.beepTimer) {
    beep();
    state.beepTimer = setInterval(beep, 3000);
  } else if (!on && state.beepTimer) {
    clearInterval(state.beepTimer);
    state.beepTimer = null;
    $("sound-hint").hidden = true;
  }
}

// -- forms ------------------------------------------------------------------------------------------
function fillSelect(select, items, placeholder) {
  const keep = select.value;
  select.textContent = "";
  if (placeholder) select.appendChild(el("option", { value: "" }, placeholder));
  for (const [value, label] of items) select.appendChild(el("option", { value }, label));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

function fillConfigLists() {
  fillSelect($("start-protocol"), state.config.protocols.map((p) => [p, p.toUpperCase()]), t("from the advertisement"));
  fillSelect($("fact-name"), state.config.facts.map((f) => [f.name, t(f.name.replaceAll("_", " "))]), null);
  showFactHelp();
}

function showFactHelp() {
  const f = state.config && state.config.facts.find((x) => x.name === $("fact-name").value);
  $("fact-help").textContent = f ? t(f.help) + (f.unit ? ` (${f.unit})` : "") : "";
  const list = $("fact-choices");
  list.textContent = "";
  for (const c of f ? f.choices : []) list.appendChild(el("option", { value: c }));
  const input = $("fact-value");
  input.type = f && f.kind === "date" ? "date" : "text";
}

async function refreshSubjects() {
  try { state.subjects = await api("GET", "/subjects"); } catch (e) { return; }
  const items = state.subjects.map((s) => [s.id, s.open_sessions.length ? t("{subject}  (recording)", { subject: s.id }) : s.id]);
  for (const id of ["start-subject", "fact-subject", "export-subject", "spiro-subject", "review-subject", "history-subject"]) fillSelect($(id), items, t("— choose —"));
}

async function refreshSessions() {
  let rows;
  try { rows = await api("GET", "/sessions?limit=50"); } catch (e) { return; }
  const items = rows.filter((r) => r.kind === "night").map((r) => [String(r.id),
    t("#{id} {subject} · {state}", { id: r.id, subject: r.subject_id, state: t(r.state) }) + (r.meets_t90_criterion === true ? t(" · meets T90") : r.meets_t90_criterion === false ? t(" · FAILS T90") : r.state === "stopped" ? t(" · invalid") : "")]);
  fillSelect($("report-session"), items, t("— session —"));
}

async function onScan() {
  const btn = $("scan-button");
  btn.disabled = true;
  btn.textContent = t("Scanning…");
  setResult($("start-result"), t("Scanning for oximeters (5 s)…"), true);
  try {
    const found = await api("GET", "/scan?timeout_s=5");
    fillDevices(found);
    const busy = found.filter((d) => d.busy_session_id).length;
    setResult($("start-result"), busy ? t("{n} oximeter(s) in range, {busy} already recording a bed.", { n: found.length, busy })
      : t("{n} oximeter(s) in range.", { n: found.length }), true);
  } catch (e) {
    setResult($("start-result"), e.message, false);
  } finally {
    btn.disabled = false;
    btn.textContent = t("Scan");
  }
}

// The scan's oximeters: one already recording a bed is listed as busy, cannot be chosen and is never preselected.
function fillDevices(found) {
  const select = $("start-device");
  const keep = select.value;
  select.textContent = "";
  const free = found.filter((d) => !d.busy_session_id);
  if (!found.length) select.appendChild(el("option", { value: "" }, t("— nothing found —")));
  else if (!free.length) select.appendChild(el("option", { value: "" }, t("— every oximeter found is recording a bed —")));
  for (const d of found) {
    const text = `${d.name || t("unnamed")} · ${d.address}${d.protocol ? " · " + d.protocol : ""}${d.rssi !== undefined && d.rssi !== null ? " · " + d.rssi + " dBm" : ""}`;
    const opt = el("option", { value: d.address }, d.busy_session_id
      ? t("BUSY: night #{night} ({subject}) · {device}", { device: text, night: d.busy_session_id, subject: d.busy_subject_id }) : text);
    if (d.busy_session_id) { opt.disabled = true; opt.dataset.busy = String(d.busy_session_id); opt.className = "busy"; }
    select.appendChild(opt);
  }
  select.value = free.some((d) => d.address === keep) ? keep : free.length ? free[0].address : "";
}

async function onStart(ev) {
  ev.preventDefault();
  const subject = $("start-subject").value, device = $("start-device").value;
  if (!subject || !device) { setResult($("start-result"), t("Choose a subject and an oximeter (scan first)."), false); return; }
  const btn = $("start-submit");
  btn.disabled = true;
  setResult($("start-result"), t("Connecting…"), true);
  try {
    const out = await api("POST", "/sessions", { subject_id: subject, kind: "night", oximeter: device, protocol: $("start-protocol").value || null });
    setResult($("start-result"), t("Night #{night} recording for {subject}.", { night: out.id, subject: out.subject_id }), true);
    await refreshSubjects();
    await refreshSessions();
  } catch (e) {
    setResult($("start-result"), e.message, false);
  } finally {
    btn.disabled = false;
  }
}

async function onAddSubject(ev) {
  ev.preventDefault();
  const id = $("subject-id").value.trim();
  try {
    const out = await api("POST", "/subjects", { id });
    setResult($("subject-result"), t("Subject {subject} added.", { subject: out.id }), true);
    $("subject-id").value = "";
    await refreshSubjects();
    $("start-subject").value = out.id;
  } catch (e) {
    setResult($("subject-result"), e.message, false);
  }
}

let stopTarget = null;
function askStop(sid) {
  const entry = state.beds.get(sid), spiro = state.spiro.get(sid);
  stopTarget = sid;
  $("stop-text").textContent = spiro
    ? t("Stop spirometry session #{id} of subject {subject}? The port is closed; every manoeuvre received stays stored.", { id: sid, subject: spiro.subject_id })
    : t("Stop night #{night} of subject {subject}? Recording ends and the final report is computed.", { night: sid, subject: entry ? entry.bed.subject_id : "?" });
  $("stop-reason").value = "";
  $("stop-dialog").showModal();
  $("stop-cancel").focus();
}

async function onStopClosed() {
  const dlg = $("stop-dialog");
  if (dlg.returnValue !== "stop" || stopTarget === null) return;
  const sid = stopTarget;
  stopTarget = null;
  if (state.spiro.has(sid)) { await stopSpiro(sid); return; }
  for (const d of document.querySelectorAll(".side details")) d.open = d.id === "panel-reports";
  $("panel-reports").scrollIntoView({ block: "start" });
  const box = $("report");
  box.textContent = t("Stopping night #{night} and computing the report…", { night: sid });
  try {
    const out = await api("POST", `/sessions/${sid}/stop`, { reason: $("stop-reason").value || null });
    renderReport(out.report, sid);
    await refreshSubjects();
    await refreshSessions();
    $("report-session").value = String(sid);
    await showDecision(out.subject_id, box);
  } catch (e) {
    box.textContent = "";
    box.appendChild(el("p", { class: "error" }, e.message));
  }
}

function renderReport(r, sid) {
  const box = $("report");
  box.textContent = "";
  if (!r) { box.appendChild(el("p", { class: "muted" }, t("Night #{night} has no report.", { night: sid }))); return; }
  const verdict = r.meets_t90_criterion === true ? [t("Night #{night}: meets the T90 criterion", { night: sid }), "ok"]
    : r.meets_t90_criterion === false ? [t("Night #{night}: FAILS the T90 criterion", { night: sid }), "bad"] : [t("Night #{night}: INVALID night: repeat it", { night: sid }), "warn"];
  box.appendChild(el("h3", { class: "verdict report-verdict " + verdict[1] }, verdict[0]));
  const dl = el("dl", { class: "report-list" });
  const add = (k, v) => { dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", {}, v)); };
  add("T90", r.t90_pct === null || r.t90_pct === undefined ? t("n/a") : t("{pct} % of analysed time", { pct: r.t90_pct.toFixed(2) }));
  add(t("Analysed"), t("{analysed} ({pct} % of {recording})", { analysed: fmtHMS(r.analysed_s), pct: (r.analysed_pct || 0).toFixed(1), recording: fmtHMS(r.recording_s) }));
  if (r.nadir_spo2 !== undefined) add(t("Nadir"), r.nadir_spo2 === null ? "--" : `${r.nadir_spo2} %`);
  if (r.odi3_per_h !== undefined && r.odi3_per_h !== null) add("ODI3", `${r.odi3_per_h.toFixed(1)} /h`);
  if (r.gaps) add(t("Gaps"), `${r.gaps.count} (${fmtDuration(r.gaps.total_s)})`);
  // Each interruption as people read it: local start time and duration, never epoch numbers.
  const breaks = (r.gaps && r.gaps.breaks) || [];
  for (const b of breaks.slice(0, 50)) {
    add("", t("{start} for {duration} · {cause}", { start: window.localHM(b.start_s * 1000), duration: fmtDuration(b.duration_s), cause: t(String(b.cause).replaceAll("_", " ")) }));
  }
  if (breaks.length > 50) add("", t("… and {n} more (collector report {night})", { n: breaks.length - 50, night: sid }));
  if (r.definitions && r.definitions.t90) add(t("Definition"), r.definitions.t90);
  box.appendChild(dl);
  if (r.borderline) box.appendChild(el("p", { class: "warn" }, t("Borderline: needs review.")));
}

async function onShowReport() {
  const sid = $("report-session").value;
  if (!sid) return;
  try {
    const out = await api("GET", `/sessions/${sid}/report`);
    renderReport(out.report, sid);
  } catch (e) {
    $("report").textContent = "";
    $("report").appendChild(el("p", { class: "error" }, e.message));
  }
}

async function showDecision(subject, box) {
  const target = box || $("decision");
  const holder = el("div", { class: "decision-box" });
  target.appendChild(holder);
  holder.appendChild(el("p", { class: "muted" }, t("Eligibility of {subject}…", { subject })));
  try {
    const d = await api("GET", `/subjects/${encodeURIComponent(subject)}/eligibility`);
    holder.textContent = "";
    renderDecision(holder, subject, d);
  } catch (e) {
    holder.textContent = "";
    holder.appendChild(el("p", { class: "error decision-error" }, t("Eligibility of {subject}: {error}", { subject, error: e.message })));
  }
}

// A criterion's name in the reader's language (the ids stay the machine's; the names come with /web/config).
function criterionLabel(id) {
  const labels = (state.config && state.config.criteria_labels) || {};
  return labels[id] ? t(labels[id]) : id;
}

function renderDecision(box, subject, d) {
  const cls = d.decision === "eligible" ? "ok" : d.decision === "ineligible" ? "bad" : "warn";
  box.appendChild(el("h3", { class: "verdict decision-value " + cls }, t("{subject}: {decision}", { subject, decision: t(String(d.decision || "unknown").toUpperCase()) })));
  const trees = d.messages || {};
  if (!Array.isArray(d.criteria) || !d.criteria.length) {
    const lines = d.summary || [];
    const summaryTrees = (trees.summary || []).length === lines.length ? trees.summary : [];
    lines.forEach((line, i) => box.appendChild(el("p", { class: "small" }, reasonText(summaryTrees[i], line))));
  } else {
    const table = el("table", { class: "criteria" });
    for (const c of d.criteria) {
      const tr = el("tr", { class: "crit-" + c.state });
      tr.appendChild(el("td", { "data-criterion": c.id }, criterionLabel(c.id)));
      tr.appendChild(el("td", { class: "state" }, t(String(c.state).replace("_", " "))));
      tr.appendChild(el("td", { class: "small reason" }, reasonText((trees.criteria || {})[c.id], c.reason)));
      table.appendChild(tr);
    }
    box.appendChild(table);
  }
}

async function onFact(ev) {
  ev.preventDefault();
  const subject = $("fact-subject").value;
  if (!subject) { setResult($("fact-result"), t("Choose a subject."), false); return; }
  const body = { fact: $("fact-name").value, value: $("fact-value").value.trim(), reason: $("fact-reason").value.trim() || null };
  try {
    await api("POST", `/subjects/${encodeURIComponent(subject)}/facts`, body);
    setResult($("fact-result"), t("Recorded {fact} for {subject}.", { fact: body.fact, subject }), true);
    $("fact-value").value = "";
    $("fact-reason").value = "";
    $("decision").textContent = "";
    await showDecision(subject);
  } catch (e) {
    setResult($("fact-result"), e.message, false);
  }
}

async function onExport(ev) {
  ev.preventDefault();
  const subject = $("export-subject").value;
  if (!subject) { setResult($("export-result"), t("Choose a subject."), false); return; }
  setResult($("export-result"), t("Exporting…"), true);
  try {
    const out = await api("POST", "/exports", { subject_ids: [subject] });
    const where = out && (out.path || out.file || out.directory || out.id);
    setResult($("export-result"), where ? t("Export made: {where}.", { where }) : t("Export made."), true);
  } catch (e) {
    setResult($("export-result"), e.message, false);
  }
}

// Reviews: every needs_review criterion with its evidence; resolving one is a signed act (password again).
async function showReviews() {
  const subject = $("review-subject").value;
  const box = $("reviews");
  box.textContent = "";
  if (!subject) { box.appendChild(el("p", { class: "error" }, t("Choose a subject."))); return; }
  let items;
  try { items = await api("GET", `/reviews?subject=${encodeURIComponent(subject)}`); } catch (e) {
    box.appendChild(el("p", { class: "error" }, e.message)); return;
  }
  if (!items.length) box.appendChild(el("p", { class: "muted review-empty" }, t("Nothing needs review for {subject}.", { subject })));
  for (const it of items) box.appendChild(reviewItem(it));
  await showSignatures(subject);
}

function reviewItem(it) {
  const node = el("article", { class: "review-item review-" + it.status, "data-criterion": it.criterion });
  node.appendChild(el("h3", { class: "review-head" }, it.status === "resolved" ? t("{criterion}: {status} ({state})", { criterion: criterionLabel(it.criterion), status: t(it.status), state: t(String(it.state).replace("_", " ")) }) : t("{criterion}: {status}", { criterion: criterionLabel(it.criterion), status: t(it.status) })));
  node.appendChild(el("p", { class: "small review-reason" }, reasonText(it.reason_message, it.reason)));
  const r = it.review || {};
  if (it.status !== "open") node.appendChild(el("p", { class: "small review-by" },
    t("{decision} by {name} at {time}: {reason}", { decision: t(String(r.decision).replace("_", " ")), name: r.resolved_by, time: r.resolved_at, reason: r.reason }) + (r.note ? ` (${r.note})` : "")));
  const list = el("ul", { class: "small evidence" });
  for (const i of (it.evidence && it.evidence.inputs) || []) {
    list.appendChild(el("li", {}, `${i.fact}: ${typeof i.value === "object" ? JSON.stringify(i.value) : i.value}` +
      (i.recorded_at ? ` (${i.source}, ${i.recorded_by}, ${i.recorded_at})` : "")));
  }
  for (const n of it.variants || []) {
    list.appendChild(el("li", {}, t("night {night}: T90 {t90} % (primary), <= 90 %: {inclusive} %, % of recording: {of_recording} %", { night: n.session_id, t90: n.t90_pct, inclusive: n.t90_pct_inclusive, of_recording: n.t90_pct_of_recording }) + (n.borderline ? t(" (borderline)") : "")));
  }
  node.appendChild(list);
  if (it.status === "resolved") return node;
  const form = el("form", { class: "resolve-form" });
  const decision = el("select", { class: "resolve-decision", "aria-label": t("Decision") });
  for (const d of ["met", "not_met"]) decision.appendChild(el("option", { value: d }, t(d.replace("_", " "))));
  const reason = el("input", { class: "resolve-reason", required: "", maxlength: "2000", placeholder: t("why"), "aria-label": t("Reason") });
  const password = el("input", { class: "resolve-password", type: "password", required: "", maxlength: "200",
    placeholder: t("your password"), "aria-label": t("Password"), autocomplete: "current-password" });
  const button = el("button", { type: "submit", class: "primary" }, t("Resolve and sign"));
  const result = el("p", { class: "result resolve-result", role: "status" });
  for (const x of [decision, reason, password, button, result]) form.appendChild(x);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await api("POST", `/subjects/${encodeURIComponent(it.subject_id)}/reviews`,
        { criterion: it.criterion, decision: decision.value, reason: reason.value.trim(), password: password.value });
      password.value = "";
      await showReviews();
    } catch (e) {
      password.value = "";
      setResult(result, e.message, false);
    }
  });
  node.appendChild(form);
  return node;
}

async function showSignatures(subject) {
  const box = $("signatures");
  box.textContent = "";
  let sigs;
  try { sigs = await api("GET", `/subjects/${encodeURIComponent(subject)}/signatures`); } catch (e) { return; }
  for (const s of sigs) {
    box.appendChild(el("p", { class: "small signature " + (s.valid ? "ok" : "bad") },
      s.valid ? t("VALID: {signature}", { signature: s.manifestation }) : t("NO LONGER VALID ({why}): {signature}", { why: s.invalid_reason, signature: s.manifestation })));
  }
}

async function onSign(ev) {
  ev.preventDefault();
  const subject = $("review-subject").value;
  if (!subject) { setResult($("sign-result"), t("Choose a subject."), false); return; }
  try {
    await api("POST", `/subjects/${encodeURIComponent(subject)}/signatures`, { meaning: "approved", password: $("sign-password").value });
    setResult($("sign-result"), t("Decision of {subject} signed.", { subject }), true);
    await showSignatures(subject);
  } catch (e) {
    setResult($("sign-result"), e.message, false);
  }
  $("sign-password").value = "";
}

async function onSpiro(ev) {
  ev.preventDefault();
  const body = { subject_id: $("spiro-subject").value, kind: "spirometry", spirometer: $("spiro-port").value.trim(),
    protocol: $("spiro-protocol").value || null, model: $("spiro-model").value.trim() || null };
  try {
    const out = await api("POST", "/spirometry/sessions", body);
    setResult($("spiro-result"), t("Spirometry session #{id} open for {subject}.", { id: out.id, subject: out.subject_id }), true);
    try { render(await api("GET", "/web/status")); } catch (e) { /* the next update shows it */ }
  } catch (e) {
    setResult($("spiro-result"), e.message, false);
  }
}

async function onPorts() {
  try {
    const ports = await api("GET", "/serial-ports");
    const list = $("spiro-ports");
    list.textContent = "";
    for (const p of ports) list.appendChild(el("option", { value: p.device }, p.description || ""));
    setResult($("spiro-result"), t("{n} serial port(s): {ports}", { n: ports.length, ports: ports.map((p) => p.device).join(", ") || t("none") }), true);
  } catch (e) {
    setResult($("spiro-result"), e.message, false);
  }
}

function openPanel(id, focusId) {
  const p = $(id);
  p.open = true;
  p.scrollIntoView({ block: "nearest" });
  $(focusId).focus();
}

function onKey(ev) {
  if ($("app-view").hidden || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const tag = (ev.target.tagName || "").toLowerCase();
  if (["input", "select", "textarea"].includes(tag) || $("stop-dialog").open || $("history-dialog").open) return;
  const k = ev.key.toLowerCase();
  if (k === "n") openPanel("panel-start", "start-subject");
  else if (k === "s") openPanel("panel-subject", "subject-id");
  else if (k === "c") openPanel("panel-criteria", "fact-subject");
  else if (k === "r") openPanel("panel-reports", "report-session");
  else if (k === "v") openPanel("panel-review", "review-subject");
  else if (k === "h") openPanel("panel-history", "history-subject");
  else if (k === "a") { const b = document.querySelector("#alerts button.ack"); if (b) b.focus(); }
  else return;
  ev.preventDefault();
}

function wireForms() {
  $("logout").addEventListener("click", onLogout);
  $("language").addEventListener("change", onLanguage);
  $("scan-button").addEventListener("click", onScan);
  $("start-form").addEventListener("submit", onStart);
  $("subject-form").addEventListener("submit", onAddSubject);
  $("fact-form").addEventListener("submit", onFact);
  $("fact-name").addEventListener("change", showFactHelp);
  $("decision-button").addEventListener("click", () => {
    const s = $("fact-subject").value;
    $("decision").textContent = "";
    if (s) showDecision(s); else setResult($("fact-result"), t("Choose a subject."), false);
  });
  $("report-button").addEventListener("click", onShowReport);
  $("export-form").addEventListener("submit", onExport);
  $("review-button").addEventListener("click", showReviews);
  $("sign-form").addEventListener("submit", onSign);
  $("spiro-form").addEventListener("submit", onSpiro);
  $("ports-button").addEventListener("click", onPorts);
  $("history-button").addEventListener("click", () => {
    const s = $("history-subject").value;
    if (s) showHistory(s); else setResult($("history-result"), t("Choose a subject."), false);
  });
  $("compact-toggle").addEventListener("click", onCompactToggle);
  window.addEventListener("resize", redrawCharts);
  $("stop-dialog").addEventListener("close", onStopClosed);
  document.addEventListener("keydown", onKey);
  document.addEventListener("pointerdown", unlockAudio);
  document.addEventListener("keydown", unlockAudio);
}

// -- compact mode: many beds on one screen ------------------------------------------------------------
function loadCompactMode() {
  let mode = "auto";
  try { mode = window.localStorage.getItem(COMPACT_KEY) || "auto"; } catch (e) { /* private window: auto */ }
  state.compactMode = ["auto", "on", "off"].includes(mode) ? mode : "auto";
  applyCompact();
}

function onCompactToggle() {
  state.compactMode = { auto: "on", on: "off", off: "auto" }[state.compactMode] || "auto";
  try { window.localStorage.setItem(COMPACT_KEY, state.compactMode); } catch (e) { /* not kept */ }
  applyCompact();
}

function applyCompact() {
  const on = state.compactMode === "on" || (state.compactMode === "auto" && state.beds.size >= COMPACT_FROM);
  const was = document.body.classList.contains("compact");
  document.body.classList.toggle("compact", on);
  const b = $("compact-toggle");
  b.textContent = t(COMPACT_WORDS[state.compactMode]);
  b.setAttribute("aria-pressed", on ? "true" : "false");
  b.dataset.mode = state.compactMode;
  if (was !== on) redrawCharts();
}

function redrawCharts() {
  // The charts are drawn at their pixel size (legible text): a new card size means drawing again.
  for (const svg of document.querySelectorAll("svg.chart")) if (svg.trendData !== undefined) drawTrend(svg, svg.trendData);
}

// -- open spirometry sessions: visible beside the beds, stoppable there ---------------------------------
function renderSpiro(list) {
  const box = $("spiro-open");
  if (state.noData) return;  // like the bed cards: only the collector coming back refreshes them
  const seen = new Set();
  state.spiro = new Map(list.map((s) => [s.session_id, s]));
  for (const s of list) {
    seen.add(String(s.session_id));
    let row = box.querySelector(`.spiro-item[data-session="${s.session_id}"]`);
    if (!row) {
      row = el("div", { class: "spiro-item", "data-session": String(s.session_id), role: "group" });
      row.appendChild(el("strong", { class: "spiro-title" }));
      row.appendChild(el("span", { class: "spiro-link pill" }));
      row.appendChild(el("span", { class: "spiro-detail" }));
      const stop = el("button", { type: "button", class: "spiro-stop danger" });
      stop.addEventListener("click", () => askStop(s.session_id));
      row.appendChild(stop);
      box.appendChild(row);
    }
    row.querySelector(".spiro-title").textContent = t("Spirometry · {subject} · session #{id}", { subject: s.subject_id, id: s.session_id });
    const link = row.querySelector(".spiro-link");
    link.textContent = t(LINK_STATES[s.link_state] || s.link_state);
    link.className = "spiro-link pill " + (s.link_state === "connected" ? "ok" : "warn");
    const result = s.valid === null || s.valid === undefined ? t("no result yet")
      : s.fvc_pct_predicted === null || s.fvc_pct_predicted === undefined ? (s.valid ? t("valid") : t("not valid yet"))
      : t("FVC {pct} % predicted (grade {grade})", { pct: Number(s.fvc_pct_predicted).toFixed(1), grade: s.grade_fvc || "?" });
    row.querySelector(".spiro-detail").textContent = t("{protocol} · since {time} · {n} manoeuvre(s) · {result}",
      { protocol: String(s.protocol).toUpperCase(), time: shortLocal(s.started_local) || s.started_utc, n: s.manoeuvres, result });
    row.querySelector(".spiro-stop").textContent = t("Stop spirometry…");
  }
  for (const row of [...box.querySelectorAll(".spiro-item")]) if (!seen.has(row.dataset.session)) row.remove();
  box.hidden = list.length === 0;
}

async function stopSpiro(sid) {
  const s = state.spiro.get(sid);
  try {
    await api("POST", `/sessions/${sid}/stop`, { reason: $("stop-reason").value || null });
    setResult($("spiro-result"), t("Spirometry session #{id} of {subject} stopped.", { id: sid, subject: s ? s.subject_id : "?" }), true);
    $("panel-spiro").open = true;
    render(await api("GET", "/web/status"));
    await refreshSubjects();
  } catch (e) {
    $("panel-spiro").open = true;
    setResult($("spiro-result"), e.message, false);
  }
}

// -- one subject's history: all nights and spirometry sessions -------------------------------------------
function yesNo(v) { return v === true ? t("yes") : v === false ? t("no") : "--"; }

async function showHistory(subject) {
  state.historyOf = subject;
  const box = $("history");
  $("history-title").textContent = t("History of {subject}", { subject });
  let h;
  try { h = await api("GET", `/subjects/${encodeURIComponent(subject)}/history`); } catch (e) {
    setResult($("history-result"), e.message, false);
    return;
  }
  box.textContent = "";
  box.appendChild(el("h3", {}, t("Nights ({n})", { n: h.nights.length })));
  if (!h.nights.length) box.appendChild(el("p", { class: "muted" }, t("No night recorded yet.")));
  else {
    const table = el("table", { class: "history-table nights" });
    const head = el("tr");
    for (const c of [t("Night"), t("Started"), t("Length"), "T90", t("Valid night"), t("T90 criterion"), t("Review"), t("Gaps")]) head.appendChild(el("th", {}, c));
    table.appendChild(head);
    for (const n of h.nights) {
      const tr = el("tr", { class: "history-night", "data-session": String(n.id) });
      tr.appendChild(el("td", {}, `#${n.id}` + (n.state === "open" ? " " + t("(recording)") : n.state !== "stopped" ? ` (${t(n.state)})` : "")));
      tr.appendChild(el("td", {}, n.started_local));
      tr.appendChild(el("td", {}, fmtDuration(n.duration_s)));
      tr.appendChild(el("td", { class: "t90" }, n.t90_pct === null || n.t90_pct === undefined ? "--" : `${n.t90_pct.toFixed(2)} %`));
      tr.appendChild(el("td", { class: n.night_valid === false ? "bad" : "" }, yesNo(n.night_valid)));
      tr.appendChild(el("td", { class: n.meets_t90_criterion === false ? "bad" : n.meets_t90_criterion ? "ok" : "" },
        n.meets_t90_criterion === true ? t("meets") : n.meets_t90_criterion === false ? t("fails") : "--"));
      tr.appendChild(el("td", { class: "review review-" + n.review_state }, t(REVIEW_WORDS[n.review_state] || n.review_state) + (n.borderline ? t(" (borderline)") : "")));
      tr.appendChild(el("td", {}, n.gaps.count ? t("{n} ({total})", { n: n.gaps.count, total: fmtDuration(n.gaps.total_s) }) : "0"));
      table.appendChild(tr);
      if (n.gaps.count) {
        const row = el("tr", { class: "history-gaps" });
        const cell = el("td", { colspan: "8" });
        const list = el("ul", { class: "small muted gap-list" });
        for (const g of n.gaps.listed.slice(0, 12)) {
          list.appendChild(el("li", { class: "gap" }, g.open
            ? t("{start}, still open ({duration} so far) · {cause}", { start: shortLocal(g.start_local), duration: fmtDuration(g.duration_s), cause: t(String(g.cause).replaceAll("_", " ")) })
            : t("{start} for {duration} · {cause}", { start: shortLocal(g.start_local), duration: fmtDuration(g.duration_s), cause: t(String(g.cause).replaceAll("_", " ")) })));
        }
        if (n.gaps.count > 12) list.appendChild(el("li", {}, t("… and {n} more (collector report {night})", { n: n.gaps.count - 12, night: n.id })));
        cell.appendChild(list);
        row.appendChild(cell);
        table.appendChild(row);
      }
    }
    box.appendChild(table);
  }
  box.appendChild(el("h3", {}, t("Spirometry sessions ({n})", { n: h.spirometry.length })));
  if (!h.spirometry.length) box.appendChild(el("p", { class: "muted" }, t("No spirometry session yet.")));
  else {
    const table = el("table", { class: "history-table spirometry" });
    const head = el("tr");
    for (const c of [t("Session"), t("Started"), t("State"), t("Valid"), t("FVC % predicted"), t("Grade"), t("Review")]) head.appendChild(el("th", {}, c));
    table.appendChild(head);
    for (const s of h.spirometry) {
      const tr = el("tr", { class: "history-spiro", "data-session": String(s.id) });
      tr.appendChild(el("td", {}, `#${s.id}`));
      tr.appendChild(el("td", {}, s.started_local));
      tr.appendChild(el("td", {}, t(s.state)));
      tr.appendChild(el("td", {}, yesNo(s.valid)));
      tr.appendChild(el("td", {}, s.fvc_pct_predicted === null || s.fvc_pct_predicted === undefined ? "--" : `${Number(s.fvc_pct_predicted).toFixed(1)} %`));
      tr.appendChild(el("td", {}, s.grade_fvc || "--"));
      tr.appendChild(el("td", { class: "review review-" + s.review_state }, t(REVIEW_WORDS[s.review_state] || s.review_state)));
      table.appendChild(tr);
    }
    box.appendChild(table);
  }
  if (h.reviews.length) {
    box.appendChild(el("h3", {}, t("Reviews")));
    const list = el("ul", { class: "small" });
    for (const r of h.reviews) {
      list.appendChild(el("li", {}, r.status === "resolved"
        ? t("{criterion}: resolved {decision} by {name} at {time}", { criterion: r.criterion, decision: t(String(r.decision).replace("_", " ")), name: r.by, time: r.at })
        : t("{criterion}: {status}", { criterion: r.criterion, status: t(REVIEW_WORDS[r.status === "open" ? "needs_review" : r.status] || r.status) })));
    }
    box.appendChild(list);
  }
  setResult($("history-result"), "", true);
  if (!$("history-dialog").open) $("history-dialog").showModal();
}

document.addEventListener("DOMContentLoaded", boot);
