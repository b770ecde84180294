// edgemeter dashboard: plain ES module, no framework, no network beyond this origin's /api/v1.
// Views are chosen by the address fragment (#/fleet, #/pools/3, #/invoices?account=1&month=2026-07 ...);
// every view re-renders from the API when the ledger changes (Server-Sent Events, polling as fallback).
import { lineChart, stackedBars, levelBar, PALETTE } from "./charts.js";

const API = "/api/v1";
const TZ = 8 * 3600;
const S = { token: null, me: null, fp: null, rendering: false, again: false, refreshes: 0, live: null, liveGen: null, accountNames: {} };

// ------------------------------------------------------------------ small helpers
function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids.flat()) if (k !== null && k !== undefined && k !== false) e.append(k instanceof Node ? k : String(k));
  return e;
}
const $ = (sel) => document.querySelector(sel);
const p2 = (n) => String(n).padStart(2, "0");
export const fmtInt = (n) => (n === null || n === undefined ? "" : Number(n).toLocaleString("en-US"));

// µCNY -> CNY with two decimals, as a customer reads money: rounded once to the fen, half away
// from zero (the core's billing.round_fen), in integers; the exact µCNY stays in the API.
export function fmtCny(ucny) {
  if (ucny === null || ucny === undefined) return "";
  const neg = ucny < 0; const u = Math.abs(ucny);
  return fmtFen((neg ? -1 : 1) * Math.floor((u + 5000) / 10000));
}
export function fmtFen(fen) {
  const neg = fen < 0; const f = Math.abs(fen);
  return (neg ? "-" : "") + Math.floor(f / 100).toLocaleString("en-US") + "." + p2(f % 100);
}
export function fmtTime(t) {
  if (!t) return "never";
  const d = new Date((t + TZ) * 1000);
  return `${d.getUTCFullYear()}-${p2(d.getUTCMonth() + 1)}-${p2(d.getUTCDate())} ${p2(d.getUTCHours())}:${p2(d.getUTCMinutes())}`;
}
function fmtDate(t) { return t ? fmtTime(t).slice(0, 10) : ""; }
function fmtAgo(t, now) {
  if (!t) return "never";
  const s = Math.max(0, now - t);
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
const nowS = () => Math.floor(Date.now() / 1000);

class ApiError extends Error {
  constructor(status, detail) { super(`${status}: ${detail}`); this.status = status; this.detail = detail; }
}

async function api(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const url = API + path + (q.toString() ? "?" + q : "");
  const r = await fetch(url, { headers: { Authorization: "Bearer " + S.token }, cache: "no-store" });
  if (r.status === 401) { signOut("The token was refused (unknown or revoked)."); throw new ApiError(401, "unauthorized"); }
  if (!r.ok) {
    let detail = r.statusText;
    try { const j = await r.json(); detail = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail); } catch (_) { /* not JSON */ }
    throw new ApiError(r.status, detail);
  }
  return (r.headers.get("content-type") || "").includes("json") ? r.json() : r.text();
}

async function all(path, params = {}) {   // every page of a list (dashboard-sized lists)
  const out = []; let offset = 0;
  for (let i = 0; i < 50; i++) {
    const pg = await api(path, { ...params, limit: 1000, offset });
    out.push(...pg.items);
    if (pg.next_offset === null) break;
    offset = pg.next_offset;
  }
  return out;
}

function download(name, text, type = "text/csv") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

function csvCell(v) {
  const s = String(v ?? "");
  return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

// ------------------------------------------------------------------ routing (#/view/arg?k=v)
function route() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const [view, arg] = (path || "fleet").split("/");
  return { view: view || "fleet", arg, params: Object.fromEntries(new URLSearchParams(query || "")) };
}
function go(view, arg, params) {
  const q = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v !== undefined && v !== null && v !== ""));
  location.hash = "#/" + view + (arg ? "/" + arg : "") + (q.toString() ? "?" + q : "");
}
function setParam(k, v) { const r = route(); const p = { ...r.params, [k]: v }; if (k !== "offset") delete p.offset; go(r.view, r.arg, p); }

// ------------------------------------------------------------------ building blocks
function card(label, value, { id, raw, cls } = {}) {
  return h("div", { class: "card " + (cls || "") }, h("div", { class: "label" }, label),
    h("div", { class: "value", "data-testid": id, "data-value": raw ?? "" }, value));
}

