// Small SVG charts for the dashboard: no libraries, no network. Each function fills a container
// element with an HTML legend (it wraps instead of running out of the picture) and one <svg>, and
// returns the <svg>. Axis labels stay inside the picture: the left margin fits the longest
// y label, and x labels near an edge are anchored at that edge. Values are plain numbers (units, µCNY); x is Unix seconds.
//   lineChart(el, {series: [{name, color, dash, points: [[t, y], ...]}], yLabel, yFormat, markers})
//   stackedBars(el, {starts: [t, ...], stacks: [{name, color, values: [...]}], yFormat, bucket})
const NS = "http://www.w3.org/2000/svg";
export const PALETTE = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d",
  "#65a30d", "#ea580c", "#4f46e5", "#0d9488", "#b45309", "#9333ea", "#475569", "#e11d48", "#16a34a"];
const TZ = 8 * 3600;   // billing calendar, UTC+8

export function svg(tag, attrs = {}, ...kids) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}

function title(text) { const t = svg("title"); t.textContent = text; return t; }

export function niceTicks(lo, hi, n = 5) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  const last = Math.ceil(hi / step - 1e-9) * step;   // the axis always reaches the highest value
  for (let v = Math.floor(lo / step + 1e-9) * step; v <= last + step * 1e-9; v += step) out.push(v);
  return out;
}

function localParts(t) {
  const d = new Date((t + TZ) * 1000);
  return { y: d.getUTCFullYear(), m: d.getUTCMonth() + 1, d: d.getUTCDate(), h: d.getUTCHours(), mi: d.getUTCMinutes() };
}
const p2 = (n) => String(n).padStart(2, "0");

export function fmtTick(t, span) {
  const p = localParts(t);
  if (span > 120 * 86400) return `${p.y}-${p2(p.m)}`;
  if (span > 2 * 86400) return `${p2(p.m)}-${p2(p.d)}`;
  return `${p2(p.h)}:${p2(p.mi)}`;
}

function frame(el, w, h, items = []) {
  el.replaceChildren();
  if (items.length) el.append(legend(items));
  const root = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: "100%", role: "img", class: "chart" });
  el.append(root);
  return root;
}

function legend(items) {
  const box = document.createElement("div");
  box.className = "chart-legend";
  for (const it of items) {
    const item = document.createElement("span");
    item.className = "legend-item";
    item.append(svg("svg", { width: 10, height: 10, viewBox: "0 0 10 10" }, svg("rect", { width: 10, height: 10, rx: 2, fill: it.color })),
      document.createTextNode(it.name));
    box.append(item);
  }
  return box;
}

const CHAR_PX = 6.6;   // width of one tick-label character at 11px (digits and separators)

// Left margin for y labels: the longest label plus the gap to the axis.
const leftMargin = (labels) => Math.max(40, Math.ceil(12 + CHAR_PX * Math.max(...labels.map((s) => s.length))));

// An x label centred on x, or anchored at the picture's edge when centring would cut it off.
function xLabel(x, y, text, width) {
  const half = (CHAR_PX * text.length) / 2;
  const anchor = x + half > width - 2 ? "end" : x - half < 2 ? "start" : "middle";
  const at = anchor === "end" ? Math.min(x + half, width - 2) : anchor === "start" ? Math.max(x - half, 2) : x;
  return svg("text", { x: at, y, "text-anchor": anchor, class: "tick" }, text);
}

