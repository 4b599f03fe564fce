/* xfrmctl dashboard: talks to the JSON API with the session cookie and the page's
   CSRF token; live views follow the SSE event stream and fetch counters. No framework. */
"use strict";
(() => {
const API = "/api/v1";
const body = document.body;
const page = body.dataset.page;
const canOperate = body.dataset.canOperate === "true";
const canAdmin = body.dataset.canAdmin === "true";
const csrfMeta = document.querySelector('meta[name="csrf-token"]');
const csrf = csrfMeta ? csrfMeta.content : "";
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status; this.detail = detail;
  }
}

async function api(method, path, data) {
  const opts = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf;
  if (data !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(data); }
  const res = await fetch(API + path, opts);
  if (res.status === 401) { location.assign("/ui/login"); throw new ApiError(401, "signed out"); }
  if (res.status === 204) return null;
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_e) { json = null; }
  if (!res.ok) throw new ApiError(res.status, json && json.detail !== undefined ? json.detail : text);
  return json;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function flash(text, bad = false) {
  const f = $("#flash"); if (!f) return;
  f.textContent = text; f.classList.toggle("bad", bad);
}

function errorText(err) {
  if (!(err instanceof ApiError)) return String(err);
  if (Array.isArray(err.detail)) return err.detail.map(d => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  return `${err.message} (HTTP ${err.status})`;
}

const fmtBytes = n => n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB`
  : n < 1073741824 ? `${(n / 1048576).toFixed(1)} MiB` : `${(n / 1073741824).toFixed(2)} GiB`;
function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  const neg = s < 0; s = Math.abs(Math.round(s));
  const out = s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`
    : s < 86400 ? `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m` : `${Math.floor(s / 86400)}d${Math.floor(s % 86400 / 3600)}h`;
  return neg ? `-${out}` : out;
}
const secondsSince = iso => iso ? (Date.now() - Date.parse(iso)) / 1000 : null;
const secondsUntil = iso => iso ? (Date.parse(iso) - Date.now()) / 1000 : null;
const fmtTime = iso => iso ? new Date(iso).toLocaleString() : "–";
const stateBadge = s => el("span", { class: `state ${s || "unknown"}` }, s || "unknown");

function confirmAction(text) {
  const dlg = $("#confirm");
  if (!dlg || typeof dlg.showModal !== "function") return Promise.resolve(window.confirm(text));
  $("#confirm-text").textContent = text;
  dlg.returnValue = "";
  dlg.showModal();
  $("#confirm-ok").focus();
  return new Promise(resolve => dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true }));
}

async function act(label, method, path, { destructive = false, after } = {}) {
  if (destructive && !(await confirmAction(`${label}? This cannot be undone.`))) return;
  try { await api(method, path); flash(`${label}: requested.`); if (after) after(); }
  catch (err) { flash(`${label} refused: ${errorText(err)}`, true); }
}

/* The event stream (/ui/stream: the API's, as unnamed messages); one EventSource per
   view, reopened by the browser after errors with Last-Event-ID. */
function onEvents(handler, query = "") {
  const src = new EventSource(`/ui/stream${query}`);
  const live = $("#live");
  src.onopen = () => { if (live) { live.classList.remove("off"); live.textContent = "● live"; } };
  src.onerror = () => { if (live) { live.classList.add("off"); live.textContent = "● reconnecting"; } };
  src.onmessage = e => { const event = JSON.parse(e.data); handler(event && event.id !== undefined ? event : null); };
  window.addEventListener("pagehide", () => src.close());
  return src;
}

/* Unexpected failures of background refreshes: shown, and logged for the browser tests. */
function report(err) {
  if (err instanceof ApiError && err.status === 401) return;
  flash(errorText(err), true);
  console.error(err);
}

function debounce(fn, ms) { let t = null; return () => { clearTimeout(t); t = setTimeout(fn, ms); }; }