// A table whose CSV export is exactly what it shows: the columns' labels and each cell's text.
function table({ id, title, columns, rows, csv, empty = "nothing to show", pager, extra }) {
  const head = h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.label)));
  const body = h("tbody", {}, rows.map((r) => h("tr", { "data-id": r.id ?? "" }, columns.map((c) => {
    const raw = c.value ? c.value(r) : r[c.key];
    const node = c.cell ? c.cell(r) : (c.text ? c.text(r) : (raw ?? ""));
    return h("td", { class: c.num ? "num" : c.wrap ? "wrap" : "", "data-col": c.key, "data-value": typeof raw === "object" ? "" : raw ?? "" }, node);
  }))));
  const tbl = h("table", { "data-testid": id }, h("thead", {}, head), body);
  const exportCsv = () => {
    const lines = [columns.map((c) => csvCell(c.label)).join(",")];
    for (const tr of body.rows) lines.push([...tr.cells].map((td) => csvCell(td.textContent.trim())).join(","));
    download((csv || id) + ".csv", lines.join("\n") + "\n");
  };
  return h("section", { class: "panel" },
    h("div", { class: "panel-head" }, h("h2", {}, title), extra || null, h("span", { class: "spacer" }),
      h("button", { type: "button", class: "secondary", "data-testid": id + "-csv", onclick: exportCsv }, "CSV")),
    h("div", { class: "table-wrap" }, tbl, rows.length ? null : h("p", { class: "muted" }, empty)),
    pager || null);
}

function pagerFor(page) {
  const { total, limit, offset } = page;
  if (total <= limit) return null;
  return h("div", { class: "pager" }, `${offset + 1}–${Math.min(total, offset + limit)} of ${fmtInt(total)}`,
    h("button", { type: "button", class: "secondary", disabled: offset === 0 || null, onclick: () => setParam("offset", Math.max(0, offset - limit)) }, "Previous"),
    h("button", { type: "button", class: "secondary", disabled: page.next_offset === null || null, onclick: () => setParam("offset", page.next_offset) }, "Next"));
}

function select(label, name, options, value, onchange) {
  return h("label", {}, label, h("select", { name, "data-testid": "select-" + name, onchange: (e) => onchange(e.target.value) },
    options.map(([v, t]) => h("option", { value: v, selected: String(v) === String(value ?? "") || null }, t))));
}

const wsLink = (id, name) => h("a", { href: `#/workspace/${id}` }, name ? `${name} (#${id})` : `#${id}`);
const acctName = (id) => S.accountNames[id] ? `${S.accountNames[id]} (#${id})` : `#${id}`;
const badge = (text, cls) => h("span", { class: "badge " + (cls || "") }, text);

// ------------------------------------------------------------------ views
const views = {};

views.fleet = async ({ params }) => {
  const now = nowS();
  const limit = 50, offset = Number(params.offset || 0);
  const [ov, wss, page] = await Promise.all([
    api("/overview"), all("/workspaces"),
    api("/devices", { limit, offset, workspace_id: params.workspace, online: params.online }),
  ]);
  const names = Object.fromEntries(wss.map((w) => [w.id, w.name]));
  const cards = h("div", { class: "cards" },
    card("Devices", fmtInt(ov.devices), { id: "ov-devices", raw: ov.devices }),
    card(`Online (${Math.round(ov.online_s / 60)} min)`, fmtInt(ov.online), { id: "ov-online", raw: ov.online }),
    card("Silent", fmtInt(ov.silent), { id: "ov-silent", raw: ov.silent, cls: ov.silent ? "warn" : "" }),
    card("Unsynced batches", fmtInt(ov.unsynced_batches), { id: "ov-unsynced", raw: ov.unsynced_batches }),
    card("Rounds booked", fmtInt(ov.rounds), { id: "ov-rounds", raw: ov.rounds }),
    card("Rated (CNY)", fmtCny(ov.rated_ucny), { id: "ov-rated", raw: ov.rated_ucny }),
    card("Mismatches", fmtInt(ov.mismatches), { id: "ov-mismatches", raw: ov.mismatches, cls: ov.mismatches ? "bad" : "" }),
    card("Alerts", fmtInt(ov.alerts), { id: "ov-alerts", raw: ov.alerts, cls: ov.critical_alerts ? "bad" : (ov.alerts ? "warn" : "") }));
  const controls = h("div", { class: "controls" },
    select("Workspace", "workspace", [["", "all"], ...wss.map((w) => [w.id, `${w.name} (#${w.id})`])], params.workspace, (v) => setParam("workspace", v)),
    select("Online", "online", [["", "all"], ["true", "online"], ["false", "offline"]], params.online, (v) => setParam("online", v)));
  const cols = [
    { key: "id", label: "Device", num: true },
    { key: "workspace_id", label: "Workspace", text: (d) => `${names[d.workspace_id] || ""} (#${d.workspace_id})` },
    { key: "status", label: "Status", cell: (d) => badge(d.status, d.status === "active" ? "ok" : "bad"), text: (d) => d.status },
    { key: "online", label: "Online", cell: (d) => h("span", {}, h("span", { class: "dot" + (d.online ? " on" : "") }), d.online ? "online" : "offline") },
    { key: "last_seen", label: "Last seen", text: (d) => d.last_seen ? `${fmtTime(d.last_seen)} (${fmtAgo(d.last_seen, now)})` : "never" },
    { key: "acked_seq", label: "Acked seq", num: true },
    { key: "unsynced_batches", label: "Unsynced", num: true },
    { key: "lease", label: "Lease (remaining / total units)", value: (d) => d.lease ? d.lease.remaining : "",
      cell: (d) => d.lease ? h("span", {}, levelBar(d.lease.remaining, d.lease.total), `${fmtInt(d.lease.remaining)} / ${fmtInt(d.lease.total)}`) : (d.billing === "postpaid" ? "postpaid" : "none") },
    { key: "rounds", label: "Rounds", num: true, text: (d) => fmtInt(d.rounds) },
    { key: "rated_ucny", label: "Rated (CNY)", num: true, text: (d) => fmtCny(d.rated_ucny) },
    { key: "mismatches", label: "Mismatch", num: true, cell: (d) => d.mismatches ? h("span", { class: "flag", title: "rating mismatches" }, `⚑ ${d.mismatches}`) : "" },
  ];
  return [h("h1", {}, "Fleet"), cards, controls,
    table({ id: "devices", title: `Devices (${fmtInt(page.total)})`, columns: cols, rows: page.items, csv: "devices", pager: pagerFor(page) })];
};

