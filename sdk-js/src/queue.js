// The outbox: every event waits here until the engine has answered for it, so
// retries, reloads and tab closes lose nothing (the engine dedupes by event id).
//
// Each page load saves under its own key (rb_q.<random>), so two open tabs never
// overwrite each other's events. A new page load adopts every other key and resends
// what it holds: usually the tail of the page just left. If that page is in fact
// still open, both send the same events and the engine's dedupe drops the copies.
//
// Bounded: at most 500 events and 256 KB; past that the oldest are dropped and
// counted, as are batches the engine refused for good (an invalid event, say), and
// the count is reported to the engine (a `rb_dropped` custom event).
//
// Items are wire events; they are sent with the visitor's current ids, which is why
// reset() (logout) sends and then clears the queue: events from before a logout never
// go out under whoever uses the browser next. One snippet runs per page, so the queue
// is module state.

import { ls } from './dom.js';
import { rid } from './ids.js';

const PREFIX = 'rb_q.';
const MAX_EVENTS = 500;
const MAX_CHARS = 262144; // 256 KiB
const key = PREFIX + rid(2);

export let items = [];
export let dropped = 0;

const others = () => ls((s) => Object.keys(s).filter((k) => !k.indexOf(PREFIX) && k != key)) || [];

// Drop the oldest n events (default: whatever is over the count limit).
const bound = (n = items.length - MAX_EVENTS) => n > 0 && (dropped += items.splice(0, n).length);

export const add = (item) => bound(items.push(item) - MAX_EVENTS);

export const remove = (sent) => (items = items.filter((x) => !sent.includes(x)));

// A batch the engine refused for good: removed, and counted like the oldest dropped
// (the count is taken as remove's ignored second argument: the fewest bytes).
export const drop = (g) => remove(g, (dropped += g.length));

// The number of dropped events not yet reported; reading it resets it.
export const takeDropped = (n = dropped) => ((dropped = 0), n);

export function save() {
  let s;
  while ((s = JSON.stringify({ d: dropped, e: items })).length > MAX_CHARS) bound(items.length / 10 + 1);
  // A full quota leaves the events in memory: they are still sent.
  ls((st) => (items[0] ? st.setItem(key, s) : st.removeItem(key)));
}

// Take over what earlier page loads left behind (once consent allows storage).
export function adopt() {
  for (const k of others())
    ls((s) => {
      const v = s.getItem(k);
      s.removeItem(k); // first: a corrupt value must not be retried forever
      const { e, d } = JSON.parse(v);
      items = e.concat(items);
      dropped += d;
    });
  bound();
}

// Consent withdrawn: forget every queued event, this tab's and the others'.
export function clear() {
  items = [];
  dropped = 0;
  for (const k of others().concat(key)) ls((s) => s.removeItem(k));
}