/* ---------- overview ---------- */
async function overview() {
  const tbody = $("#conns tbody");
  async function refresh() {
    const [st, ike, child] = await Promise.all([api("GET", "/status"),
      api("GET", "/ike-sas?limit=1").catch(() => null), api("GET", "/child-sas?limit=1").catch(() => null)]);
    const up = st.connections.filter(c => c.state === "up").length;
    $("#n-conns").textContent = st.connections.length;
    $("#n-up").textContent = up;
    $("#n-down").textContent = st.connections.filter(c => c.enabled && c.state !== "up").length;
    $("#n-ike").textContent = ike ? ike.count : "–";
    $("#n-child").textContent = child ? child.count : "–";
    const note = $("#daemon-note");
    note.hidden = st.daemon; note.textContent = st.daemon ? "" : "The daemon is not running: desired state only.";
    tbody.replaceChildren(...st.connections.map(c => el("tr", { "data-connection": c.name },
      el("td", {}, el("a", { href: `/ui/connections/${c.id}` }, c.name)),
      el("td", {}, c.enabled ? "enabled" : "disabled"),
      el("td", {}, stateBadge(c.state)),
      el("td", { class: c.state === "up" ? "" : "reason" }, c.state === "up" ? "" : (c.reason || "")),
      el("td", {}, c.since ? fmtDuration(secondsSince(c.since)) + " ago" : "–"),
      el("td", {}, String(c.ike_sa_ids.length)),
      canOperate ? el("td", {}, el("div", { class: "actions" },
        el("button", { onclick: () => act(`Initiate ${c.name}`, "POST", `/connections/${c.id}/initiate`, { after: refresh }) }, "Initiate"),
        el("button", { class: "danger", onclick: () => act(`Terminate ${c.name}`, "POST", `/connections/${c.id}/terminate`, { destructive: true, after: refresh }) }, "Terminate"))) : null)));
    if (!st.connections.length) tbody.append(el("tr", {}, el("td", { colspan: 7, class: "empty" }, "No connection is configured.")));
  }
  await refresh();
  await chart();
  const soon = debounce(() => { refresh().catch(report); chart().catch(report); }, 300);
  onEvents(soon, "?kind=protocol");
  setInterval(() => refresh().catch(report), 10000); // ages and reasons stay current
}

let hourPlot = null;
async function chart() {
  const since = new Date(Date.now() - 3600e3).toISOString();
  const rows = [];
  for (let offset = 0; offset < 5000; offset += 500) {
    const pg = await api("GET", `/events?kind=protocol&limit=500&offset=${offset}&since=${encodeURIComponent(since)}`);
    rows.push(...pg.data);
    if (pg.data.length < 500) break;
  }
  const now = Math.floor(Date.now() / 60000) * 60;
  const xs = Array.from({ length: 61 }, (_, i) => now - (60 - i) * 60);
  const setups = xs.map(() => 0), failures = xs.map(() => 0), rekeys = xs.map(() => 0);
  for (const e of rows) {
    const i = 60 - Math.floor((now - Math.floor(Date.parse(e.ts) / 60000) * 60) / 60);
    if (i < 0 || i > 60) continue;
    const d = e.data || {};
    if (e.type === "NegotiationFailed") failures[i]++;
    else if (e.type === "IkeSaRekeyed" || (e.type === "ChildSaNegotiated" && d.rekey_of !== null && d.rekey_of !== undefined)) rekeys[i]++;
    else if (e.type === "IkeSaUp" || e.type === "ChildSaNegotiated") setups[i]++;
  }
  const sum = a => a.reduce((x, y) => x + y, 0);
  $("#chart-totals").textContent = `Last hour: ${sum(setups)} setups, ${sum(failures)} failures, ${sum(rekeys)} rekeys (per minute above).`;
  const box = $("#chart");
  const data = [xs, setups, failures, rekeys];
  const width = Math.max(280, box.clientWidth - 16);
  if (hourPlot) { hourPlot.setData(data); hourPlot.setSize({ width, height: 200 }); return; }
  hourPlot = new uPlot({ width, height: 200, scales: { y: { range: (_u, _min, max) => [0, Math.max(3, max)] } },
    series: [{}, { label: "setups", stroke: "#047857", width: 2, points: { show: false } }, { label: "failures", stroke: "#b91c1c", width: 2, points: { show: false } },
      { label: "rekeys", stroke: "#1d4ed8", width: 2, points: { show: false } }],
    axes: [{}, { label: "per minute" }] }, data, box);
  window.addEventListener("resize", debounce(() => hourPlot.setSize({ width: Math.max(280, box.clientWidth - 16), height: 200 }), 200));
}

