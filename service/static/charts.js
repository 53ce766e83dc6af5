// Small chart helpers for the diagnostics page: colour scales, a line chart and a bar chart in inline SVG, and a
// canvas heatmap. No library: each chart is a function that draws into a container and returns a handle whose
// setCursor(index) highlights one token, so the token strip and every chart stay in step.

const SVG_NS = "http://www.w3.org/2000/svg";

// ColorBrewer diverging palettes, both marked colour-blind safe. PuOr: orange = towards negative, purple = towards
// positive (token colours). RdBu: red = negative activation, blue = positive (the hidden-state heatmap).
export const PUOR = ["#b35806", "#e08214", "#fdb863", "#fee0b6", "#f7f7f7", "#d8daeb", "#b2abd2", "#8073ac", "#542788"];
export const RDBU = ["#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de", "#4393c3", "#2166ac"];
// Okabe-Ito qualitative colours for several lines or bars; lines also differ by dash pattern.
export const SERIES = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"];
export const DASHES = ["", "6 3", "2 3", "8 3 2 3", "1 2", "10 4"];

let uid = 0;
const nextId = (prefix) => `${prefix}-${++uid}`;

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/** A function t in [-1, 1] -> [r, g, b], interpolating the palette's stops (0 is the middle stop). */
function divergingRgb(palette) {
  const stops = palette.map(hexToRgb);
  return (t) => {
    const x = (Math.max(-1, Math.min(1, Number.isFinite(t) ? t : 0)) + 1) / 2 * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(x));
    const f = x - i;
    return stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  };
}

/** A function t in [-1, 1] -> "rgb(...)", interpolating the palette's stops (0 is the middle stop). */
export function diverging(palette) {
  const rgb = divergingRgb(palette);
  return (t) => {
    const c = rgb(t);
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  };
}