views.workspaces = async () => {
  const wss = await all("/workspaces");
  const cols = [
    { key: "id", label: "Id", num: true },
    { key: "name", label: "Workspace", cell: (w) => wsLink(w.id, w.name), text: (w) => w.name },
    { key: "account_id", label: "Account", text: (w) => acctName(w.account_id) },
    { key: "billing", label: "Billing" },
    { key: "devices", label: "Devices", num: true },
    { key: "free", label: "Pool free (units)", num: true, value: (w) => w.pool ? w.pool.free : "", text: (w) => w.pool ? fmtInt(w.pool.free) : "" },
    { key: "remaining", label: "Pool remaining", num: true, value: (w) => w.pool ? w.pool.remaining : "", text: (w) => w.pool ? fmtInt(w.pool.remaining) : "" },
    { key: "policy", label: "Offline policy", text: (w) => w.terms.offline_policy },
  ];
  return [h("h1", {}, "Workspaces"), table({ id: "workspaces", title: `Workspaces (${wss.length})`, columns: cols, rows: wss })];
};

views.workspace = async ({ arg }) => {
  const id = Number(arg);
  let w;
  try { w = await api(`/workspaces/${encodeURIComponent(arg)}`); } catch (e) {
    if (e.status === 404 || e.status === 422) return [h("div", { class: "panel notfound", "data-testid": "not-found" }, `Workspace ${arg} not found.`)];
    throw e;
  }
  const devs = await all("/devices", { workspace_id: id });
  const t = w.terms;
  const info = h("section", { class: "panel", "data-testid": "workspace-detail", "data-id": w.id },
    h("dl", { class: "kv" },
      h("dt", {}, "Account"), h("dd", {}, acctName(w.account_id)),
      h("dt", {}, "Billing"), h("dd", {}, w.billing),
      h("dt", {}, "Devices"), h("dd", {}, fmtInt(w.devices)),
      h("dt", {}, "Lease terms"), h("dd", {}, `grant ${fmtInt(t.grant)} (max ${fmtInt(t.max)}) units, valid ${t.validity_s} s, offline ${t.offline_policy} up to ${fmtInt(t.offline_units)}, final-unit flag below ${fmtInt(t.low_units)}`),
      w.pool ? [h("dt", {}, "Pool"), h("dd", {}, h("a", { href: `#/pools/${w.id}` }, `${fmtInt(w.pool.remaining)} units remaining, ${fmtInt(w.pool.free)} free`))] : null));
  const cols = [
    { key: "id", label: "Device", num: true },
    { key: "status", label: "Status" },
    { key: "last_seen", label: "Last seen", text: (d) => fmtTime(d.last_seen) },
    { key: "rounds", label: "Rounds", num: true },
    { key: "rated_ucny", label: "Rated (CNY)", num: true, text: (d) => fmtCny(d.rated_ucny) },
  ];
  return [h("h1", {}, `Workspace ${w.name} (#${w.id})`), info, table({ id: "workspace-devices", title: "Devices", columns: cols, rows: devs })];
};

function burnChart(el, p, now, width = 640) {
  const pts = p.series.map((s) => [s.at, s.remaining]);
  if (pts.length && pts[pts.length - 1][0] < now) pts.push([now, p.levels.remaining]);   // level held until now
  const series = [{ name: "remaining units", color: PALETTE[0], points: pts }];
  const markers = [];
  const f = p.forecast;
  if (f.exhausted_at && pts.length) {
    const start = Math.max(now, pts[pts.length - 1][0]);
    series.push({ name: "forecast", color: PALETTE[3], dash: "6 4", points: [[start, p.levels.remaining], [f.exhausted_at, 0]] });
    markers.push({ x: f.exhausted_at, label: "empty " + fmtDate(f.exhausted_at) });
  }
  lineChart(el, { series, markers, yFormat: (v) => fmtInt(Math.round(v)), width, height: width > 700 ? 300 : 240 });
}