/* ---------- SA table ---------- */
const saHistory = new Map(); // child SA id -> [{t, bytes}]
function sample(sa) {
  const h = saHistory.get(sa.id) || [];
  h.push({ t: Date.now() / 1000, bytes: sa.traffic.bytes_in + sa.traffic.bytes_out });
  if (h.length > 30) h.shift();
  saHistory.set(sa.id, h);
  return h;
}
function rates(h) {
  const out = [];
  for (let i = 1; i < h.length; i++) out.push(Math.max(0, (h[i].bytes - h[i - 1].bytes) / Math.max(0.001, h[i].t - h[i - 1].t)));
  return out;
}
function sparkline(values) {
  const c = el("canvas", { class: "spark", width: 90, height: 22, role: "img" });
  const last = values.length ? values[values.length - 1] : 0;
  c.setAttribute("aria-label", `rate ${fmtBytes(Math.round(last))}/s`);
  c.title = `${fmtBytes(Math.round(last))}/s`;
  const g = c.getContext("2d");
  const max = Math.max(1, ...values);
  g.strokeStyle = "#1d4ed8"; g.lineWidth = 1.5; g.beginPath();
  values.forEach((v, i) => { const x = values.length < 2 ? 0 : i * 89 / (values.length - 1); const y = 21 - v / max * 19;
    if (i) g.lineTo(x, y); else g.moveTo(x, y); });
  g.stroke();
  return c;
}

async function saTable() {
  const tbody = $("#sas tbody");
  let rows = [], sortKey = "connection", sortDir = 1;
  const seen = new Set();
  async function load() {
    const [ikes, children] = await Promise.all([api("GET", "/ike-sas?limit=500"), api("GET", "/child-sas?limit=500")]);
    const ikeById = new Map(ikes.data.map(i => [i.id, i]));
    rows = children.data.map(c => ({ c, ike: ikeById.get(c.ike_sa_id) || null, h: sample(c) }));
    render();
  }
  const key = r => ({ connection: `${r.ike ? r.ike.connection_name : ""}/${r.c.name}`, peer: r.ike ? r.ike.remote_addr : "",
    spi: r.c.spi_in, age: -(Date.parse(r.c.installed_at || 0)), rekey: Date.parse(r.c.rekey_at || 0),
    bytes: r.c.traffic.bytes_in + r.c.traffic.bytes_out, packets: r.c.traffic.packets_in + r.c.traffic.packets_out })[sortKey];
  function render() {
    const q = $("#filter").value.trim().toLowerCase();
    const shown = rows.filter(r => !q || JSON.stringify([r.c, r.ike]).toLowerCase().includes(q))
      .sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * sortDir);
    tbody.replaceChildren(...shown.map(({ c, ike, h }) => {
      const tr = el("tr", { "data-sa": c.id, class: seen.has(c.id) ? "" : "new" },
        el("td", {}, el("a", { href: `/ui/sas/${encodeURIComponent(c.id)}` }, `${ike ? ike.connection_name : "?"} / ${c.name}`), " ", stateBadge(c.state)),
        el("td", { class: "mono" }, ike ? `${ike.remote_addr}:${ike.remote_port}` : "–", ike && ike.nat_remote ? " (NAT)" : ""),
        el("td", {}, ike ? `${ike.local_id || "–"} ↔ ${ike.remote_id || "–"}` : "–"),
        el("td", { class: "mono" }, `${c.spi_in} / ${c.spi_out}`),
        el("td", {}, [c.protocol.toUpperCase(), c.encryption, c.integrity, c.dh_group, c.esn ? "ESN" : null, c.encap ? "UDP" : null].filter(Boolean).join(" ")),
        el("td", { class: "mono" }, `${c.local_ts.join(", ")} ⇄ ${c.remote_ts.join(", ")}`),
        el("td", {}, fmtDuration(secondsSince(c.installed_at))),
        el("td", {}, `${fmtDuration(secondsUntil(c.rekey_at))} / ${fmtDuration(secondsUntil(c.expire_at))}`),
        el("td", { class: "num", "data-bytes": c.traffic.bytes_in + c.traffic.bytes_out }, `${fmtBytes(c.traffic.bytes_in)} / ${fmtBytes(c.traffic.bytes_out)}`),
        el("td", { class: "num" }, `${c.traffic.packets_in} / ${c.traffic.packets_out}`),
        el("td", {}, sparkline(rates(h))));
      return tr;
    }));
    for (const r of rows) seen.add(r.c.id);
    $("#sa-count").textContent = `${shown.length} of ${rows.length} CHILD_SAs`;
    $("#sas-empty").hidden = rows.length > 0;
  }
  $("#filter").addEventListener("input", render);
  for (const b of $$("#sas th button")) {
    b.setAttribute("aria-sort", "none");
    b.addEventListener("click", () => {
      sortDir = sortKey === b.dataset.sort ? -sortDir : 1; sortKey = b.dataset.sort;
      for (const o of $$("#sas th button")) o.setAttribute("aria-sort", "none");
      b.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
      render();
    });
  }
  await load();
  const soon = debounce(() => load().catch(report), 200);
  onEvents(soon, "?kind=protocol");
  setInterval(() => { if (!document.hidden) load().catch(report); }, 2000); // counters
}

