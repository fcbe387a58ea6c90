// What every page reports without any markup: page views (SPA route changes too),
// clicks on links and buttons, scroll depth and visible dwell time.
//
// Privacy: URLs are sent as paths, never with their query string or fragment (they
// can carry e-mail addresses, account numbers, search terms); campaign parameters
// are picked out by name. Nothing inside [data-rb-ignore] is captured. Text is cut
// to the engine's limits, since one refused event would cost its whole batch.

import { doc, httpUrl, loc, now, on, safe } from './dom.js';

const HEARTBEAT_MS = 15000;
const ROUTE_POLL_MS = 400;

// "https://x.example/a?q=1#f" -> "https://x.example/a"; same origin -> "/a".
function cleanUrl(href) {
  const u = httpUrl(href);
  return u && (u.origin == loc.origin ? '' : u.origin) + u.pathname;
}

export function autocapture(emit, onRoute) {
  let path;
  let depth;
  let visibleSince = !doc.hidden && now();

  function pageView() {
    if (path == loc.pathname) return; // a query or hash change is not a new page
    const props = { title: doc.title.slice(0, 256), referrer: path || (doc.referrer && cleanUrl(doc.referrer)) };
    // Campaign parameters, the only part of a query string that is sent.
    for (const [k, v] of new URLSearchParams(loc.search)) if (!k.indexOf('utm_')) props[k] = v.slice(0, 256);
    if (path) onRoute();
    path = loc.pathname;
    depth = 0;
    emit('page_view', props);
  }

  // SPA route changes are noticed by watching the path, not by wrapping the history
  // API: the host page's globals stay untouched, whatever router it uses.
  setInterval(safe(pageView), ROUTE_POLL_MS);

  on(doc, 'click', (e) => {
    const el = e.target.closest('a,button,[role=button],[type=submit]');
    // An input button's value is its label, written by the bank, not typed by a visitor.
    // (innerText lays out, once per click: it gives the words a visitor actually saw.)
    if (el && !el.closest('[data-rb-ignore]'))
      emit('click', {
        text: (el.innerText || el.value || '').slice(0, 100),
        href: el.href && cleanUrl(el.href),
        element_id: el.id,
      });
  });

  on(window, 'scroll', () => {
    // Share of the page seen so far, reported once per page at each quarter.
    const seen = ((scrollY + innerHeight) / doc.documentElement.scrollHeight) * 100;
    while (depth < 100 && seen > depth + 24) emit('scroll', { depth: (depth += 25) });
  });

  // Visible time since the last heartbeat, so the engine's dwell adds up exactly.
  // Called every 15 s while visible, and whenever visibility changes or the page is left
  // (becoming visible restarts the clock without reporting).
  function heartbeat() {
    const ms = visibleSince && now() - visibleSince;
    visibleSince = !doc.hidden && now();
    if (ms > 99) emit('heartbeat', { dwell_ms: Math.min(ms, 3600000) }); // a machine may sleep
  }
  setInterval(safe(() => doc.hidden || heartbeat()), HEARTBEAT_MS);

  pageView();
  return heartbeat;
}