function forecastText(f) {
  if (!f.burn_per_day) return "not burning: no forecast";
  return f.exhausted_at ? `burning ~${fmtInt(f.burn_per_day)} units/day; forecast empty on ${fmtTime(f.exhausted_at)}` : `burn ${fmtInt(f.burn_per_day)} units/day`;
}

function levelsList(lv) {
  return h("dl", { class: "kv" },
    ...[["added", "Added"], ["free", "Free (grantable)"], ["out", "Reserved by leases"], ["unrec", "Unreconciled"],
      ["consumed", "Consumed"], ["overdraft", "Overdraft"], ["remaining", "Remaining"]]
      .flatMap(([k, label]) => [h("dt", {}, label), h("dd", { "data-testid": "pool-" + k, "data-value": lv[k] }, fmtInt(lv[k]))]));
}

views.pools = async ({ arg, params }) => {
  const now = nowS();
  if (arg) return poolDetail(arg, now);
  const pools = await all("/pools");
  if (!pools.length) return [h("h1", {}, "Pools"), h("p", { class: "muted" }, "No License workspaces.")];
  const shown = pools.slice(0, 24);
  const details = await Promise.all(shown.map((p) => api(`/workspaces/${p.workspace_id}/pool`, { points: 200 })));
  const grid = h("div", { class: "grid2 fill" }, details.map((p) => {
    const chart = h("div", { class: "chart-box" });
    burnChart(chart, p, now);
    return h("section", { class: "panel", "data-testid": "pool", "data-ws": p.workspace_id },
      h("div", { class: "panel-head" }, h("h2", {}, h("a", { href: `#/pools/${p.workspace_id}` }, `${p.name} (#${p.workspace_id})`)),
        h("span", { class: "spacer" }), h("span", { class: "muted" }, acctName(p.account_id))),
      chart, h("p", { "data-testid": "forecast", "data-exhausted": p.forecast.exhausted_at ?? "" }, forecastText(p.forecast)),
      levelsList(p.levels));
  }));
  const cols = [
    { key: "workspace_id", label: "Workspace", text: (p) => `${p.name} (#${p.workspace_id})` },
    { key: "added", label: "Added", num: true, value: (p) => p.levels.added, text: (p) => fmtInt(p.levels.added) },
    { key: "free", label: "Free", num: true, value: (p) => p.levels.free, text: (p) => fmtInt(p.levels.free) },
    { key: "consumed", label: "Consumed", num: true, value: (p) => p.levels.consumed, text: (p) => fmtInt(p.levels.consumed) },
    { key: "remaining", label: "Remaining", num: true, value: (p) => p.levels.remaining, text: (p) => fmtInt(p.levels.remaining) },
    { key: "burn", label: "Burn/day", num: true, value: (p) => p.forecast.burn_per_day ?? "", text: (p) => fmtInt(p.forecast.burn_per_day) },
    { key: "exhausted_at", label: "Forecast empty", value: (p) => p.forecast.exhausted_at ?? "", text: (p) => p.forecast.exhausted_at ? fmtTime(p.forecast.exhausted_at) : "—" },
  ];
  return [h("h1", {}, "Pool burn-down"), grid, table({ id: "pools", title: "Pools", columns: cols, rows: pools })];
};

async function poolDetail(arg, now) {
  let p;
  try { p = await api(`/workspaces/${encodeURIComponent(arg)}/pool`, { points: 400 }); } catch (e) {
    if (e.status === 404 || e.status === 422) return [h("div", { class: "panel notfound", "data-testid": "not-found" }, `No pool for workspace ${arg}.`)];
    throw e;
  }
  const [leases, acts] = await Promise.all([all("/leases", { workspace_id: p.workspace_id }), all("/licenses/activations", { workspace_id: p.workspace_id })]);
  const chart = h("div", { class: "chart-box" });
  burnChart(chart, p, now, 1100);
  const lcols = [
    { key: "id", label: "Lease", num: true }, { key: "device_id", label: "Device", num: true }, { key: "state", label: "State" },
    { key: "total", label: "Granted", num: true, text: (l) => fmtInt(l.total) }, { key: "used", label: "Used", num: true, text: (l) => fmtInt(l.used) },
    { key: "remaining", label: "Remaining", num: true, cell: (l) => h("span", {}, levelBar(l.remaining, l.total), fmtInt(l.remaining)), text: (l) => fmtInt(l.remaining) },
    { key: "booked", label: "Booked", num: true, text: (l) => fmtInt(l.booked) }, { key: "seen", label: "Last report", text: (l) => fmtTime(l.seen) },
  ];
  return [h("h1", {}, `Pool of ${p.name} (#${p.workspace_id})`),
    h("section", { class: "panel", "data-testid": "pool", "data-ws": p.workspace_id }, chart,
      h("p", { "data-testid": "forecast", "data-exhausted": p.forecast.exhausted_at ?? "" }, forecastText(p.forecast)), levelsList(p.levels)),
    activationsTable(acts, now), table({ id: "leases", title: "Leases", columns: lcols, rows: leases })];
}