/* ---------- one CHILD_SA ---------- */
function fields(dl, obj) {
  dl.replaceChildren(...Object.entries(obj).flatMap(([k, v]) => [el("dt", {}, k),
    el("dd", {}, v === null || v === undefined ? "–" : Array.isArray(v) ? v.join(", ") : typeof v === "object" ? JSON.stringify(v) : String(v))]));
}
async function saDetail() {
  const id = body.dataset.saId;
  let ikeId = null, plot = null;
  const xs = [], ins = [], outs = [];
  async function load() {
    let c;
    try { c = await api("GET", `/child-sas/${encodeURIComponent(id)}`); }
    catch (err) { if (err.status === 404) { flash("This CHILD_SA is gone (deleted or rekeyed).", true); $$("#sa-actions button").forEach(b => { b.disabled = true; }); return; } throw err; }
    ikeId = c.ike_sa_id;
    fields($("#child-fields"), { ...c, traffic: `${c.traffic.bytes_in} B / ${c.traffic.packets_in} pkts in, ${c.traffic.bytes_out} B / ${c.traffic.packets_out} pkts out` });
    const ike = await api("GET", `/ike-sas/${encodeURIComponent(ikeId)}`).catch(() => null);
    if (ike) fields($("#ike-fields"), ike);
    xs.push(Date.now() / 1000); ins.push(c.traffic.bytes_in); outs.push(c.traffic.bytes_out);
    if (xs.length > 120) { xs.shift(); ins.shift(); outs.shift(); }
    const box = $("#sa-chart");
    if (ike) $("#sa-title").textContent = `${ike.connection_name || "?"} / ${c.name} (${c.id})`;
    if (!plot) plot = new uPlot({ width: Math.max(280, box.clientWidth - 16), height: 180,
      scales: { x: { time: true, range: (_u, min, max) => [Math.min(min, max - 60), max] } },
      axes: [{}, { label: "bytes", size: 70 }],
      series: [{}, { label: "bytes in", stroke: "#047857", points: { show: false } },
        { label: "bytes out", stroke: "#1d4ed8", points: { show: false } }] }, [xs, ins, outs], box);
    else plot.setData([xs, ins, outs]);
  }
  for (const b of $$("#sa-actions button")) {
    b.addEventListener("click", () => {
      const path = b.dataset.kind === "child" ? `/child-sas/${encodeURIComponent(id)}` : `/ike-sas/${encodeURIComponent(ikeId)}`;
      act(b.textContent, "POST", `${path}/${b.dataset.act}`, { destructive: b.dataset.act === "terminate", after: () => load().catch(report) });
    });
  }
  await load();
  setInterval(() => { if (!document.hidden) load().catch(report); }, 2000);
}

/* ---------- connection detail ---------- */
async function connection() {
  const id = Number(body.dataset.connectionId);
  async function load() {
    const [conn, kids, st, evs] = await Promise.all([api("GET", `/connections/${id}`), api("GET", `/connections/${id}/children?limit=500`),
      api("GET", "/status"), api("GET", `/events?connection_id=${id}&limit=20`)]);
    $("#conn-name").textContent = `Connection ${conn.name}`;
    document.title = `${conn.name} · xfrmctl`;
    const s = st.connections.find(c => c.id === id);
    $("#conn-state").replaceWith(Object.assign(stateBadge(s ? s.state : null), { id: "conn-state" }));
    $("#conn-reason").textContent = s && s.state !== "up" && s.reason ? `why: ${s.reason}` : "";
    $("#conn-reason").className = "reason";
    fields($("#conn-detail"), s ? { since: fmtTime(s.since), ike_sas: s.ike_sa_ids, ...s.detail } : {});
    fields($("#conn-config"), conn);
    $("#children tbody").replaceChildren(...kids.data.map(k => el("tr", {}, el("td", {}, k.name), el("td", {}, k.mode),
      el("td", { class: "mono" }, k.local_ts.join(", ")), el("td", { class: "mono" }, k.remote_ts.join(", ")),
      el("td", {}, k.esp_proposals || "–"), el("td", {}, k.start_action))));
    $("#conn-events tbody").replaceChildren(...evs.data.map(e => el("tr", {}, el("td", {}, fmtTime(e.ts)), el("td", {}, e.type), el("td", {}, e.message))));
  }
  for (const b of $$(".actions button[data-act]")) {
    b.addEventListener("click", () => {
      const a = b.dataset.act;
      if (a === "delete") act("Delete the connection", "DELETE", `/connections/${id}`, { destructive: true, after: () => location.assign("/ui/") });
      else act(b.textContent, "POST", `/connections/${id}/${a}`, { destructive: a === "terminate", after: () => load().catch(report) });
    });
  }
  await load();
  onEvents(debounce(() => load().catch(report), 300), `?connection_id=${id}`);
}

