// Getting batches to the engine: at least once, in order, without hurting the page.
//
// - Flush every second, or at once when 20 events are waiting.
// - A string body goes as text/plain: a CORS "simple" request, no preflight.
// - Network error, 429 or 5xx: exponential backoff with jitter, never sooner than
//   the engine's Retry-After. Other 4xx are permanent: the batch is dropped (and
//   reported as dropped), except that a refused identity token is forgotten and the
//   events resent anonymously. The engine answers errors with CORS headers and
//   exposes Retry-After, so all of this works from a bank's own origin.
// - Page hidden or leaving: navigator.sendBeacon (fetch keepalive if it refuses),
//   once per departure (pagehide and visibilitychange both fire when leaving). A
//   beacon's fate is unknown, so its events stay queued: the next page load, or this
//   page once visible again, resends them and the engine's dedupe drops the copies.
//   Nothing is fetched while the page is hidden, and nothing is beaconed while
//   backing off (the engine is known to be down then).

import { doc, now } from './dom.js';
import { drop, items, remove, save } from './queue.js';

const BATCH_EVENTS = 20;
const FLUSH_MS = 1000;
const MAX_BACKOFF_MS = 60000;

// cfg: {endpoint, site, aid, identity} (the ids change on identify/reset), and what
// to do with an accepted batch's response.
let cfg, url, onAccepted;
let timer = 0;
let busy = 0;
let attempt = 0;
let until = 0; // backing off: no sends before this time
let left = 0; // beaconed since the last new event

export function initTransport(config, accepted) {
  cfg = config;
  url = cfg.endpoint + '/v1/events';
  onAccepted = accepted;
}

const post = (data) => fetch(url, { method: 'POST', body: data, keepalive: true, credentials: 'omit' });

// A batch body. Up to 20 events of a few KB each stay under the engine's 64 KiB
// limit and the browser's beacon quota. `sent_at` is this clock at send time: the
// engine shifts every `ts` by its own receive time minus `sent_at`, so a browser
// clock that runs fast or slow still dates events right.
const body = (events) => JSON.stringify({ site: cfg.site, anonymous_id: cfg.aid, identity: cfg.identity || undefined, sent_at: now(), events });

const schedule = (ms) => (timer = timer || setTimeout(flush, ms));

export async function flush() {
  clearTimeout(timer);
  timer = 0;
  const g = items.slice(0, BATCH_EVENTS);
  if (busy || doc.hidden || now() < until || !g[0]) return !busy && now() < until && schedule(until - now());
  busy = 1;
  save(); // before the send: a page closed mid-request keeps the batch
  let r, s;
  try {
    r = await post(body(g));
    s = r.status;
    if (s < 300) {
      attempt = 0;
      remove(g);
      onAccepted(await r.json());
    } else if (s < 500 && s != 429) {
      // Permanent. Only a refused identity token (invalid_identity, identity_expired,
      // identity_site_mismatch: each names the path $.identity) is worth another try:
      // the same events, anonymously.
      if (/"\$\.identity/.test(await r.text())) cfg.identity = 0;
      else throw s;
    } else throw s;
  } catch (e) {
    if (s < 500 && s != 429) drop(g); // refused for good, or a 4xx body that could not be read
    else {
      // Network error, 429 or 5xx.
      const base = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** attempt++);
      until = now() + Math.max(r?.headers.get('Retry-After') * 1000 || 0, base / 2 + (Math.random() * base) / 2);
    }
  }
  busy = 0;
  save();
  if (items[0]) schedule(Math.max(until - now(), items[BATCH_EVENTS] ? 0 : FLUSH_MS));
}

// After every new event, and when the page is visible again. A full batch goes out in
// a task of its own, not inside the caller's (a click handler stays quick).
export function soon() {
  left = 0;
  if (items[BATCH_EVENTS - 1]) clearTimeout(timer), (timer = 0);
  schedule(items[BATCH_EVENTS - 1] ? 0 : FLUSH_MS);
}

// The page is being hidden or left: hand the oldest 20 queued events to the browser
// (a longer backlog only builds up while the engine is down: it waits in storage).
export function leave() {
  if (!left && now() >= until && items[0]) {
    const data = body(items.slice(0, BATCH_EVENTS));
    navigator.sendBeacon(url, data) || post(data).catch(() => {});
  }
  left = 1;
  save();
}