export function lineChart(el, { series, yFormat = String, markers = [], width = 640, height = 240 }) {
  const root = frame(el, width, height, series.map((s) => ({ name: s.name, color: s.color })));
  const m = { l: 70, r: 16, t: 18, b: 28 };
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "no entries yet"));
    return root;
  }
  let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
  for (const mk of markers) { x0 = Math.min(x0, mk.x); x1 = Math.max(x1, mk.x); }
  if (x1 === x0) { x0 -= 1800; x1 += 1800; }
  const ymax = Math.max(1, ...pts.map((p) => p[1]));
  const yt = niceTicks(0, ymax, 4);
  const y1 = yt[yt.length - 1];
  m.l = leftMargin(yt.map(yFormat));
  const X = (x) => m.l + (x - x0) / (x1 - x0) * (width - m.l - m.r);
  const Y = (y) => height - m.b - y / y1 * (height - m.t - m.b);
  for (const v of yt) {
    root.append(svg("line", { x1: m.l, x2: width - m.r, y1: Y(v), y2: Y(v), class: "grid" }));
    root.append(svg("text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end", class: "tick" }, yFormat(v)));
  }
  const span = x1 - x0;
  for (const t of niceTicks(x0, x1, 5).filter((t) => t >= x0 && t <= x1)) {
    root.append(xLabel(X(t), height - 8, fmtTick(t, span), width));
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join("");
    root.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dash || null,
      class: "series", "data-name": s.name }, title(s.name)));
    const last = s.points[s.points.length - 1];
    if (!s.dash) root.append(svg("circle", { cx: X(last[0]), cy: Y(last[1]), r: 3, fill: s.color },
      title(`${s.name}: ${yFormat(last[1])}`)));
  }
  for (const mk of markers) {
    root.append(svg("line", { x1: X(mk.x), x2: X(mk.x), y1: m.t, y2: height - m.b, class: "marker" }));
    root.append(svg("text", { x: Math.min(X(mk.x), width - m.r - 4), y: m.t - 4, "text-anchor": "end", class: "marker-label" }, mk.label));
  }
  return root;
}

export function stackedBars(el, { starts, stacks, yFormat = String, width = 720, height = 260, bucketLabel = fmtTick }) {
  const root = frame(el, width, height, stacks.map((s) => ({ name: s.name, color: s.color })));
  const m = { l: 70, r: 12, t: 10, b: 40 };
  if (!starts.length) {
    root.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "no usage in this range"));
    return root;
  }
  const totals = starts.map((_, i) => stacks.reduce((a, s) => a + (s.values[i] || 0), 0));
  const yt = niceTicks(0, Math.max(1, ...totals), 4);
  const y1 = yt[yt.length - 1];
  m.l = leftMargin(yt.map(yFormat));
  const bw = (width - m.l - m.r) / starts.length;
  const Y = (y) => height - m.b - y / y1 * (height - m.t - m.b);
  for (const v of yt) {
    root.append(svg("line", { x1: m.l, x2: width - m.r, y1: Y(v), y2: Y(v), class: "grid" }));
    root.append(svg("text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end", class: "tick" }, yFormat(v)));
  }
  const span = starts.length > 1 ? starts[starts.length - 1] - starts[0] : 0;
  const every = Math.max(1, Math.ceil(starts.length / 8));
  starts.forEach((t, i) => {
    let acc = 0;
    const x = m.l + i * bw + bw * 0.12;
    const g = svg("g", { class: "bar", "data-start": t, "data-total": totals[i] });
    for (const s of stacks) {
      const v = s.values[i] || 0;
      if (!v) continue;
      g.append(svg("rect", { x, width: Math.max(1, bw * 0.76), y: Y(acc + v), height: Math.max(0.5, Y(acc) - Y(acc + v)),
        fill: s.color }, title(`${bucketLabel(t, span)} ${s.name}: ${yFormat(v)}`)));
      acc += v;
    }
    root.append(g);
    if (i % every === 0) {
      root.append(xLabel(m.l + i * bw + bw / 2, height - m.b + 16, bucketLabel(t, span), width));
    }
  });
  return root;
}

// A horizontal level bar (lease or pool): filled share of `total` that is `value`.
export function levelBar(value, total, { width = 90, warn = 0.2 } = {}) {
  const share = total > 0 ? Math.max(0, Math.min(1, value / total)) : 0;
  const root = svg("svg", { viewBox: `0 0 ${width} 10`, width, height: 10, class: "level" });
  root.append(svg("rect", { x: 0, y: 0, width, height: 10, rx: 3, class: "level-bg" }));
  root.append(svg("rect", { x: 0, y: 0, width: share * width, height: 10, rx: 3,
    class: share < warn ? "level-low" : "level-ok" }));
  root.append(title(`${Math.round(share * 100)} %`));
  return root;
}