/* ---------- connection form ---------- */
function readField(input) {
  if (input.type === "checkbox") return input.checked;
  const v = input.value.trim();
  if ("list" in input.dataset) return v ? v.split(/[\s,]+/).filter(Boolean) : [];
  if ("int" in input.dataset) return v === "" ? null : Number(v);
  if ("id" in input.dataset) return v === "" ? null : Number(v);
  if ("nullable" in input.dataset) return v === "" ? null : v;
  return v;
}
function writeField(input, value) {
  if (input.type === "checkbox") input.checked = Boolean(value);
  else input.value = value === null || value === undefined ? "" : Array.isArray(value) ? value.join(", ") : String(value);
}
function clearErrors(form) {
  for (const e of $$(".field-error", form)) e.remove();
  for (const i of $$("[aria-invalid]", form)) { i.removeAttribute("aria-invalid"); i.removeAttribute("aria-describedby"); }
  const fe = $("#form-error"); if (fe) { fe.hidden = true; fe.textContent = ""; }
}
function showFieldError(input, msg) {
  const eid = `${input.id || input.name || "x"}-err-${Math.random().toString(36).slice(2, 7)}`;
  input.setAttribute("aria-invalid", "true");
  input.setAttribute("aria-describedby", eid);
  input.closest(".f, label").append(el("p", { class: "field-error", id: eid, role: "alert" }, msg));
}
/* 422 details -> messages at the fields; whatever has no field goes to the form's top. */
function showErrors(err, fieldFor) {
  const fe = $("#form-error");
  const rest = [];
  if (err instanceof ApiError && Array.isArray(err.detail)) {
    for (const d of err.detail) {
      const name = (d.loc || []).filter(p => p !== "body")[0];
      const input = name !== undefined ? fieldFor(String(name)) : null;
      if (input) showFieldError(input, d.msg); else rest.push(`${(d.loc || []).join(".")}: ${d.msg}`);
    }
  } else rest.push(errorText(err));
  if (rest.length && fe) { fe.textContent = rest.join("; "); fe.hidden = false; }
  const first = $("[aria-invalid=true]") || fe; if (first) first.focus();
}

async function pickers(selects) {
  const [secrets, certs, cas] = await Promise.all([api("GET", "/secrets?limit=500"), api("GET", "/certificates?limit=500"), api("GET", "/cas?limit=500")]);
  const fill = (sel, items, label) => { if (!sel) return; const keep = sel.value;
    sel.replaceChildren(el("option", { value: "" }, "—"), ...items.map(i => el("option", { value: i.id }, label(i)))); sel.value = keep; };
  fill(selects.secret, secrets.data, s => `${s.name} (${s.kind})`);
  fill(selects.cert, certs.data, c => `${c.name}: ${c.subject}`);
  fill(selects.ca, cas.data, c => `${c.name}: ${c.subject}`);
  fill(selects.keySecret, secrets.data.filter(s => s.kind !== "psk"), s => s.name);
}

