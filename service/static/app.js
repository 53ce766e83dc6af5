// The diagnostics page: loads the served models (GET v1/models), sends the review to POST v1/sentiment with
// diagnostics, hidden state and (optionally) occlusion attribution, and draws the report. It uses only the public
// API, with relative URLs so it also works behind a path prefix. Charts live in charts.js.

import { PUOR, RDBU, SERIES, barChart, diverging, fmt, heatmap, inkOn, legend, lineChart, signed } from "./charts.js";

const $ = (id) => document.getElementById(id);
const puor = diverging(PUOR);

const EXAMPLES = [
  ["Glowing", "A wonderful, moving film. The cast is superb and the score stayed with me for days. I loved every minute of it."],
  ["Scathing", "What a waste of two hours. The plot is dull, the acting is wooden and the ending makes no sense at all. Avoid."],
  ["Slow start, great finish", "The first hour is slow and the dialogue is clumsy, but the last act is brilliant: tense, funny and " +
    "beautifully shot. Worth the wait."],
  ["Negation and odd words", "Not bad at all! I expected a boring sequel, yet Zorblax and the crew made it genuinely enjoyable."],
];

const state = {
  models: [],      // /v1/models entries
  result: null,    // the last /v1/sentiment response
  text: "",        // the text it scored
  active: null,    // token index under the cursor or focus
  charts: [],      // handles with setCursor(i)
  tokenEls: [],    // the strip's token spans, by index (no selector scans over thousands of tokens)
  request: null,   // AbortController of the request in flight
  seq: 0,          // numbers analyses, so only the latest one updates the page
};

// -- API ---------------------------------------------------------------------------------------------------------

class ApiProblem extends Error {
  constructor(message, detail) {
    super(message);
    this.detail = detail;
  }
}

/** The API's error, in words a reader can act on (the code and status stay available as a detail line). */
function plainWords(status, error, retryAfter) {
  const code = error?.code || "";
  const message = error?.message || "";
  const wait = retryAfter ? ` Try again in ${retryAfter} second${retryAfter === "1" ? "" : "s"}.` : " Try again shortly.";
  if (status === 413) {
    const m = message.match(/has (\d+) characters; the limit is (\d+)/);
    const size = m ? ` It has ${Number(m[1]).toLocaleString("en")} characters; the limit is ${Number(m[2]).toLocaleString("en")}.` : "";
    return `This review is too long for the service.${size} Shorten it and try again.`;
  }
  if (code === "empty_text") return "The review is empty. Type or paste a review, then press Analyse.";
  if (code === "no_tokens") return "There is nothing to score: once markup and spaces are removed, the review is empty.";
  if (status === 422) return `The service could not accept this request: ${message || "it is not valid"}.`;
  if (code === "missing_api_key") return "This service needs an API key. Enter it under “API key” in the form and try again.";
  if (status === 401) return "The API key was not accepted. Check it under “API key” in the form and try again.";
  if (code === "unknown_model") return "That model is no longer served. Reload the page to see the models available now.";
  if (status === 503 && code === "overloaded") return `The server is busy right now.${wait}`;
  if (status === 503) return `The service is starting up or shutting down.${wait}`;
  if (status >= 500) return "Something went wrong on the server. Try again; if it keeps failing, the details are in the server's log.";
  return `The service answered with an error: ${message || `HTTP ${status}`}.`;
}

