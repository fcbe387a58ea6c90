// Ringback contact-center dashboard. Plain JS, no build step.
// Every value from the server is rendered with textContent (never innerHTML): a page
// title or an offer text containing markup shows as text.
"use strict";

(() => {
  const $ = (sel) => document.querySelector(sel);
  const state = { user: null, role: null, csrf: null, triggers: new Map(), ws: null };
  const SLA_MS = 5 * 60 * 1000; // a callback waiting longer than this is late
  // Only phone callbacks are agents' work. An e-mail/SMS fallback (a do-not-call
  // customer's "call me") is a notification for webhooks: never listed, never claimable.
  // The gateway already keeps them off this page; this is the page's own guard.
  const isPhoneWork = (t) => t && t.kind === "callback" && (t.channel ?? "callback") === "callback";

  async function api(method, path, body) {
    const headers = { "Content-Type": "application/json" };
    if (state.csrf && method !== "GET") headers["X-CSRF-Token"] = state.csrf;
    const res = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await res.json(); } catch (_) { /* empty body */ }
    return { status: res.status, data };
  }

  function show(id, visible) { $(id).hidden = !visible; }

  function signedIn(me) {
    state.user = me.user; state.role = me.role; state.csrf = me.csrf_token || state.csrf;
    $("#whoami").textContent = `${me.user} (${me.role})`;
    show("#signin", false); show("#signout", true);
    show("#queue-section", true); show("#customer-section", true);
    show("#supervisor-section", me.role === "supervisor");
    connect();
    if (me.role === "supervisor") refreshFunnel();
  }

  function signedOut() {
    state.user = state.csrf = null;
    if (state.ws) state.ws.close();
    $("#whoami").textContent = "";
    uplift.rules = null; uplift.gen += 1; $("#uplift").replaceChildren();
    show("#signin", true); show("#signout", false);
    for (const id of ["#queue-section", "#customer-section", "#supervisor-section"]) show(id, false);
    $("#signin-form input[name=user]").focus();
  }

  // --- live queue -------------------------------------------------------------------
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/v1/triggers/ws`);
    state.ws = ws;
    ws.onopen = () => { $("#connection").textContent = "Live"; };
    ws.onclose = () => {
      $("#connection").textContent = "Reconnecting…";
      if (state.user) setTimeout(connect, 1000);
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.kind === "snapshot") {
        state.triggers.clear();
        for (const t of msg.triggers) if (isPhoneWork(t)) state.triggers.set(t.id, t);
        if (state.role === "supervisor") refreshFunnel(); // this agent now counts online
      } else if (isPhoneWork(msg)) {
        state.triggers.set(msg.id, msg);
      } else if (msg.kind === "claimed") {
        const t = state.triggers.get(msg.trigger_id);
        if (t) t.claimed_by = msg.by;
      } else if (msg.kind === "completed" || msg.kind === "withdrawn") {
        state.triggers.delete(msg.trigger_id);
      } else if (msg.kind === "presence") {
        const t = state.triggers.get(msg.trigger_id);
        if (t) t.online = msg.online;
      }
      render();
    };
  }

  // A callback decided outside contact-center hours waits for the next opening: it is
  // due from then on, and its SLA timer starts then.
  const dueAt = (t) => Math.max(Number(t.created_ms) || 0, Number(t.scheduled_for) || 0);

  function sorted() {
    // Due now before scheduled for later; then most urgent first (higher priority
    // number), then the longest waiting (SLA).
    const now = Date.now();
    return [...state.triggers.values()].sort((a, b) =>
      (dueAt(a) > now) - (dueAt(b) > now) ||
      (Number(b.priority) || 0) - (Number(a.priority) || 0) ||
      dueAt(a) - dueAt(b));
  }

  function fmtAge(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  // The card's one-line summary. A calculator the call guide quotes is left to the
  // guide; any other is still shown in the site's locale and currency, never as raw
  // figures ("400000 over 300 months").
  function describeContext(ctx, guide) {
    if (!ctx || typeof ctx !== "object") return "";
    const parts = [];
    const calc = ctx.calc || ctx.calculator;
    const quoted = new Set(((guide && guide.quotes) || []).map((q) => q.product));
    if (calc && typeof calc === "object") {
      const f = formats(guide || {});
      for (const [product, c] of Object.entries(calc)) {
        if (c && typeof c === "object" && c.amount !== undefined && !quoted.has(product)) {
          const term = Number(c.term_months) > 0 ? ` over ${fmtTerm(Number(c.term_months))}` : "";
          parts.push(`${product}: ${f.money.format(Number(c.amount))}${term}`);
        }
      }
    }
    if (Array.isArray(ctx.pages)) parts.push(`pages: ${ctx.pages.slice(0, 3).join(", ")}`);
    if (ctx.offer && ctx.offer.title) parts.push(`offer shown: ${ctx.offer.title}`);
    return parts.join(" · ");
  }

  // --- call guide ---------------------------------------------------------------------
  // The server sends numbers with the site's locale and currency; they are formatted
  // here, in the agent's browser (Intl), and put on the page as text only.
  function formats(guide) {
    const locale = guide.locale || "en-GB";
    const currency = guide.currency || "EUR";
    const make = (loc) => ({
      money: new Intl.NumberFormat(loc, { style: "currency", currency }),
      rate: new Intl.NumberFormat(loc, { style: "percent", minimumFractionDigits: 2, maximumFractionDigits: 2 }),
      whole: new Intl.NumberFormat(loc, { style: "percent", maximumFractionDigits: 0 }),
      when: (ms) => new Date(Number(ms)).toLocaleString(loc, {
        weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" }),
      loc,
    });
    try { return make(locale); } catch (_) { return make("en-GB"); } // a bad tag: still show
  }

  const fmtTerm = (m) => (m % 12 === 0 ? `${m / 12} year${m === 12 ? "" : "s"}` : `${m} months`);

  function quoteLines(q, f) {
    const lines = [];
    const money = (x) => f.money.format(Number(x));
    lines.push(["quote", `Quote (${q.label}): ${money(q.amount)} over ${fmtTerm(q.term_months)} at ` +
      `${f.rate.format(q.rate_pct / 100)} = ${money(q.monthly)}/month`]);
    let detail = `Total repayable ${money(q.total)} (interest ${money(q.interest)})`;
    if (q.term_months !== q.visitor_term_months) {
      detail += `; the visitor asked for ${fmtTerm(q.visitor_term_months)}`;
    }
    lines.push(["detail", detail]);
    if (q.visitor_monthly !== null && q.visitor_monthly !== undefined) {
      const rate = q.visitor_rate_pct === null || q.visitor_rate_pct === undefined
        ? "" : ` at ${f.rate.format(q.visitor_rate_pct / 100)}`;
      // No difference when the bank quoted another term: the two are not comparable.
      let vs = "";
      if (q.monthly_difference !== null && q.monthly_difference !== undefined) {
        const diff = Number(q.monthly_difference) || 0;
        const sign = diff > 0 ? "+" : diff < 0 ? "−" : "±";
        vs = ` (bank ${sign}${money(Math.abs(diff))})`;
      }
      lines.push(["visitor", `Visitor's own figure${rate}: ${money(q.visitor_monthly)}/month${vs}`]);
    }
    const c = q.changed;
    if (c && Array.isArray(c.fields) && c.fields.length) {
      const show = (k, v) => (v === null || v === undefined ? "?" : k === "amount" ? money(v) : fmtTerm(v));
      const what = c.fields.map((k) =>
        `${k === "amount" ? "amount" : "term"} ${show(k, c.before[k])} → ${show(k, c.after[k])}`).join(", ");
      // The profile knows the last calculation with the old figures (before_ms) and the
      // newest one (at_ms): the change happened between them, so say so unless they
      // are within a minute (a visitor who recalculated the new figures later would
      // otherwise read as having changed them then).
      let when = "";
      if (c.at_ms && c.before_ms && Number(c.at_ms) - Number(c.before_ms) > 60000) {
        when = ` between ${f.when(c.before_ms)} and ${f.when(c.at_ms)}`;
      } else if (c.at_ms) {
        when = ` at ${f.when(c.at_ms)}`;
      }
      lines.push(["changed", `Changed ${what}${when}`]);
    }
    return lines;
  }

  // The guide as a list of text lines; `el` is emptied and refilled only when the
  // guide changed (the card is updated every second).
  const drawnGuides = new WeakMap();
  function renderGuide(el, guide) {
    const key = guide ? JSON.stringify(guide) : "";
    if (drawnGuides.get(el) === key) return;
    drawnGuides.set(el, key);
    el.replaceChildren();
    if (!guide || typeof guide !== "object") return;
    const f = formats(guide);
    const lines = [];
    for (const q of guide.quotes || []) lines.push(...quoteLines(q, f));
    const w = guide.why || {};
    const parts = [];
    if (w.reason) parts.push(w.reason);
    if (typeof w.propensity === "number") parts.push(`propensity ${f.whole.format(w.propensity)}`);
    if (guide.offer && guide.offer.title) {
      lines.push(["offer", `Offer: ${guide.offer.title}${parts.length ? ` — why: ${parts.join(", ")}` : ""}`]);
    } else if (parts.length) {
      lines.push(["offer", `Why: ${parts.join(", ")}`]);
    }
    for (const [cls, text] of lines) {
      const p = document.createElement("p");
      p.className = `guide-${cls}`;
      p.textContent = text;
      el.append(p);
    }
  }

  // Items are keyed by trigger id and updated in place, so the element under the
  // agent's pointer or keyboard focus is never replaced by the 1-second timer.
  const items = new Map();

  function build(t) {
    const li = $("#trigger-template").content.firstElementChild.cloneNode(true);
    li.dataset.id = t.id;
    const status = li.querySelector(".status");
    li.querySelector(".claim").addEventListener("click", () => claimTrigger(t.id, status));
    li.querySelector(".complete").addEventListener("click", () =>
      completeTrigger(t.id, li.querySelector(".outcome").value, status));
    li.querySelector(".open").addEventListener("click", () => {
      const cur = state.triggers.get(t.id);
      if (cur && cur.customer_id) openCustomer(cur.customer_id);
    });
    return li;
  }

  function update(li, t, now) {
    li.querySelector(".customer").textContent = t.customer_id || t.anonymous_id || "visitor";
    const vip = t.vip === "true" || t.vip === true;
    const pr = li.querySelector(".priority");
    pr.textContent = vip ? "VIP" : `priority ${t.priority ?? "-"}`;
    pr.classList.toggle("vip", vip);
    const due = dueAt(t) || now;
    const sla = li.querySelector(".sla");
    if (due > now) {
      sla.textContent = `scheduled ${new Date(due).toLocaleString([], {
        weekday: "short", hour: "2-digit", minute: "2-digit" })}`;
      sla.classList.remove("late");
    } else {
      sla.textContent = fmtAge(now - due);
      sla.classList.toggle("late", now - due > SLA_MS);
    }
    li.classList.toggle("scheduled", due > now);
    const online = t.online === true || t.online === "true";
    const pres = li.querySelector(".presence");
    pres.textContent = online ? "online now" : "offline";
    pres.classList.toggle("online", online);
    li.querySelector(".reason").textContent = t.reason || t.rule || "";
    li.querySelector(".context").textContent = describeContext(t.context, t.call_guide);
    renderGuide(li.querySelector(".guide"), t.call_guide);
    const mine = Boolean(t.claimed_by) && t.claimed_by === state.user;
    li.classList.toggle("claimed", Boolean(t.claimed_by));
    li.classList.toggle("mine", mine);
    li.querySelector(".claim").hidden = Boolean(t.claimed_by);
    if (t.claimed_by) {
      li.querySelector(".status").textContent = mine ? "claimed by you" : `taken by ${t.claimed_by}`;
    }
    li.querySelector(".outcome-label").hidden = !mine;
    li.querySelector(".complete").hidden = !mine;
  }

  function render() {
    const now = Date.now();
    for (const [id, t] of state.triggers) {
      if (Number(t.expires_ms) && Number(t.expires_ms) < now) state.triggers.delete(id);
    }
    const order = sorted();
    const floor = floorModel(order, now);
    $("#queue-depth").textContent = floor.scheduled.length
      ? `(${floor.waiting.length} waiting, ${floor.scheduled.length} scheduled)`
      : `(${floor.waiting.length} waiting)`;
    if (state.role === "supervisor") renderFloor(floor, now);
    for (const [id, li] of items) {
      if (!state.triggers.has(id)) { li.remove(); items.delete(id); }
    }
    const list = $("#queue");
    let prev = null;
    for (const t of order) {
      let li = items.get(t.id);
      if (!li) { li = build(t); items.set(t.id, li); }
      update(li, t, now);
      const want = prev ? prev.nextSibling : list.firstChild;
      if (want !== li) list.insertBefore(li, want);
      prev = li;
    }
  }

  async function claimTrigger(id, status) {
    const { status: code, data } = await api("POST", `/v1/triggers/${id}/claim`);
    const t = state.triggers.get(id);
    if (code === 200 && t) t.claimed_by = state.user;
    else if (code === 409 && t) t.claimed_by = (data?.error?.message || "").replace("already claimed by ", "") || "another agent";
    else if (code === 410) state.triggers.delete(id);
    else status.textContent = data?.error?.message || `error ${code}`;
    render();
  }

  async function completeTrigger(id, outcome, status) {
    const { status: code, data } = await api("POST", `/v1/triggers/${id}/complete`, { outcome });
    if (code === 200) state.triggers.delete(id);
    else status.textContent = data?.error?.message || `error ${code}`;
    render();
  }

  // --- customer panel -----------------------------------------------------------------
  function dl(pairs) {
    const list = document.createElement("dl");
    for (const [k, v] of pairs) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = v;
      list.append(dt, dd);
    }
    return list;
  }

  async function openCustomer(id) {
    const { status, data } = await api("GET", `/v1/customers/${encodeURIComponent(id)}/context`);
    showCustomer(status, data);
  }

  // An inbound call: the number as the agent typed it ("+44 20 7946 0958", "0044...")
  // in E.164, then the screen-pop (which also writes the call to the contact history).
  async function inboundCall(raw) {
    let phone = String(raw || "").replace(/[\s().\-\/]/g, "");
    if (phone.startsWith("00")) phone = `+${phone.slice(2)}`;
    const { status, data } = await api("POST", "/v1/agents/inbound", { phone });
    if (status === 409 && data?.error?.code === "ambiguous_caller") showCandidates(data);
    else showCustomer(status, data, { byPhone: true });
  }

  // A number several customers share (joint account, household line): their ids as
  // buttons, text only; nothing is written until the agent asks who is calling and
  // picks one, which opens it by customer id (and writes the call to that history).
  function showCandidates(data) {
    const ids = (Array.isArray(data.candidates) ? data.candidates : []).map(String);
    const p = document.createElement("p");
    p.className = "candidates-note";
    p.textContent = `${ids.length} customers share this number — ask who is calling, then pick:`;
    const list = document.createElement("div");
    list.className = "candidates";
    for (const id of ids) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "candidate";
      b.textContent = id;
      b.addEventListener("click", async () => {
        const { status, data: ctx } = await api("POST", "/v1/agents/inbound", { customer_id: id });
        showCustomer(status, ctx, { byPhone: true });
      });
      list.append(b);
    }
    $("#customer").replaceChildren(p, list);
  }

  function showCustomer(status, data, { byPhone = false } = {}) {
    const box = $("#customer");
    if (status !== 200) {
      const p = document.createElement("p");
      p.className = "error";
      const code = data?.error?.code;
      p.textContent = code === "unknown_caller" ? "Unknown caller: no customer has this number"
        : code === "invalid_inbound" ? "Enter the number in international form, e.g. +44 20 7946 0958"
        : data?.error?.message || `error ${status}`;
      box.replaceChildren(p);
      return;
    }
    const calcs = Object.entries(data.calculators || {}).map(([p, c]) =>
      `${p}: ${c.amount} over ${c.term_months} months (${c.count}×)`).join("; ");
    const pages = (data.recent_pages || []).slice(0, 8).map((p) => p.path).join(", ");
    const offer = data.best_offer?.offer ? `${data.best_offer.offer.title} — ${data.best_offer.offer.text}` : "none";
    const head = document.createElement("h3"); head.textContent = data.customer_id;
    const hist = document.createElement("ol");
    for (const h of data.contact_history || []) {
      const li = document.createElement("li");
      li.textContent = [h.kind, h.channel, h.rule, h.outcome, h.by,
        h.ts ? new Date(Number(h.ts)).toLocaleString() : ""].filter(Boolean).join(" · ");
      hist.append(li);
    }
    const histTitle = document.createElement("h4"); histTitle.textContent = "Contact history";
    const guideTitle = document.createElement("h4"); guideTitle.textContent = "Call guide";
    const guide = document.createElement("div"); guide.className = "guide";
    renderGuide(guide, data.call_guide);
    if (!guide.childElementCount) guide.textContent = "No quote: nothing calculated for a product the bank quotes";
    // Found by the number: the number is the CRM's, the voice may be someone else's.
    const matched = [];
    if (byPhone || data.matched_by === "phone") {
      const p = document.createElement("p");
      p.className = "matched-by";
      p.textContent = "matched by phone number — verify identity";
      matched.push(p);
    }
    box.replaceChildren(head, ...matched, guideTitle, guide, dl([
      ["Presence", data.presence?.online ? "online now" : "offline"],
      ["Recent pages", pages || "—"],
      ["Calculators", calcs || "—"],
      ["Best offer", offer],
      ["Value tier", data.attributes?.value_tier || "—"],
    ]), histTitle, hist);
  }

  // One model of the queue for the headline and the supervisor's floor, so they agree:
  // every open callback is exactly one of in progress (claimed, not completed: completed
  // ones leave the queue), waiting (unclaimed and due) or scheduled (unclaimed, due later).
  function floorModel(order, now) {
    const inProgress = order.filter((t) => Boolean(t.claimed_by));
    const unclaimed = order.filter((t) => !t.claimed_by);
    return {
      inProgress,
      waiting: unclaimed.filter((t) => dueAt(t) <= now),
      scheduled: unclaimed.filter((t) => dueAt(t) > now),
    };
  }

  // The floor at a glance, from the live queue this page already holds (every second).
  function renderFloor(floor, now) {
    const { waiting } = floor;
    const age = (t) => now - (dueAt(t) || now);
    const stat = (name, value) => { $(`#floor [data-stat=${name}]`).textContent = String(value); };
    stat("waiting", waiting.length);
    stat("scheduled", floor.scheduled.length);
    stat("claimed", floor.inProgress.length);
    stat("late", waiting.filter((t) => age(t) > SLA_MS).length);
    stat("oldest", waiting.length ? fmtAge(Math.max(...waiting.map(age))) : "—");
    stat("online", waiting.filter((t) => t.online === true || t.online === "true").length);
  }

  async function refreshFunnel(fresh) {
    const { status, data } = await api("GET", `/v1/supervisor/funnel${fresh === true ? "?fresh=1" : ""}`);
    if (status !== 200) return;
    const agents = data.floor?.agents_online;
    $("#floor [data-stat=agents]").textContent = agents === null || agents === undefined ? "—" : String(agents);
    const body = $("#funnel tbody");
    body.replaceChildren(...Object.entries(data.rules).map(([rule, r]) => {
      const tr = document.createElement("tr");
      const converted = r.outcomes.converted || 0;
      const rate = r.fired ? `${Math.round((100 * converted) / r.fired)}%` : "—";
      for (const v of [rule, r.fired, r.claimed, r.outcomes.connected || 0,
        converted, r.outcomes.no_answer || 0, r.outcomes.not_interested || 0, rate]) {
        const td = document.createElement("td"); td.textContent = String(v); tr.append(td);
      }
      return tr;
    }));
    refreshUplift(Object.keys(data.rules), fresh === true);
  }

  // --- uplift -------------------------------------------------------------------------
  // Does each rule in the funnel pay? Its treated customers' conversion rate against its
  // holdout's over the last 30 days (the report's default range). The bars are plain
  // elements sized through the CSSOM (the CSP forbids style attributes, not this).
  // Cohorts are counted per day, so the 5 s funnel timer refreshes them at most once a
  // minute; the Refresh button and a changed rule list refresh them at once.
  const UPLIFT_EVERY_MS = 60 * 1000;
  const uplift = { at: 0, rules: null, gen: 0 };
  const percent = (rate) => `${(100 * rate).toFixed(1)}%`;
  // Signed percentage points, rounded half away from zero; never "-0.0".
  function pp(x) {
    const s = (100 * Math.abs(x)).toFixed(1);
    return `${x < 0 && s !== "0.0" ? "-" : "+"}${s}`;
  }

  function upliftText(r) {
    if (!r.holdout.decisions) return "no holdout data";
    if (!r.treated.decisions) return "no treated data";
    if (typeof r.uplift !== "number") return "no data";
    const ci = Array.isArray(r.ci95) ? ` (95%: ${pp(r.ci95[0])} to ${pp(r.ci95[1])})` : "";
    return `${pp(r.uplift)} pp${ci}`;
  }

  // One cohort's bar, scaled to the larger of the two rates (rates are often a few
  // percent: on a 0-100 % scale both bars would be slivers). The numbers are in the
  // bar's aria-label and, for sighted users, beside it.
  function upliftBar(cls, label, cohort, scale) {
    const row = document.createElement("div"); row.className = `bar-row ${cls}`;
    const name = document.createElement("span"); name.className = "bar-label"; name.textContent = label;
    const track = document.createElement("div"); track.className = "bar"; track.setAttribute("role", "img");
    const fill = document.createElement("div"); fill.className = "fill";
    const value = document.createElement("span"); value.className = "bar-value";
    value.setAttribute("aria-hidden", "true"); // the bar's label says it
    const words = typeof cohort.rate === "number"
      ? `${percent(cohort.rate)} converted (${cohort.conversions} of ${cohort.decisions})`
      : "no decisions";
    track.setAttribute("aria-label", `${label}: ${words}`);
    fill.style.width = `${typeof cohort.rate === "number" && scale > 0 ? (100 * cohort.rate) / scale : 0}%`;
    value.textContent = words;
    track.append(fill); row.append(name, track, value);
    return row;
  }

  function upliftItem(rule, { status, data }) {
    const li = document.createElement("li"); li.dataset.rule = rule;
    const name = document.createElement("strong"); name.className = "rule"; name.textContent = rule;
    const text = document.createElement("p"); text.className = "uplift-text";
    if (status !== 200 || !data?.treated || !data?.holdout) {
      text.textContent = `no report: ${data?.error?.message || `error ${status}`}`;
      li.append(name, text);
      return li;
    }
    const scale = Math.max(Number(data.treated.rate) || 0, Number(data.holdout.rate) || 0);
    text.textContent = upliftText(data);
    li.append(name, upliftBar("treated", "Treated", data.treated, scale),
      upliftBar("holdout", "Holdout", data.holdout, scale), text);
    return li;
  }

  async function refreshUplift(rules, force) {
    const key = rules.join("\n");
    if (!force && key === uplift.rules && Date.now() - uplift.at < UPLIFT_EVERY_MS) return;
    uplift.rules = key; uplift.at = Date.now();
    const gen = ++uplift.gen;
    const answers = await Promise.all(rules.map((rule) =>
      api("GET", `/v1/reports/uplift?rule=${encodeURIComponent(rule)}`)));
    if (gen !== uplift.gen) return; // a newer refresh started meanwhile: it draws
    const list = $("#uplift");
    if (!rules.length) {
      const li = document.createElement("li"); li.textContent = "No rule has fired yet.";
      list.replaceChildren(li);
    } else {
      list.replaceChildren(...rules.map((rule, i) => upliftItem(rule, answers[i])));
    }
  }

  // --- wiring -------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", async () => {
    $("#signin-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const form = new FormData(ev.target);
      const { status, data } = await api("POST", "/v1/agents/login",
        { user: form.get("user"), password: form.get("password") });
      if (status === 200) { state.csrf = data.csrf_token; signedIn(data); }
      else $("#signin-error").textContent = data?.error?.message || "Sign-in failed";
    });
    $("#signout").addEventListener("click", async () => {
      await api("POST", "/v1/agents/logout"); signedOut();
    });
    $("#search-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      openCustomer(new FormData(ev.target).get("customer"));
    });
    $("#inbound-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      inboundCall(new FormData(ev.target).get("phone"));
    });
    $("#refresh-funnel").addEventListener("click", () => refreshFunnel(true));
    setInterval(() => { if (state.user) render(); }, 1000); // SLA timers, expiry
    // Agents online comes with the funnel: every 5 s (the server caches the funnel's
    // stream read for 5 s and reads agents online fresh), and a button for "now".
    setInterval(() => { if (state.role === "supervisor") refreshFunnel(); }, 5000);
    const { status, data } = await api("GET", "/v1/agents/me");
    if (status === 200) signedIn(data); else signedOut();
  });
})();