function activationsTable(acts, now) {
  const cols = [
    { key: "id", label: "Activation", num: true }, { key: "purchase_id", label: "Purchase", num: true },
    { key: "workspace_id", label: "Workspace", cell: (a) => wsLink(a.workspace_id), text: (a) => `#${a.workspace_id}` },
    { key: "count", label: "Licences", num: true }, { key: "units", label: "Units", num: true, text: (a) => fmtInt(a.units) },
    { key: "activated_at", label: "Activated", text: (a) => fmtTime(a.activated_at) },
    { key: "period_end", label: "Expires", text: (a) => fmtTime(a.period_end) },
    { key: "days_left", label: "Days left", num: true, cell: (a) => a.active ? (a.days_left <= 30 ? badge(String(a.days_left), "warning") : String(a.days_left)) : badge("expired", "bad"), text: (a) => a.active ? String(a.days_left) : "expired" },
  ];
  return table({ id: "activations", title: "Activations and expiries", columns: cols, rows: acts });
}

views.licenses = async () => {
  const now = nowS();
  const [purchases, acts] = await Promise.all([all("/licenses"), all("/licenses/activations")]);
  const cols = [
    { key: "id", label: "Purchase", num: true },
    { key: "workspace_id", label: "Workspace", cell: (p) => wsLink(p.workspace_id), text: (p) => `#${p.workspace_id}` },
    { key: "tier", label: "Tier" }, { key: "devices", label: "Devices", num: true },
    { key: "price_ucny", label: "Price (CNY)", num: true, text: (p) => fmtCny(p.price_ucny) },
    { key: "purchased_at", label: "Bought", text: (p) => fmtTime(p.purchased_at) },
    { key: "activated", label: "Activated", num: true }, { key: "unactivated", label: "Not yet", num: true },
    { key: "activate_by", label: "Activate by", text: (p) => fmtTime(p.activate_by) },
    { key: "addon", label: "Add-on", text: (p) => (p.addon ? "yes" : "no") },
  ];
  return [h("h1", {}, "Licenses"), table({ id: "purchases", title: "Purchases", columns: cols, rows: purchases }), activationsTable(acts, now)];
};

const RANGES = [["1h", "last hour"], ["1", "last 24 h"], ["7", "last 7 days"], ["30", "last 30 days"], ["365", "last year"], ["all", "everything"]];

// Minutes, hours and days without usage as empty buckets up to now, so the time axis is even
// (at most 400 buckets; months have no fixed size and keep the buckets the API returned).
function fillBuckets(starts, bucket) {
  const size = { minute: 60, hour: 3600, day: 86400 }[bucket];
  if (!size || !starts.length) return starts;
  const last = Math.max(starts[starts.length - 1], Math.floor((nowS() + TZ) / size) * size - TZ);
  if ((last - starts[0]) / size > 400) return starts;
  const out = [];
  for (let t = starts[0]; t <= last; t += size) out.push(t);
  return out;
}