async function api(path, body) {
  const headers = { accept: "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["x-api-key"] = key;
  if (body) headers["content-type"] = "application/json";
  if (state.request && body) state.request.abort();
  const controller = new AbortController();
  if (body) state.request = controller;
  let response;
  try {
    response = await fetch(path, { method: body ? "POST" : "GET", headers, body: body ? JSON.stringify(body) : undefined,
      signal: controller.signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiProblem("Could not reach the service. Check that it is running and your connection, then try again.",
      String(err.message || err));
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data?.error;
    throw new ApiProblem(plainWords(response.status, error, response.headers.get("retry-after")),
      `HTTP ${response.status}${error?.code ? ` · ${error.code}` : ""}${error?.message ? ` · ${error.message}` : ""}`);
  }
  return data;
}

// -- status and errors -------------------------------------------------------------------------------------------

function showStatus(message) {
  $("status").textContent = message;
}

function showError(problem) {
  const box = $("error");
  box.replaceChildren();
  const main = document.createElement("p");
  main.className = "error-message";
  main.textContent = problem.message;
  box.append(main);
  if (problem.detail) {
    const detail = document.createElement("p");
    detail.className = "error-detail";
    detail.textContent = problem.detail;
    box.append(detail);
  }
  box.hidden = false;
  if (/^HTTP 401/.test(problem.detail || "")) document.querySelector("details.key").open = true;  // show the key field
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

// -- models ------------------------------------------------------------------------------------------------------

const currentModel = () => state.models.find((m) => m.name === $("model").value) || state.models[0];

function renderModelInfo() {
  const m = currentModel();
  const dl = $("model-info");
  dl.replaceChildren();
  if (!m) return;
  const rows = [
    ["Model", `${m.name} ${m.version}`],
    ["Cell", `${(m.cell || "?").toUpperCase()}, ${m.layers} layer${m.layers === 1 ? "" : "s"}, ${m.directions === 2 ? "bidirectional" : "unidirectional"}, ${m.hidden_size} units`],
    ["Validation accuracy", Number.isFinite(m.validation_accuracy) ? `${(m.validation_accuracy * 100).toFixed(1)}%` : "not recorded"],
    ["Reads", `up to ${m.max_tokens} tokens (${m.truncation})`],
  ];
  for (const [k, v] of rows) {
    const pair = document.createElement("div");
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    pair.append(dt, dd);
    dl.append(pair);
  }
}

async function loadModels(attempt = 0) {
  try {
    const data = await api("v1/models");
    state.models = data.models;
    const select = $("model");
    select.replaceChildren(...data.models.map((m) => new Option(`${m.name} (${m.cell}, ${m.version})`, m.name, false,
      m.name === data.default)));
    $("model-picker-wrap").hidden = data.models.length < 2;
    renderModelInfo();
    clearError();
  } catch (problem) {
    if (problem.name === "AbortError") return;
    showError(problem);
    if (attempt < 10 && /HTTP 503/.test(problem.detail || "")) setTimeout(() => loadModels(attempt + 1), 2000);
  }
}

// -- analysis ----------------------------------------------------------------------------------------------------

async function analyse(event) {
  event?.preventDefault();
  const text = $("text").value;
  const body = { text, diagnostics: true, include_hidden: true, attribution: $("attribution").checked };
  if (state.models.length > 1) body.model = $("model").value;
  const seq = ++state.seq;
  clearError();
  showStatus("Analysing…");
  $("submit").disabled = true;
  $("results").setAttribute("aria-busy", "true");
  try {
    const result = await api("v1/sentiment", body);
    state.result = result;
    state.text = text;
    state.active = null;
    render();
    showStatus(`Done: ${result.label}, P(positive) ${fmt(result.score)}, ${result.num_tokens} tokens.`);
  } catch (problem) {
    if (problem.name === "AbortError") return;
    showStatus("");
    showError(problem);
  } finally {
    if (seq === state.seq) {
      $("submit").disabled = false;
      $("results").removeAttribute("aria-busy");
    }
  }
}

function render() {
  const started = performance.now();
  const r = state.result;
  const d = r.diagnostics;
  $("results").hidden = false;
  $("verdict-label").textContent = r.label;
  $("verdict-label").className = `label ${r.label}`;
  $("verdict-score").textContent = fmt(r.score);
  $("token-count").textContent = String(r.num_tokens);
  const unknown = d.tokens.filter((t) => t.unknown).length;
  $("verdict-model").textContent = `${r.model.name} ${r.model.version}` +
    (unknown ? ` · ${unknown} unknown token${unknown === 1 ? "" : "s"} (${(d.summary.unknown_share * 100).toFixed(0)}%)` : "");
  const m = state.models.find((x) => x.name === r.model.name);
  const note = $("truncated-note");
  note.hidden = !r.truncated;
  note.textContent = r.truncated ? `The review is longer than the model reads: only ${r.num_tokens} tokens were scored` +
    (m ? ` (${m.truncation} truncation, at most ${m.max_tokens}). Skipped parts are marked in the strip.` : ".") : "";
  const hasAttribution = d.tokens.some((t) => Number.isFinite(t.attribution));
  const hasContribution = d.summary.contribution_method != null;
  $("colour-by").hidden = !hasAttribution;
  document.querySelector('input[name="colour-by"][value="contribution"]').disabled = !hasContribution;
  if (!hasAttribution || (!hasContribution && hasAttribution)) {
    document.querySelector(`input[name="colour-by"][value="${hasContribution || !hasAttribution ? "contribution" : "attribution"}"]`).checked = true;
  }
  const contributionNote = $("contribution-note");
  contributionNote.hidden = hasContribution;
  contributionNote.textContent = hasContribution ? "" : `No per-token contributions for this review: ${d.summary.contribution_note || "the model gave none"}.`;
  renderVerdictWhy(r, d);
  renderTopTokens(d);
  renderTokens();
  renderGateSelect(d);
  renderHiddenSelect(d);
  drawCharts();
  // How long the page took to draw this report (read by the page tests; long reviews must stay responsive).
  $("results").dataset.renderMs = String(Math.round(performance.now() - started));
}

const q = (text) => `“${text}”`;
// Two decimals, or three below 0.01 (so a small push does not read "−0.00").
const logodds = (v) => signed(v, Math.abs(v) >= 0.01 ? 2 : 3);

/** The sentence under the verdict: the words that moved the decision most towards the predicted label (by
 * contribution, in log-odds, as ranked by the API's summary), then the strongest ones against it. */
function renderVerdictWhy(r, d) {
  const box = $("verdict-why");
  box.replaceChildren();
  const s = d.summary;
  if (s.contribution_method == null) {
    box.textContent = "The service gave no per-token contributions for this review, so the page cannot say which words decided it.";
    return;
  }
  const positive = r.label === "positive";
  const forIt = (positive ? s.top_positive : s.top_negative).slice(0, 3);
  const against = (positive ? s.top_negative : s.top_positive).slice(0, 2);
  const words = (list) => list.flatMap((t, k) => {
    const word = document.createElement("strong");
    word.textContent = q(t.text);
    const sep = k === list.length - 1 ? "" : k === list.length - 2 ? " and " : ", ";
    return [word, ` (${logodds(t.contribution)})${sep}`];
  });
  if (forIt.length) box.append(`${positive ? "Positive" : "Negative"} mainly because of `, ...words(forIt));
  else box.append(`No single word pushed towards ${r.label}`);
  if (against.length) box.append("; pulling the other way: ", ...words(against));
  box.append(". Contributions in log-odds");
  const method = s.contribution_method === "occlusion" ? ", by occlusion" : "";
  box.append(`${method}.`);
}

function renderTopTokens(d) {
  const box = $("top-tokens");
  box.replaceChildren();
  for (const [title, list] of [["Pushed towards positive (log-odds)", d.summary.top_positive],
    ["Pushed towards negative (log-odds)", d.summary.top_negative]]) {
    if (!list.length) continue;
    const p = document.createElement("p");
    p.append(`${title}: `);
    list.forEach((t, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "linkish";
      b.textContent = `${t.text} (${logodds(t.contribution)})`;
      b.setAttribute("aria-label", `${t.text}, contribution ${signed(t.contribution)} log-odds: show token ${t.index + 1}`);
      b.addEventListener("click", () => focusToken(t.index));
      p.append(b, i < list.length - 1 ? ", " : "");
    });
    box.append(p);
  }
}

// -- token strip -------------------------------------------------------------------------------------------------

/** The colour scale's end, symmetric around 0: the 95th percentile of |value| in log-odds (at least 0.05), so one
 * outlier does not wash out every other token; stronger values take the end colour (the legend says "≤"/"≥"). */
function colourLimit(values) {
  const sorted = values.filter(Number.isFinite).map(Math.abs).sort((x, y) => y - x);
  return Math.max(0.05, sorted[Math.floor(sorted.length * 0.05)] ?? 0);
}

const colourMetric = () => document.querySelector('input[name="colour-by"]:checked').value;

/** Text between two tokens: spacing, cleaned markup, or (when the review was truncated) a part the model skipped. */
function gapNode(gap) {
  const words = gap.replace(/<[^>]*>/g, " ").replace(/&[#\w]+;/g, " ");
  if (/\w/.test(words) && words.trim().length > 3) {
    const span = document.createElement("span");
    span.className = "skipped";
    span.textContent = ` [… ${gap.length.toLocaleString("en")} characters not read by the model …] `;
    return span;
  }
  if (/\n|<br/i.test(gap)) return document.createElement("br");
  return document.createTextNode(gap.length ? " " : "");
}

const exact = (t) => Number.isFinite(t.running_score);
/** Running score before this token: the previous prefix's (0.5 before the first token, as score_delta is defined). */
const scoreBefore = (t) => t.running_score - t.score_delta;

function tokenLabel(t, metric) {
  let label = `Token ${t.index + 1}: ${t.text}${t.unknown ? " (unknown to the model)" : ""}.`;
  if (Number.isFinite(t.contribution)) label += ` Contribution ${signed(t.contribution)} log-odds.`;
  if (exact(t)) label += ` Running score ${fmt(scoreBefore(t))} to ${fmt(t.running_score)} (${signed(t.score_delta)}).`;
  if (Number.isFinite(t.attribution)) label += ` Occlusion attribution ${signed(t.attribution)} log-odds.`;
  if (metric === "attribution") label += " Coloured by attribution.";
  return label;
}

/** Builds the strip once per report, off-document in one fragment (a 5,000-token review is one insertion and one
 * layout, not 5,000); colours are set by colourTokens. */
function renderTokens() {
  const d = state.result.diagnostics;
  const fragment = document.createDocumentFragment();
  const els = new Array(d.tokens.length);
  let cursor = 0;
  d.tokens.forEach((t, i) => {
    fragment.append(gapNode(state.text.slice(cursor, t.start)));
    cursor = t.end;
    const span = document.createElement("span");
    span.className = t.unknown ? "tok unk" : "tok";
    span.textContent = t.text;
    span.tabIndex = i === 0 ? 0 : -1;
    span.dataset.index = String(i);
    span.setAttribute("role", "option");
    span.setAttribute("aria-selected", "false");
    els[i] = span;
    fragment.append(span);
  });
  fragment.append(gapNode(state.text.slice(cursor)));
  state.tokenEls = els;
  $("token-strip").replaceChildren(fragment);
  colourTokens();
}

/** Colours the strip by the chosen metric (contribution or attribution, both in log-odds) and labels each token. */
function colourTokens() {
  const d = state.result.diagnostics;
  const metric = colourMetric();
  const values = d.tokens.map((t) => t[metric]);
  const coloured = values.some(Number.isFinite);
  const limit = colourLimit(values);
  const clipped = values.some((v) => Math.abs(v) > limit);
  // Several tokens share each colour: compute each colour and its ink once (the scale has ~100 visible steps).
  const cache = new Map();
  const paint = (v) => {
    const key = Math.round(Math.max(-1, Math.min(1, v / limit)) * 100);
    if (!cache.has(key)) {
      const background = puor(key / 100);
      cache.set(key, [background, inkOn(background)]);
    }
    return cache.get(key);
  };
  state.tokenEls.forEach((span, i) => {
    const [background, ink] = Number.isFinite(values[i]) ? paint(values[i]) : ["", ""];
    span.style.backgroundColor = background;
    span.style.color = ink;
    span.setAttribute("aria-label", tokenLabel(d.tokens[i], metric));
  });
  const what = metric === "attribution" ? "occlusion attribution" : "contribution to the verdict";
  const s = d.summary;
  let extra = `colour: ${what}, in log-odds`;
  if (metric === "contribution" && s.contribution_method && s.contribution_method !== "occlusion") {
    extra += ` (exact, ${s.contribution_method}: baseline ${signed(s.contribution_baseline)} + the tokens' sum = ` +
      `${signed(s.final_logodds)}, the final log-odds)`;
  } else if (metric === "attribution" || s.contribution_method === "occlusion") {
    extra += " (occlusion: the drop in log-odds when the token is replaced by [UNK]; not additive)";
  }
  const box = $("token-legend");
  if (coloured) legend(box, PUOR, -limit, limit, "towards negative", "towards positive", extra, clipped, "log-odds");
  else box.replaceChildren();
  $("token-strip").setAttribute("aria-label", coloured
    ? `Review tokens, coloured by ${what} in log-odds. Use the arrow keys to move between tokens.`
    : "Review tokens (not coloured: no contributions for this review). Use the arrow keys to move between tokens.");
}

const tokenEl = (i) => (i === null || i === undefined ? undefined : state.tokenEls[i]);

function focusToken(i) {
  const el = tokenEl(i);
  if (!el) return;
  $("token-strip").querySelectorAll('.tok[tabindex="0"]').forEach((x) => { x.tabIndex = -1; });
  el.tabIndex = 0;
  el.focus();
}

function tipContent(t) {
  const d = state.result.diagnostics;
  const rows = [
    ["Token", `${t.text}${t.token && t.token !== t.text ? ` → ${t.token}` : ""}${t.unknown ? " (unknown)" : ""}`],
  ];
  const method = d.summary.contribution_method;
  rows.push(["Contribution", Number.isFinite(t.contribution)
    ? `${signed(t.contribution)} log-odds${method === "occlusion" ? " (occlusion)" : ""}` : "not computed"]);
  // Only an exact model has a prefix reading; a bidirectional one's "running score" would not be one.
  if (exact(t)) rows.push(["Score before → after", `${fmt(scoreBefore(t))} → ${fmt(t.running_score)} (${signed(t.score_delta)})`]);
  if (Number.isFinite(t.attribution)) rows.push(["Occlusion attribution", `${signed(t.attribution)} log-odds`]);
  for (const layer of d.layers) {
    const gates = Object.entries(layer.gate_mean).map(([g, v]) => `${g} ${fmt(v[t.index], 2)}`).join(", ");
    rows.push([`L${layer.layer} ${layer.direction}`,
      `‖h‖ ${fmt(layer.hidden_norm[t.index], 2)}, ‖Δh‖ ${fmt(layer.delta_norm[t.index], 2)}${gates ? `; gates: ${gates}` : ""}`]);
  }
  const table = document.createElement("dl");
  for (const [k, v] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    table.append(dt, dd);
  }
  return table;
}

function showTip(i) {
  const tip = $("token-tip");
  const el = tokenEl(i);
  if (i === null || !el) {
    tip.hidden = true;
    return;
  }
  tip.replaceChildren(tipContent(state.result.diagnostics.tokens[i]));
  tip.hidden = false;
  const host = tip.offsetParent || document.body;
  const hostBox = host.getBoundingClientRect();
  const box = el.getBoundingClientRect();
  const left = Math.max(4, Math.min(box.left - hostBox.left, hostBox.width - tip.offsetWidth - 4));
  tip.style.left = `${left}px`;
  tip.style.top = `${box.bottom - hostBox.top + 6}px`;
}

/** Highlights token i everywhere: strip, tooltip, chart cursors and readouts (null clears). */
function setActive(i, fromStrip = false) {
  state.active = i;
  $("token-strip").querySelectorAll(".tok.current").forEach((x) => {
    x.classList.remove("current");
    x.setAttribute("aria-selected", "false");
  });
  if (i !== null) {
    tokenEl(i)?.classList.add("current");
    tokenEl(i)?.setAttribute("aria-selected", "true");
  }
  if (fromStrip) showTip(i);
  for (const chart of state.charts) chart.setCursor(i);
  const d = state.result.diagnostics;
  const t = i === null ? null : d.tokens[i];
  $("score-readout").textContent = t && exact(t)
    ? `Token ${i + 1} “${t.text}”: running score ${fmt(t.running_score)} (${signed(t.score_delta)})` : "";
  const gate = $("gate-select").value;
  $("gate-readout").textContent = t && gate ? `Token ${i + 1} “${t.text}”, ${gate} gate: ` +
    d.layers.map((l) => `L${l.layer} ${l.direction} ${fmt(l.gate_mean[gate]?.[i], 3)}`).join(", ") : "";
}

function stripKeys(event) {
  const n = state.result?.diagnostics.tokens.length || 0;
  const current = Number(event.target.dataset?.index ?? -1);
  if (current < 0) return;
  const moves = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1, PageDown: 10, PageUp: -10 };
  let next = null;
  if (event.key in moves) next = Math.max(0, Math.min(n - 1, current + moves[event.key]));
  else if (event.key === "Home") next = 0;
  else if (event.key === "End") next = n - 1;
  else if (event.key === "Escape") {
    $("token-tip").hidden = true;
    return;
  }
  if (next === null) return;
  event.preventDefault();
  focusToken(next);
}

// -- charts ------------------------------------------------------------------------------------------------------

function renderGateSelect(d) {
  const select = $("gate-select");
  const previous = select.value;
  const gates = d.gates || [];
  select.replaceChildren(...gates.map((g) => new Option(g, g)));
  const preferred = [previous, "forget", "update"].find((g) => gates.includes(g));
  if (preferred) select.value = preferred;
  select.disabled = !gates.length;
}

function renderHiddenSelect(d) {
  const select = $("hidden-block");
  const previous = select.value;
  const blocks = d.hidden?.layers || [];
  select.replaceChildren(...blocks.map((b, k) => new Option(`${b.layer} · ${b.direction}`, String(k))));
  if (previous && Number(previous) < blocks.length) select.value = previous;
}

function describeScore(tokens, r) {
  if (!tokens.length) return "No tokens.";
  const scores = tokens.map((t) => t.running_score);
  let lo = 0;
  let hi = 0;
  scores.forEach((v, i) => {
    if (v < scores[lo]) lo = i;
    if (v > scores[hi]) hi = i;
  });
  return `Running score over ${tokens.length} tokens: starts at ${fmt(scores[0])} after “${tokens[0].text}”, ` +
    `lowest ${fmt(scores[lo])} at “${tokens[lo].text}” (token ${lo + 1}), highest ${fmt(scores[hi])} at “${tokens[hi].text}” ` +
    `(token ${hi + 1}), ends at ${fmt(r.score)}: ${r.label}.`;
}

/** The running score, only where it is a real reading of each prefix; otherwise the service's reason, in its place. */
function drawScoreChart(d, r, labels) {
  const note = $("score-note");
  const box = $("score-chart");
  const isExact = d.summary.running_score_method != null && d.tokens.every(exact);
  const approximate = d.summary.running_score_method === "approximate";
  note.hidden = isExact && !approximate;
  if (!isExact) {
    note.textContent = `No running score for this model: ${d.summary.running_score_note || "the service gave none"}. ` +
      "A line here would not be what the model reads up to each token, so none is drawn.";
    box.replaceChildren();
    return null;
  }
  // int8 models: the line is within ~0.005 of scoring each prefix alone (activation scales are computed per call).
  note.textContent = approximate ? "Approximate running score (int8 model): each point is within about 0.005 of " +
    "scoring that prefix alone." : "";
  return lineChart(box, {
    series: [{ name: "running score", values: d.tokens.map((t) => t.running_score), colour: "#542788", dash: "" }],
    labels, yMin: 0, yMax: 1, baseline: 0.5, endLabel: `${fmt(r.score)} ${r.label}`,
    title: "Running score across the review", description: describeScore(d.tokens, r),
    onHover: (i) => setActive(i),
  });
}

function drawSaturation(d) {
  const box = $("saturation-chart");
  const gates = d.gates || [];
  if (!gates.length) {
    box.replaceChildren(Object.assign(document.createElement("p"), { className: "muted", textContent: `This cell (${d.cell}) has no gates.` }));
    return;
  }
  const mean = (xs) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const groups = d.layers.map((l) => ({
    name: `L${l.layer} ${l.direction === "forward" ? "fwd" : "bwd"}`,
    bars: gates.map((g, k) => ({ name: g, value: mean(l.gate_saturation[g] || []), colour: SERIES[k % SERIES.length] })),
  }));
  const pct = (v, digits) => `${(v * 100).toFixed(digits)}%`;
  const description = groups.map((g) => `${g.name}: ${g.bars.map((b) => `${b.name} ${pct(b.value, 1)}`).join(", ")}`).join("; ");
  barChart(box, { groups, title: "Share of saturated gate units per layer and direction", description: `${description}.`, format: pct });
}

function drawGateChart(d, labels) {
  const box = $("gate-chart");
  const gate = $("gate-select").value;
  if (!gate) {
    box.replaceChildren(Object.assign(document.createElement("p"), { className: "muted", textContent: `This cell (${d.cell}) has no gates.` }));
    return null;
  }
  const series = d.layers.map((l) => ({ name: `L${l.layer} ${l.direction}`, values: l.gate_mean[gate] }));
  const description = series.map((s) => `${s.name}: mean ${fmt(s.values.reduce((a, b) => a + b, 0) / s.values.length)}, ` +
    `from ${fmt(s.values.reduce((a, b) => Math.min(a, b)))} to ${fmt(s.values.reduce((a, b) => Math.max(a, b)))}`).join("; ");
  const chart = lineChart(box, { series, labels, yMin: 0, yMax: 1, title: `Mean ${gate} gate at each token`,
    description: `${description}.`, onHover: (i) => setActive(i) });
  const key = document.createElement("ul");
  key.className = "series-key";
  series.forEach((s, k) => {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = `swatch dash-${k % 6}`;
    sw.style.borderColor = SERIES[k % SERIES.length];
    sw.setAttribute("aria-hidden", "true");
    li.append(sw, s.name);
    key.append(li);
  });
  box.append(key);
  return chart;
}

function drawHeatmap(d) {
  const block = d.hidden?.layers?.[Number($("hidden-block").value || 0)];
  const canvas = $("heatmap");
  if (!block) return null;
  const n = block.values.length;
  const rank = $("hidden-rank").value;
  const count = Number($("hidden-count").value);
  const units = block.units.map((unit, k) => {
    const col = block.values.map((row) => row[k]);
    const mean = col.reduce((a, b) => a + b, 0) / n;
    const score = rank === "std" ? Math.sqrt(col.reduce((a, b) => a + (b - mean) ** 2, 0) / n)
      : col.reduce((a, b) => a + Math.abs(b), 0) / n;
    return { label: `u${unit}`, values: col, score };
  });
  units.sort((a, b) => b.score - a.score);
  const rows = units.slice(0, count);
  // Loops, not Math.max(...spread): a long review has more values than a call may take arguments.
  let lowest = Infinity;
  let highest = -Infinity;
  for (const row of rows) {
    for (const v of row.values) {
      if (v < lowest) lowest = v;
      if (v > highest) highest = v;
    }
  }
  const limit = Math.max(0.05, Math.abs(lowest), Math.abs(highest));
  const onHover = (c, r) => {
    if (c !== null) setActive(c);
    $("heatmap-readout").textContent = c !== null && r !== null
      ? `Unit ${rows[r].label.slice(1)}, token ${c + 1} “${d.tokens[c].text}”: ${fmt(rows[r].values[c])}` : "";
  };
  const chart = heatmap(canvas, $("heatmap-cursor"), { rows, columns: d.tokens.map((t) => t.text), limit, palette: RDBU, onHover });
  const capped = d.hidden.capped ? ` The service sent ${block.units.length} of ${block.size} units (the most varying).` : "";
  const what = rank === "std" ? "most varying" : "most active";
  legend($("heatmap-legend"), RDBU, -limit, limit, "activation", "", `rows: the ${rows.length} ${what} of ${block.size} units${capped ? "; capped by the service" : ""}`);
  const peak = rows[0];
  canvas.setAttribute("aria-label", `Heatmap of the ${rows.length} ${what} hidden units of layer ${block.layer} ` +
    `${block.direction} over ${n} tokens, values from ${fmt(lowest)} to ${fmt(highest)}. The top unit, ${peak?.label}, ` +
    `ranges from ${fmt(peak ? peak.values.reduce((a, b) => Math.min(a, b)) : 0)} to ` +
    `${fmt(peak ? peak.values.reduce((a, b) => Math.max(a, b)) : 0)}.${capped}`);
  return chart;
}

function drawCharts() {
  if (!state.result) return;
  const r = state.result;
  const d = r.diagnostics;
  const labels = d.tokens.map((t) => t.text);
  state.charts = [drawScoreChart(d, r, labels), drawGateChart(d, labels), drawHeatmap(d)].filter(Boolean);
  drawSaturation(d);
  if (state.active !== null) setActive(state.active);
}

// -- wiring ------------------------------------------------------------------------------------------------------

function init() {
  const examples = $("examples");
  for (const [name, text] of EXAMPLES) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = name;
    b.addEventListener("click", () => {
      $("text").value = text;
      analyse();
    });
    examples.append(b);
  }
  $("review-form").addEventListener("submit", analyse);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) analyse(e);
  });
  $("model").addEventListener("change", renderModelInfo);
  $("api-key").addEventListener("change", () => loadModels());  // a key was entered after a 401: try again with it
  document.querySelectorAll('input[name="colour-by"]').forEach((x) => x.addEventListener("change", colourTokens));
  for (const id of ["gate-select", "hidden-block", "hidden-rank", "hidden-count"]) $(id).addEventListener("change", drawCharts);

  const strip = $("token-strip");
  const indexOf = (e) => (e.target.dataset?.index !== undefined ? Number(e.target.dataset.index) : null);
  strip.addEventListener("keydown", stripKeys);
  strip.addEventListener("focusin", (e) => indexOf(e) !== null && setActive(indexOf(e), true));
  strip.addEventListener("focusout", () => { $("token-tip").hidden = true; });
  strip.addEventListener("mouseover", (e) => indexOf(e) !== null && setActive(indexOf(e), true));
  strip.addEventListener("mouseleave", () => {
    if (!strip.contains(document.activeElement)) $("token-tip").hidden = true;
  });

  let pending = 0;
  let lastWidth = 0;
  new ResizeObserver((entries) => {
    const width = Math.round(entries[0].contentRect.width);
    if (width === lastWidth) return;
    lastWidth = width;
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(drawCharts);
  }).observe($("results"));
  loadModels();
}

init();