async function connectionForm() {
  const form = $("#conn-form");
  let id = body.dataset.connectionId ? Number(body.dataset.connectionId) : null;
  const list = $("#child-list");
  const removed = [];
  function addChild(values = {}) {
    const node = $("#child-tpl").content.firstElementChild.cloneNode(true);
    const n = list.children.length;
    for (const i of $$("[data-c]", node)) { i.id = `child-${n}-${i.dataset.c}`; if (values[i.dataset.c] !== undefined) writeField(i, values[i.dataset.c]); }
    if (!values.name) $("[data-c=name]", node).value = n ? `child${n + 1}` : "net";
    $("[data-remove-child]", node).addEventListener("click", () => { const cid = $("[data-c=id]", node).value; if (cid) removed.push(Number(cid)); node.remove(); });
    list.append(node);
  }
  $("#add-child").addEventListener("click", () => addChild());
  await pickers({ secret: $("#f-secret_id"), cert: $("#f-certificate_id"), ca: $("#f-ca_id") });
  if (id) {
    const [conn, kids] = await Promise.all([api("GET", `/connections/${id}`), api("GET", `/connections/${id}/children?limit=500`)]);
    for (const i of $$("[name]", form)) if (conn[i.name] !== undefined) writeField(i, conn[i.name]);
    kids.data.forEach(k => addChild(k));
  } else addChild();
  $("#s-create").addEventListener("click", async () => {
    $("#s-error").textContent = "";
    try {
      const s = await api("POST", "/secrets", { name: $("#s-name").value.trim(), kind: $("#s-kind").value, value: $("#s-value").value });
      $("#s-value").value = "";
      await pickers({ secret: $("#f-secret_id"), cert: $("#f-certificate_id"), ca: $("#f-ca_id") });
      $("#f-secret_id").value = String(s.id);
      flash(`Secret ${s.name} stored (its value is write-only).`);
    } catch (err) { $("#s-error").textContent = errorText(err); }
  });
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    if (!canAdmin) return;
    clearErrors(form);
    const data = {};
    for (const i of $$("fieldset [name]", form)) data[i.name] = readField(i);
    if (!data.ike_proposals) delete data.ike_proposals;
    let conn;
    try { conn = await api(id ? "PATCH" : "POST", id ? `/connections/${id}` : "/connections", data); }
    catch (err) { showErrors(err, name => form.querySelector(`[name="${CSS.escape(name)}"]`)); return; }
    for (const node of $$("[data-child]", list)) {
      const c = {};
      for (const i of $$("[data-c]", node)) if (i.dataset.c !== "id") c[i.dataset.c] = readField(i);
      if (!c.esp_proposals) delete c.esp_proposals;
      const cid = $("[data-c=id]", node).value;
      try {
        const saved = await api(cid ? "PATCH" : "POST", cid ? `/children/${cid}` : `/connections/${conn.id}/children`, c);
        $("[data-c=id]", node).value = saved.id;
      } catch (err) {
        if (!id) { id = conn.id; history.replaceState(null, "", `/ui/connections/${conn.id}/edit`); }
        showErrors(err, name => $(`[data-c="${CSS.escape(name)}"]`, node)); return;
      }
    }
    for (const cid of removed.splice(0)) await api("DELETE", `/children/${cid}`).catch(report);
    location.assign(`/ui/connections/${conn.id}`);
  });
}

/* ---------- events and audit ---------- */
async function events() {
  const kind = body.dataset.kind;
  const tbody = $("#events tbody");
  const conns = await api("GET", "/connections?limit=500");
  const names = new Map(conns.data.map(c => [c.id, c.name]));
  $("#ev-conn").append(...conns.data.map(c => el("option", { value: c.id }, c.name)));
  let src = null;
  const row = e => el("tr", { "data-event": e.id },
    el("td", {}, fmtTime(e.ts)), el("td", {}, e.type), el("td", {}, e.connection_id ? (names.get(e.connection_id) || `#${e.connection_id}`) : "–"),
    kind === "audit" ? el("td", {}, e.actor || "–") : null,
    kind === "audit" ? el("td", {}, `${e.resource || ""} ${e.resource_id || ""}`) : null,
    el("td", {}, e.message),
    kind === "audit" ? el("td", { class: "mono" }, diff(e.before, e.after)) : null);
  function query() {
    const p = new URLSearchParams({ kind });
    const t = $("#ev-type").value.trim(); if (t) p.set("type", t);
    const c = $("#ev-conn").value; if (c) p.set("connection_id", c);
    return p;
  }
  async function load() {
    const p = query(); p.set("limit", "200");
    const since = $("#ev-since").value; if (since) p.set("since", new Date(since).toISOString());
    const pg = await api("GET", `/events?${p}`);
    tbody.replaceChildren(...pg.data.map(row));
    $("#ev-count").textContent = `${pg.data.length} of ${pg.count} shown, newest first.`;
    if (src) { src.close(); src = null; }
    if ($("#ev-tail").checked) {
      const last = pg.data.length ? pg.data[0].id : null;
      const q = query(); if (last !== null) q.set("after_id", last);
      src = onEvents(e => { if (e) { const r = row(e); r.className = "new"; tbody.prepend(r); } }, `?${q}`);
    }
  }
  $("#ev-filters").addEventListener("submit", ev => { ev.preventDefault(); load().catch(err => flash(errorText(err), true)); });
  $("#ev-tail").addEventListener("change", () => load().catch(err => flash(errorText(err), true)));
  await load();
}
function diff(before, after) {
  if (!before && !after) return "";
  if (!before || !after) {  // created or deleted: the whole object, folded
    const obj = before || after;
    return el("details", {}, el("summary", {}, before ? "deleted" : "created"),
      Object.entries(obj).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join("\n"));
  }
  const keys = new Set([...Object.keys(before || {}), ...Object.keys(after || {})]);
  const out = [];
  for (const k of keys) {
    const a = JSON.stringify((before || {})[k]), b = JSON.stringify((after || {})[k]);
    if (a !== b) out.push(`${k}: ${a === undefined ? "–" : a} → ${b === undefined ? "–" : b}`);
  }
  return out.join("\n");
}