views.usage = async ({ params }) => {
  const bucket = params.bucket || "day";
  const range = params.range || "30";
  const since = range === "all" ? undefined : nowS() - (range === "1h" ? 3600 : Number(range) * 86400);
  const filt = { since, workspace_id: params.workspace };
  const [wss, time, items, devs] = await Promise.all([all("/workspaces"), all("/usage/time", { ...filt, bucket }),
    all("/usage/items", filt), api("/usage/devices", { ...filt, limit: 100, offset: Number(params.offset || 0) })]);
  const starts = fillBuckets([...new Set(time.map((r) => r.start))].sort((a, b) => a - b), bucket);
  const names = [...new Set(time.map((r) => r.name))];
  const idx = new Map(starts.map((s, i) => [s, i]));
  const stacks = names.map((n, i) => ({ name: n, color: PALETTE[i % PALETTE.length], values: starts.map(() => 0) }));
  for (const r of time) stacks[names.indexOf(r.name)].values[idx.get(r.start)] += r.ucny;
  const chart = h("div", { class: "chart-box", "data-testid": "usage-chart" });
  const label = (t) => { const d = fmtTime(t); return bucket === "month" ? d.slice(0, 7) : bucket === "day" ? d.slice(5, 10) : bucket === "minute" ? d.slice(11, 16) : d.slice(5, 16); };
  stackedBars(chart, { starts, stacks, yFormat: (v) => fmtCny(Math.round(v)), bucketLabel: label, width: 1100, height: 300 });
  const controls = h("div", { class: "controls" },
    select("Bucket", "bucket", [["minute", "minute"], ["hour", "hour"], ["day", "day"], ["month", "month"]], bucket, (v) => setParam("bucket", v)),
    select("Range", "range", RANGES, range, (v) => setParam("range", v)),
    select("Workspace", "workspace", [["", "all"], ...wss.map((w) => [w.id, `${w.name} (#${w.id})`])], params.workspace, (v) => setParam("workspace", v)));
  const icols = [
    { key: "name", label: "Billable item" }, { key: "multiplier", label: "×", num: true },
    { key: "calls", label: "Calls", num: true, text: (r) => fmtInt(r.calls) },
    { key: "ucny", label: "Rated (CNY)", num: true, text: (r) => fmtCny(r.ucny) },
  ];
  const dcols = [
    { key: "device_id", label: "Device", num: true }, { key: "workspace_id", label: "Workspace", num: true },
    { key: "batches", label: "Batches", num: true }, { key: "rounds", label: "Rounds", num: true, text: (r) => fmtInt(r.rounds) },
    { key: "rated_ucny", label: "Cloud rated (CNY)", num: true, text: (r) => fmtCny(r.rated_ucny) },
    { key: "device_ucny", label: "Device deducted (CNY)", num: true, text: (r) => fmtCny(r.device_ucny) },
    { key: "last_t0", label: "Last usage", text: (r) => fmtTime(r.last_t0) },
  ];
  return [h("h1", {}, "Usage by billable item"), controls,
    h("section", { class: "panel" }, h("div", { class: "panel-head" }, h("h2", {}, `Rated CNY per ${bucket}, by item`)), chart),
    h("div", { class: "grid2" }, table({ id: "usage-items", title: "By item", columns: icols, rows: items }),
      table({ id: "usage-devices", title: `By device (${fmtInt(devs.total)})`, columns: dcols, rows: devs.items, pager: pagerFor(devs) }))];
};

views.invoices = async ({ params }) => {
  const accs = await all("/accounts");
  S.accountNames = Object.fromEntries(accs.map((a) => [a.id, a.name]));
  if (!accs.length) return [h("h1", {}, "Invoices"), h("p", { class: "muted" }, "No accounts.")];
  const account = Number(params.account || accs[0].id);
  const [idx, acct] = await Promise.all([api(`/accounts/${account}/invoices`), api(`/accounts/${account}`)]);
  const month = params.month || idx.months[0];
  const inv = await api(`/accounts/${account}/invoices/${month}`);
  const controls = h("div", { class: "controls" },
    select("Account", "account", accs.map((a) => [a.id, `${a.name} (#${a.id})`]), account, (v) => go("invoices", null, { account: v })),
    select("Month", "month", idx.months.map((m) => [m, m]), month, (v) => setParam("month", v)),
    h("button", { type: "button", class: "secondary", "data-testid": "invoice-server-csv",
      onclick: async () => download(`invoice-${account}-${month}.csv`, await api(`/accounts/${account}/invoices/${month}`, { format: "csv" })) },
      "Invoice CSV (server)"));
  const cards = h("div", { class: "cards" },
    card("List price", fmtFen(inv.list_fen), { id: "inv-list", raw: inv.list_fen }),
    card("Savings-plan discount", fmtFen(inv.discount_fen), { id: "inv-discount", raw: inv.discount_fen }),
    card("Free trial", fmtFen(inv.trial_fen), { id: "inv-trial", raw: inv.trial_fen }),
    card("Paid from plans", fmtFen(inv.plan_fen), { id: "inv-plan", raw: inv.plan_fen }),
    card("Amount due", fmtFen(inv.due_fen), { id: "inv-due", raw: inv.due_fen, cls: inv.due_fen ? "warn" : "" }));
  const cols = [
    { key: "name", label: "Billable item" }, { key: "multiplier", label: "×", num: true },
    { key: "calls", label: "Calls", num: true, text: (l) => fmtInt(l.calls) },
    { key: "list_fen", label: "List (CNY)", num: true, text: (l) => fmtFen(l.list_fen) },
    { key: "discount_fen", label: "Discount", num: true, text: (l) => fmtFen(l.discount_fen) },
    { key: "trial_fen", label: "Trial", num: true, text: (l) => fmtFen(l.trial_fen) },
    { key: "plan_fen", label: "Plan", num: true, text: (l) => fmtFen(l.plan_fen) },
    { key: "due_fen", label: "Due", num: true, text: (l) => fmtFen(l.due_fen) },
  ];
  const t = acct.trial;
  const bal = h("section", { class: "panel", "data-testid": "balances" },
    h("div", { class: "panel-head" }, h("h2", {}, "Balances")),
    h("dl", { class: "kv" },
      h("dt", {}, "Pay-as-you-go balance"), h("dd", { "data-testid": "bal-balance", "data-value": acct.balance_ucny }, fmtCny(acct.balance_ucny) + " CNY"),
      h("dt", {}, "Paid / purchases / pay-as-you-go"), h("dd", { "data-testid": "bal-paid", "data-value": acct.paid_ucny },
        `${fmtCny(acct.paid_ucny)} / ${fmtCny(acct.purchases_ucny)} / ${fmtCny(acct.payg_ucny)} CNY`),
      h("dt", {}, "Status"), h("dd", {}, acct.suspended ? badge("suspended", "bad") : badge("active", "ok")),
      h("dt", {}, "Free trial"), h("dd", { "data-testid": "bal-trial", "data-value": t ? t.left_ucny : "" },
        t ? `${fmtCny(t.left_ucny)} of ${fmtCny(t.amount_ucny)} CNY left, until ${fmtTime(t.ends_at)}` : "not claimed")));
  const pcols = [
    { key: "id", label: "Plan", num: true }, { key: "commit_ucny", label: "Commitment (CNY)", num: true, text: (p) => fmtCny(p.commit_ucny) },
    { key: "bp", label: "Discount", num: true, text: (p) => `×${(p.bp / 10000).toFixed(2)}` },
    { key: "cap_ucny", label: "Covers list (CNY)", num: true, text: (p) => fmtCny(p.cap_ucny) },
    { key: "used_ucny", label: "Used (CNY)", num: true, text: (p) => fmtCny(p.used_ucny) },
    { key: "left_ucny", label: "Left (CNY)", num: true, text: (p) => fmtCny(p.left_ucny) },
    { key: "ends_at", label: "Ends", text: (p) => fmtTime(p.ends_at) }, { key: "closed", label: "State", text: (p) => (p.closed ? "forfeited" : "open") },
  ];
  const ocols = [
    { key: "order", label: "Order", num: true }, { key: "kind", label: "Purchase" }, { key: "ref", label: "Ref", num: true },
    { key: "at", label: "When", text: (o) => fmtTime(o.at) },
    { key: "price_fen", label: "Price (CNY)", num: true, text: (o) => fmtFen(o.price_fen) }, { key: "paid_by", label: "Paid" },
  ];
  return [h("h1", {}, `Invoice ${month} — ${acct.name}`), controls, cards,
    table({ id: "invoice-lines", title: "Lines (one per billable item and multiplier)", columns: cols, rows: inv.lines, csv: `invoice-${account}-${month}-shown`, empty: "no postpaid usage this month" }),
    table({ id: "invoice-purchases", title: `Purchases this month (CNY ${inv.purchases_cny})`, columns: ocols, rows: inv.purchases, empty: "no purchases this month" }),
    h("div", { class: "grid2 wide-right" }, bal, table({ id: "plans", title: "Savings plans", columns: pcols, rows: acct.plans, empty: "no savings plans" }))];
};

