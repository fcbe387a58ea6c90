// Ringback supervisor reports: the dated funnel, conversions by dimension, segment
// sizes. Plain JS, no build step, no CDN. Charts are inline SVG built with
// createElementNS; every server value goes in with textContent or as a number in an
// attribute, never as markup. Colours come from app.css (classes), so the page's
// Content-Security-Policy (no inline style) holds.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const SVG = "http://www.w3.org/2000/svg";
  const DAY_MS = 86400000;
  const STAGES = ["fired", "claimed", "connected", "converted"];
  const SERIES = 6; // .s0 .. .s5 in app.css; more segments reuse them
  const report = { shown: false, gen: 0 };

  async function get(path) {
    const res = await fetch(path, { credentials: "same-origin" });
    let data = null;
    try { data = await res.json(); } catch (_) { /* not JSON */ }
    return { status: res.status, data };
  }

  function svg(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  const utcDay = (ms) => new Date(ms).toISOString().slice(0, 10);
  const pct = (x) => (typeof x === "number" ? `${(x * 100).toFixed(1)}%` : "—");
  const pp = (x) => `${x < 0 ? "-" : "+"}${Math.abs(x * 100).toFixed(1)}`;

  function query(extra) {
    const form = $("#reports-form");
    return new URLSearchParams({ from: form.from.value, to: form.to.value, ...extra });
  }

  // --- funnel ---------------------------------------------------------------------------
  function funnelRow(r, cls) {
    const tr = document.createElement("tr");
    tr.dataset.name = r.name;
    if (cls) tr.className = cls;
    tr.append(cell(r.name), cell(String(r.fired)), cell(String(r.due)), cell(String(r.claimed)),
      cell(String(r.claimed_in_sla)), cell(pct(r.sla_attainment)),
      cell(String(r.connected)), cell(String(r.converted)));
    return tr;
  }

  // Per rule, one bar a stage on a common scale (the largest fired count fills the
  // track), at whole pixels so a bar's area is its value's share of the scale.
  function drawFunnel(chart, rows) {
    const label = 130, track = 260, bar = 8, gap = 2, group = STAGES.length * (bar + gap) + 10;
    const max = Math.max(1, ...rows.map((r) => r.fired));
    chart.replaceChildren();
    chart.setAttribute("width", label + track + 50);
    chart.setAttribute("height", Math.max(group, rows.length * group) + 4);
    rows.forEach((r, i) => {
      const top = i * group + 4;
      const g = svg("g", { "data-rule": r.name });
      g.append(svg("text", { x: 0, y: top + 12 }, r.name));
      STAGES.forEach((stage, j) => {
        const width = Math.round((r[stage] / max) * track);
        const y = top + j * (bar + gap);
        const rect = svg("rect", {
          class: stage, x: label, y, width, height: bar, "shape-rendering": "crispEdges",
          "data-stage": stage, "data-value": r[stage],
        });
        rect.append(svg("title", {}, `${stage}: ${r[stage]}`));
        g.append(rect, svg("text", { x: label + width + 4, y: y + bar }, String(r[stage])));
      });
      chart.append(g);
    });
    chart.append(svg("line", { class: "axis", x1: label - 1, x2: label - 1, y1: 0,
      y2: chart.getAttribute("height"), "shape-rendering": "crispEdges" }));
  }

  async function loadFunnel(gen) {
    const q = query({ sla_s: $("#reports-form").sla_s.value });
    const { status, data } = await get(`/v1/reports/funnel?${q}`);
    if (gen !== report.gen) return;
    if (status !== 200 || !data) throw new Error(`funnel: ${status}`);
    const body = $("#report-funnel tbody");
    body.replaceChildren(...data.rows.map((r) => funnelRow(r)), funnelRow(data.total, "total"));
    drawFunnel($("#report-funnel-chart"), data.rows);
    q.set("format", "csv");
    $("#report-funnel-csv").href = `/v1/reports/funnel?${q}`;
  }

  // --- conversions ----------------------------------------------------------------------
  function conversionRow(r) {
    const tr = document.createElement("tr");
    tr.dataset.name = r.name;
    const up = typeof r.uplift === "number"
      ? `${pp(r.uplift)} pp${r.ci95 ? ` (${pp(r.ci95[0])} to ${pp(r.ci95[1])})` : ""}`
      : "—";
    tr.append(cell(r.name), cell(String(r.treated.decisions)),
      cell(String(r.treated.conversions)), cell(pct(r.treated.rate)),
      cell(String(r.holdout.decisions)), cell(String(r.holdout.conversions)),
      cell(pct(r.holdout.rate)), cell(up));
    return tr;
  }

  function drawConversions(chart, rows) {
    const label = 130, track = 260, bar = 10, gap = 2, group = 2 * (bar + gap) + 10;
    const max = Math.max(0.0001, ...rows.flatMap((r) => [r.treated.rate || 0, r.holdout.rate || 0]));
    chart.replaceChildren();
    chart.setAttribute("width", label + track + 60);
    chart.setAttribute("height", Math.max(group, rows.length * group) + 4);
    rows.forEach((r, i) => {
      const top = i * group + 4;
      const g = svg("g", { "data-name": r.name });
      g.append(svg("text", { x: 0, y: top + 12 }, r.name));
      ["treated", "holdout"].forEach((cohort, j) => {
        const rate = r[cohort].rate || 0;
        const width = Math.round((rate / max) * track);
        const y = top + j * (bar + gap);
        const rect = svg("rect", { class: cohort, x: label, y, width, height: bar,
          "shape-rendering": "crispEdges", "data-cohort": cohort, "data-rate": rate });
        rect.append(svg("title", {}, `${cohort}: ${pct(r[cohort].rate)}`));
        g.append(rect, svg("text", { x: label + width + 4, y: y + bar }, pct(r[cohort].rate)));
      });
      chart.append(g);
    });
  }

  async function loadConversions(gen) {
    const q = query({ by: $("#report-conversions-by").value });
    const { status, data } = await get(`/v1/reports/conversions?${q}`);
    if (gen !== report.gen) return;
    if (status !== 200 || !data) throw new Error(`conversions: ${status}`);
    $("#report-conversions tbody").replaceChildren(...data.rows.map(conversionRow));
    drawConversions($("#report-conversions-chart"), data.rows);
    q.set("format", "csv");
    $("#report-conversions-csv").href = `/v1/reports/conversions?${q}`;
  }

  // --- segment sizes --------------------------------------------------------------------
  function drawSegments(chart, legend, segments) {
    const w = 640, h = 180, left = 40, bottom = 20;
    chart.replaceChildren();
    legend.replaceChildren();
    chart.setAttribute("width", w);
    chart.setAttribute("height", h);
    const ids = Object.keys(segments);
    if (!ids.length) {
      chart.append(svg("text", { x: left, y: h / 2 }, "No segment counts in this range."));
      return;
    }
    const n = Math.max(1, ...ids.map((id) => segments[id].length));
    const max = Math.max(1, ...ids.flatMap((id) => segments[id].map((d) => d.members)));
    const x = (i) => left + (n === 1 ? 0 : (i / (n - 1)) * (w - left - 10));
    const y = (v) => h - bottom - (v / max) * (h - bottom - 10);
    chart.append(
      svg("line", { class: "axis", x1: left, x2: w - 10, y1: h - bottom, y2: h - bottom }),
      svg("line", { class: "axis", x1: left, x2: left, y1: 10, y2: h - bottom }),
      svg("text", { x: 0, y: 14 }, String(max)),
      svg("text", { x: 0, y: h - bottom }, "0"),
    );
    const days = segments[ids[0]];
    if (days.length) {
      chart.append(svg("text", { x: left, y: h - 4 }, days[0].day),
        svg("text", { x: w - 80, y: h - 4 }, days[days.length - 1].day));
    }
    ids.forEach((id, k) => {
      const points = segments[id].map((d, i) => `${x(i).toFixed(1)},${y(d.members).toFixed(1)}`);
      const line = svg("polyline", { class: `line s${k % SERIES}`, points: points.join(" "),
        "data-segment": id });
      line.append(svg("title", {}, id));
      chart.append(line);
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = `swatch s${k % SERIES}`;
      item.append(swatch, document.createTextNode(id));
      legend.append(item);
    });
  }

  async function loadSegments(gen) {
    const q = query({});
    const { status, data } = await get(`/v1/reports/segments?${q}`);
    if (gen !== report.gen) return;
    if (status !== 200 || !data) throw new Error(`segments: ${status}`);
    drawSegments($("#report-segments-chart"), $("#report-segments-legend"), data.segments || {});
    q.set("format", "csv");
    $("#report-segments-csv").href = `/v1/reports/segments?${q}`;
  }

  // --- the section ----------------------------------------------------------------------
  async function load(parts) {
    const gen = ++report.gen; // a newer load wins: an older answer is dropped
    const status = $("#reports-status");
    status.textContent = "Loading…";
    try {
      await Promise.all(parts.map((part) => part(gen)));
      if (gen === report.gen) status.textContent = "";
    } catch (err) {
      if (gen === report.gen) status.textContent = `Reports unavailable (${err.message})`;
    }
    if (gen === report.gen) $("#reports-section").dataset.loaded = String(gen);
  }

  const all = [loadFunnel, loadConversions, loadSegments];

  // Shown with the supervisor's section: app.js decides who is a supervisor.
  function sync() {
    const visible = !$("#supervisor-section").hidden;
    $("#reports-section").hidden = !visible;
    if (visible && !report.shown) {
      report.shown = true;
      const form = $("#reports-form");
      if (!form.to.value) form.to.value = utcDay(Date.now());
      if (!form.from.value) form.from.value = utcDay(Date.now() - 29 * DAY_MS);
      load(all);
    } else if (!visible && report.shown) {
      report.shown = false;
      report.gen += 1;
      for (const id of ["#report-funnel tbody", "#report-conversions tbody",
        "#report-funnel-chart", "#report-conversions-chart", "#report-segments-chart",
        "#report-segments-legend"]) $(id).replaceChildren();
    }
  }

  $("#reports-form").addEventListener("submit", (ev) => { ev.preventDefault(); load(all); });
  $("#report-conversions-by").addEventListener("change", () => load([loadConversions]));
  new MutationObserver(sync).observe($("#supervisor-section"),
    { attributes: true, attributeFilter: ["hidden"] });
  sync();
})();