/* ---------- secrets and PKI ---------- */
async function pki() {
  async function load() {
    const [secrets, cas, certs] = await Promise.all([api("GET", "/secrets?limit=500"), api("GET", "/cas?limit=500"), api("GET", "/certificates?limit=500")]);
    const del = (label, path) => canAdmin ? el("td", {}, el("button", { class: "danger", onclick: () => act(`Delete ${label}`, "DELETE", path, { destructive: true, after: load }) }, "Delete")) : null;
    $("#secrets tbody").replaceChildren(...secrets.data.map(s => el("tr", {}, el("td", {}, s.name), el("td", {}, s.kind), el("td", {}, fmtTime(s.updated_at)), del(`secret ${s.name}`, `/secrets/${s.id}`))));
    $("#cas tbody").replaceChildren(...cas.data.map(c => el("tr", {}, el("td", {}, c.name), el("td", {}, c.subject), el("td", {}, fmtTime(c.not_after)), del(`CA ${c.name}`, `/cas/${c.id}`))));
    $("#certs tbody").replaceChildren(...certs.data.map(c => el("tr", {}, el("td", {}, c.name), el("td", {}, c.subject), el("td", {}, c.issuer), el("td", {}, fmtTime(c.not_after)), del(`certificate ${c.name}`, `/certificates/${c.id}`))));
    if (canAdmin) await pickers({ keySecret: $("#cert-key"), ca: $("#cert-ca") });
  }
  function fromFile(fileInput, textarea) {
    if (!fileInput) return;
    fileInput.addEventListener("change", async () => { const f = fileInput.files[0]; if (f) textarea.value = await f.text(); });
  }
  function submit(form, path, collect, done) {
    if (!form) return;
    form.addEventListener("submit", async ev => {
      ev.preventDefault(); clearErrors(form);
      try { await api("POST", path, collect()); done(); flash("Saved."); await load(); }
      catch (err) { showErrors(err, name => form.querySelector(`[name="${CSS.escape(name)}"]`)); }
    });
  }
  fromFile($("#ca-file"), $("#ca-pem")); fromFile($("#cert-file"), $("#cert-pem"));
  submit($("#secret-form"), "/secrets", () => ({ name: $("#sec-name").value.trim(), kind: $("#sec-kind").value, value: $("#sec-value").value }),
    () => { $("#sec-value").value = ""; });
  submit($("#ca-form"), "/cas", () => ({ name: $("#ca-name").value.trim(), pem: $("#ca-pem").value }), () => { $("#ca-pem").value = ""; });
  submit($("#cert-form"), "/certificates", () => ({ name: $("#cert-name").value.trim(), pem: $("#cert-pem").value,
    key_secret_id: readField($("#cert-key")), ca_id: readField($("#cert-ca")) }), () => { $("#cert-pem").value = ""; });
  await load();
}

const pages = { overview, sas: saTable, sa: saDetail, connection, connection_form: connectionForm, events, pki };
if (pages[page]) pages[page]().catch(report);
})();