views.alerts = async ({ params }) => {
  const th = { pool_low_units: params.pool_low_units, silent_minutes: params.silent_minutes, expiring_days: params.expiring_days };
  const rows = await all("/alerts", th);
  const num = (name, label, ph) => h("label", {}, label, h("input", { type: "number", min: 0, name, value: params[name] || "", placeholder: ph,
    onchange: (e) => setParam(name, e.target.value) }));
  const cols = [
    { key: "severity", label: "Severity", cell: (a) => badge(a.severity, a.severity), text: (a) => a.severity },
    { key: "kind", label: "Kind" }, { key: "subject", label: "Subject" },
    { key: "account_id", label: "Account", text: (a) => acctName(a.account_id) },
    { key: "message", label: "Detail", wrap: true }, { key: "at", label: "At", text: (a) => fmtTime(a.at) },
  ];
  return [h("h1", {}, "Alerts"), h("div", { class: "controls" }, num("pool_low_units", "Pool below (units)", "workspace low_units"),
    num("silent_minutes", "Silent after (min)", "60"), num("expiring_days", "Expiring within (days)", "30")),
  table({ id: "alerts", title: `Alerts (${rows.length})`, columns: cols, rows, empty: "no alerts" })];
};

views.ops = async () => {
  const mis = await all("/mismatches");
  const mcols = [
    { key: "id", label: "Id", num: true }, { key: "device_id", label: "Device", num: true }, { key: "seq", label: "Seq", num: true },
    { key: "device_ucny", label: "Device (µCNY)", num: true }, { key: "rated_ucny", label: "Cloud (µCNY)", num: true },
    { key: "difference_ucny", label: "Difference", num: true }, { key: "reason", label: "Reason" },
    { key: "at_ms", label: "At", text: (m) => fmtTime(Math.floor(m.at_ms / 1000)) },
  ];
  const out = [h("h1", {}, "Operations"), table({ id: "mismatches", title: `Rating mismatches (${mis.length})`, columns: mcols, rows: mis, empty: "no mismatches" })];
  if (S.me && S.me.role === "operator") {
    const dead = await all("/dead-letters");
    const dcols = [
      { key: "id", label: "Id", num: true }, { key: "reason", label: "Reason" }, { key: "count", label: "Count", num: true },
      { key: "topic", label: "Topic" }, { key: "detail", label: "Detail", wrap: true }, { key: "size", label: "Bytes", num: true },
      { key: "last_seen_ms", label: "Last seen", text: (d) => fmtTime(Math.floor(d.last_seen_ms / 1000)) },
    ];
    out.push(table({ id: "dead-letters", title: `Dead letters (${dead.reduce((a, d) => a + d.count, 0)})`, columns: dcols, rows: dead, empty: "no dead letters" }));
  }
  return out;
};