/** The text colour with the better contrast on an "rgb(r, g, b)" background (WCAG relative luminance). */
export function inkOn(rgb) {
  const lin = rgb.match(/\d+/g).map((v) => {
    const c = Number(v) / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  const luminance = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
  return luminance > 0.179 ? "#111" : "#fff";
}

/** A tick step of 1, 2 or 5 times a power of ten giving at most `ticks` ticks over 0..n-1. */
function tickStep(n, ticks) {
  const raw = Math.max(1, (n - 1) / ticks);
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((k) => k * power).find((s) => s >= raw);
}

export function fmt(value, digits = 3) {
  return Number.isFinite(value) ? value.toFixed(digits) : "–";
}

export function signed(value, digits = 3) {
  return Number.isFinite(value) ? (value > 0 ? "+" : value < 0 ? "−" : "±") + Math.abs(value).toFixed(digits) : "–";
}

/** A legend: a gradient bar with its two ends labelled ("≤"/"≥" when stronger values are clipped to the ends), each
 * end followed by `unit` when given (e.g. "log-odds"). */
export function legend(el, palette, min, max, leftWord, rightWord, extra = "", clipped = false, unit = "") {
  el.replaceChildren();
  const ends = document.createElement("div");
  ends.className = "legend-row";
  const bar = document.createElement("span");
  bar.className = "legend-bar";
  bar.style.backgroundImage = `linear-gradient(to right, ${palette.join(", ")})`;
  bar.setAttribute("aria-hidden", "true");
  const left = document.createElement("span");
  const u = unit ? ` ${unit}` : "";
  left.textContent = `${leftWord} ${clipped ? "≤ " : ""}${signed(min)}${u}`;
  const right = document.createElement("span");
  right.textContent = `${clipped ? "≥ " : ""}${signed(max)}${u} ${rightWord}`;
  ends.append(left, bar, right);
  el.append(ends);
  if (extra) {
    const note = document.createElement("span");
    note.className = "legend-extra";
    note.textContent = extra;
    el.append(note);
  }
}

function svg(tag, attrs, parent) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.append(node);
  return node;
}

function text(parent, x, y, content, attrs = {}) {
  const node = svg("text", { x, y, ...attrs }, parent);
  node.textContent = content;
  return node;
}

/** The accessible frame every SVG chart shares: role=img named by a <title> and described by a <desc>. */
function frame(container, width, height, title, description) {
  container.replaceChildren();
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart-svg" });
  const titleId = nextId("t");
  const descId = nextId("d");
  svg("title", { id: titleId }, root).textContent = title;
  svg("desc", { id: descId }, root).textContent = description;
  root.setAttribute("aria-labelledby", `${titleId} ${descId}`);
  container.append(root);
  return root;
}

/**
 * The points of one series worth drawing at `columns` pixels: all of them when there are few, else per pixel column
 * the first, lowest, highest and last point (in index order), so a 5,000-token review draws ~4 points per pixel and
 * keeps every spike a full line would show. Returns the kept indices.
 */
export function downsample(values, columns) {
  const n = values.length;
  if (n <= 2 * columns) return values.map((_, i) => i);
  const kept = [];
  const per = n / columns;
  for (let b = 0; b < columns; b++) {
    const start = Math.floor(b * per);
    const end = Math.min(n, Math.floor((b + 1) * per));
    if (start >= end) continue;
    let lo = start;
    let hi = start;
    for (let i = start + 1; i < end; i++) {
      if (values[i] < values[lo]) lo = i;
      if (values[i] > values[hi]) hi = i;
    }
    for (const i of [start, Math.min(lo, hi), Math.max(lo, hi), end - 1]) if (kept[kept.length - 1] !== i) kept.push(i);
  }
  return kept;
}

/**
 * Line chart over token positions (long series are downsampled to the chart's width, see downsample()).
 * opts: { series: [{name, values}], labels: [token text], yMin, yMax, baseline?, endLabel?, title, description,
 *         onHover(index|null), yTicks? }
 */
export function lineChart(container, opts) {
  const width = Math.max(280, container.clientWidth || 600);
  const height = 220;
  const m = { left: 40, right: opts.endLabel ? 118 : 14, top: 12, bottom: 30 };
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  const n = opts.labels.length;
  const x = (i) => m.left + (n > 1 ? (i / (n - 1)) * w : w / 2);
  const y = (v) => m.top + (1 - (v - opts.yMin) / (opts.yMax - opts.yMin)) * h;
  const root = frame(container, width, height, opts.title, opts.description);

  const axes = svg("g", { class: "axes" }, root);
  for (const t of opts.yTicks || [0, 0.25, 0.5, 0.75, 1]) {
    svg("line", { x1: m.left, x2: m.left + w, y1: y(t), y2: y(t), class: "grid" }, axes);
    text(axes, m.left - 6, y(t) + 4, t.toFixed(2), { "text-anchor": "end", class: "tick" });
  }
  if (opts.baseline !== undefined) {
    svg("line", { x1: m.left, x2: m.left + w, y1: y(opts.baseline), y2: y(opts.baseline), class: "baseline" }, axes);
  }
  const step = tickStep(n, 8);
  for (let i = 0; i < n; i += step) text(axes, x(i), height - m.bottom + 16, String(i), { "text-anchor": "middle", class: "tick" });
  text(axes, m.left + w / 2, height - 2, "token position", { "text-anchor": "middle", class: "axis-label" });

  const cursor = svg("line", { y1: m.top, y2: m.top + h, class: "cursor", visibility: "hidden" }, root);
  opts.series.forEach((s, k) => {
    const kept = downsample(s.values, Math.max(1, Math.round(w)));
    const d = kept.map((i, j) => `${j ? "L" : "M"}${x(i).toFixed(1)},${y(s.values[i]).toFixed(1)}`).join("");
    svg("path", { d, class: "series", stroke: s.colour || SERIES[k % SERIES.length], "stroke-dasharray": s.dash ?? DASHES[k % DASHES.length],
      "data-points": kept.length }, root);
    if (n <= 80) {
      s.values.forEach((v, i) => svg("circle", { cx: x(i), cy: y(v), r: 2.2, fill: s.colour || SERIES[k % SERIES.length] }, root));
    }
  });
  if (opts.endLabel && n) {
    const last = opts.series[0].values[n - 1];
    svg("circle", { cx: x(n - 1), cy: y(last), r: 5, class: "end-dot" }, root);
    text(root, x(n - 1) + 9, y(last) + 4, opts.endLabel, { class: "end-label" });
  }
  const overlay = svg("rect", { x: m.left, y: m.top, width: w, height: h, class: "overlay" }, root);
  const indexAt = (event) => {
    const box = root.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * width;
    return Math.max(0, Math.min(n - 1, Math.round(((px - m.left) / w) * (n - 1))));
  };
  overlay.addEventListener("mousemove", (e) => opts.onHover?.(indexAt(e)));
  overlay.addEventListener("mouseleave", () => opts.onHover?.(null));
  return {
    setCursor(i) {
      if (i === null || i === undefined || i >= n) return cursor.setAttribute("visibility", "hidden");
      cursor.setAttribute("x1", x(i));
      cursor.setAttribute("x2", x(i));
      cursor.setAttribute("visibility", "visible");
    },
  };
}

/**
 * Horizontal bars, grouped: opts { groups: [{name, bars: [{name, value, colour}]}], title, description, format }.
 * The axis runs from 0 to max(0.1, the largest value rounded up), so small shares stay visible.
 */
export function barChart(container, opts) {
  const width = Math.max(280, container.clientWidth || 400);
  const rowH = 16;
  const gap = 10;
  const rows = opts.groups.reduce((acc, g) => acc + g.bars.length, 0);
  const m = { left: 150, right: 56, top: 8, bottom: 26 };
  const height = m.top + m.bottom + rows * rowH + (opts.groups.length - 1) * gap;
  const w = width - m.left - m.right;
  const top = Math.max(...opts.groups.flatMap((g) => g.bars.map((b) => b.value)), 0);
  const max = Math.max(0.1, Math.ceil(top * 10) / 10);
  const root = frame(container, width, height, opts.title, opts.description);
  const ticks = w < 220 ? 2 : 4;  // narrow screens: fewer labels, so they do not overlap
  for (let t = 0; t <= ticks; t++) {
    const v = (max * t) / ticks;
    const px = m.left + (v / max) * w;
    svg("line", { x1: px, x2: px, y1: m.top, y2: height - m.bottom, class: "grid" }, root);
    text(root, px, height - m.bottom + 14, opts.format(v, max < 0.2 ? 1 : 0), { "text-anchor": "middle", class: "tick" });
  }
  let yPos = m.top;
  opts.groups.forEach((g) => {
    g.bars.forEach((b) => {
      text(root, m.left - 6, yPos + rowH - 4, `${g.name} · ${b.name}`, { "text-anchor": "end", class: "bar-label" });
      const bar = svg("rect", { x: m.left, y: yPos + 2, width: Math.max(1, (b.value / max) * w), height: rowH - 4, fill: b.colour,
        class: "bar" }, root);
      svg("title", {}, bar).textContent = `${g.name}, ${b.name} gate: ${opts.format(b.value, 1)} of units saturated`;
      text(root, m.left + (b.value / max) * w + 4, yPos + rowH - 4, opts.format(b.value, 1), { class: "bar-value" });
      yPos += rowH;
    });
    yPos += gap;
  });
  return root;
}

/**
 * Heatmap on a canvas: rows = hidden units, columns = tokens.
 * opts: { rows: [{label, values}], columns: [token text], limit, palette, onHover(col|null, row|null) }.
 * Returns { setCursor(col) }; the caller owns the canvas's text alternative.
 */
export function heatmap(canvas, cursorEl, opts) {
  const host = canvas.parentElement;
  const n = opts.columns.length;
  const labelW = 52;
  const avail = Math.max(200, (host.clientWidth || 600) - labelW - 8);
  const dpr = window.devicePixelRatio || 1;
  // Long reviews: thin columns, scrolling below 2px; but never a canvas wider than browsers draw (32,767 device px).
  const widest = (32_000 / dpr - labelW - 8) / Math.max(1, n);
  const cellW = Math.min(widest, Math.max(2, Math.min(28, avail / Math.max(1, n))));
  const cellH = opts.rows.length > 40 ? 9 : 12;
  const showTokens = cellW >= 11;
  const bottom = showTokens ? 64 : 22;
  const width = Math.ceil(labelW + n * cellW + 8);
  const height = Math.ceil(opts.rows.length * cellH + bottom + 4);
  canvas.width = width * dpr;
  canvas.height = height * dpr;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  // One pixel per cell in an offscreen image, then scaled up unsmoothed: a 5,000-token review with 64 units is one
  // image write and one draw, not 320,000 fillRect calls.
  const colour = divergingRgb(opts.palette);
  const cells = new ImageData(Math.max(1, n), Math.max(1, opts.rows.length));
  opts.rows.forEach((row, r) => {
    row.values.forEach((v, c) => {
      const [red, green, blue] = colour(v / opts.limit);
      const at = (r * n + c) * 4;
      cells.data[at] = red;
      cells.data[at + 1] = green;
      cells.data[at + 2] = blue;
      cells.data[at + 3] = 255;
    });
  });
  const image = document.createElement("canvas");
  image.width = cells.width;
  image.height = cells.height;
  image.getContext("2d").putImageData(cells, 0, 0);
  ctx.imageSmoothingEnabled = false;
  if (n && opts.rows.length) ctx.drawImage(image, labelW, 2, n * cellW, opts.rows.length * cellH);
  ctx.font = "10px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  ctx.fillStyle = "#333";
  ctx.textAlign = "right";
  if (cellH >= 9) opts.rows.forEach((row, r) => ctx.fillText(row.label, labelW - 4, r * cellH + cellH / 2 + 2));
  const base = opts.rows.length * cellH + 6;
  ctx.fillStyle = "#333";
  if (showTokens) {
    opts.columns.forEach((tok, c) => {
      ctx.save();
      ctx.translate(labelW + c * cellW + cellW / 2, base);
      ctx.rotate(-Math.PI / 3);
      ctx.textAlign = "right";
      ctx.fillText(tok.length > 10 ? `${tok.slice(0, 9)}…` : tok, 0, 0);
      ctx.restore();
    });
  } else {
    ctx.textAlign = "center";
    const step = tickStep(n, 10);
    for (let c = 0; c < n; c += step) ctx.fillText(String(c), labelW + c * cellW + cellW / 2, base + 8);
  }
  canvas.dataset.drawn = "true";
  canvas.dataset.rows = String(opts.rows.length);
  canvas.dataset.columns = String(n);

  const locate = (event) => {
    const box = canvas.getBoundingClientRect();
    const c = Math.floor((event.clientX - box.left - labelW) / cellW);
    const r = Math.floor((event.clientY - box.top - 2) / cellH);
    return [c >= 0 && c < n ? c : null, r >= 0 && r < opts.rows.length ? r : null];
  };
  canvas.onmousemove = (e) => opts.onHover?.(...locate(e));
  canvas.onmouseleave = () => opts.onHover?.(null, null);
  return {
    setCursor(c) {
      if (c === null || c === undefined || c >= n) {
        cursorEl.hidden = true;
        return;
      }
      cursorEl.hidden = false;
      cursorEl.style.left = `${labelW + c * cellW - 1}px`;
      cursorEl.style.width = `${Math.max(3, cellW) + 2}px`;
      cursorEl.style.height = `${opts.rows.length * cellH + 2}px`;
    },
  };
}