// ------------------------------------------------------------------ rendering and live updates
async function render() {
  if (!S.token) return;
  if (S.rendering) { S.again = true; return; }
  S.rendering = true;
  try {
    do {
      S.again = false;
      const r = route();
      const fn = views[r.view] || views.fleet;
      for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === r.view);
      let nodes;
      try {
        nodes = await fn(r);
      } catch (e) {
        if (e.status === 401) return;
        nodes = [h("div", { class: "panel error", "data-testid": "error" }, `Could not load this view: ${e.message}`)];
      }
      const scrollY = window.scrollY;
      $("#main").replaceChildren(...nodes);
      window.scrollTo(0, scrollY);
      S.refreshes += 1;
      const up = $("#updated");
      up.textContent = "updated " + fmtTime(nowS()).slice(11) + " (UTC+8)";
      up.dataset.refreshes = String(S.refreshes);
      refreshAlertCount();
    } while (S.again);
  } finally {
    S.rendering = false;
  }
}

async function refreshAlertCount() {
  try { const a = await api("/alerts", { limit: 1 }); $("#alert-count").textContent = a.total ? String(a.total) : ""; } catch (_) { /* shown elsewhere */ }
}

function changed(fp) {
  const s = JSON.stringify(fp);
  if (S.fp !== null && s !== S.fp) render();
  S.fp = s;
}

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

async function liveSse(gen) {   // Server-Sent Events read through fetch, so the token travels in a header
  const ctl = new AbortController();
  S.live = { abort: () => ctl.abort() };
  const r = await fetch(API + "/events", { headers: { Authorization: "Bearer " + S.token, Accept: "text/event-stream" }, signal: ctl.signal, cache: "no-store" });
  if (!r.ok || !r.body) throw new Error("no event stream");
  $("#live").dataset.state = "sse"; $("#live").textContent = "live";
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  while (S.liveGen === gen) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const frame = buf.slice(0, i); buf = buf.slice(i + 2);
      let ev = "message", data = "";
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) ev = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (ev === "change" && data) changed(JSON.parse(data));
    }
  }
}

async function livePoll(gen) {   // the fallback: the fingerprint every 3 s
  $("#live").dataset.state = "poll"; $("#live").textContent = "polling";
  while (S.token && S.liveGen === gen) {
    try { changed(await api("/changes")); } catch (_) { /* try again */ }
    await sleep(3000);
  }
}

async function startLive() {
  if (S.live) S.live.abort();
  const gen = {};
  S.liveGen = gen;
  let failures = 0;
  while (S.token && S.liveGen === gen) {
    try {
      await liveSse(gen);
      failures = 0;
    } catch (_) {
      failures += 1;
      if (failures >= 3 && S.liveGen === gen) return livePoll(gen);
    }
    await sleep(1000);
  }
}

// ------------------------------------------------------------------ sign-in
function signOut(message) {
  S.token = null; S.me = null;
  sessionStorage.removeItem("em_token");
  S.liveGen = null;
  if (S.live) { S.live.abort(); S.live = null; }
  $("#live").dataset.state = "off"; $("#live").textContent = "offline";
  $("#whoami").textContent = ""; $("#signout").hidden = true;
  $("#main").replaceChildren();
  $("#signin").hidden = false;
  $("#signin-error").textContent = message || "";
}

async function signIn(token) {
  S.token = token;
  sessionStorage.setItem("em_token", token);
  try {
    S.me = await api("/me");
  } catch (e) {
    if (e.status !== 401) signOut("Could not reach the API: " + e.message);
    return;
  }
  $("#signin").hidden = true;
  $("#signout").hidden = false;
  try {
    const accs = await all("/accounts");
    S.accountNames = Object.fromEntries(accs.map((a) => [a.id, a.name]));
  } catch (_) { /* names are cosmetic */ }
  $("#whoami").textContent = S.me.role === "operator" ? "operator" : `tenant · ${acctName(S.me.account_id)}`;
  $("#whoami").dataset.role = S.me.role;
  await render();
  startLive();
}

function boot() {
  const m = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("em_token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + "#/fleet");
  }
  window.addEventListener("hashchange", () => render());
  $("#signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("#token-input").value.trim()); });
  $("#signout").addEventListener("click", () => signOut(""));
  const t = sessionStorage.getItem("em_token");
  if (t) signIn(t); else signOut("");
}

boot();
