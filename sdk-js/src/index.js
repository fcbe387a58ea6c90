// Ringback's browser snippet: wiring and the public API (see ../index.d.ts).
//
//   <script>window.ringback=window.ringback||function(){(ringback.q=ringback.q||[]).push(arguments)}</script>
//   <script async src="https://engine.bank.example/sdk.js" data-site="demo-bank"></script>
//
// Calls made before the script has loaded (ringback('identify', token)) are queued by
// the inline stub and replayed here; afterwards ringback.calc(...) works as well.

import { autocapture } from './autocapture.js';
import { calculator } from './calculator.js';
import { readConfig } from './config.js';
import { BLOCKED, GRANTED, initialConsent, OPT_OUT_KEY, PENDING, REFUSED } from './consent.js';
import { doc, loc, ls, now, on, safe } from './dom.js';
import { forms } from './forms.js';
import { AID_KEY, anonymousId, rid } from './ids.js';
import { renderOffers } from './offers.js';
import * as queue from './queue.js';
import * as tx from './transport.js';

const stub = window.ringback;

function start() {
  // Also the visitor's ids: cfg.aid (anonymous id) and cfg.identity (bank token).
  const cfg = readConfig();
  let state = initialConsent(cfg);
  tx.initTransport(cfg, (body) => {
    const count = queue.takeDropped();
    if (count) emit('custom', { name: 'rb_dropped', data: { count } });
    renderOffers(body.decisions, emit);
  });

  // Before consent, events wait in the queue's memory: nothing is stored or sent.
  function emit(type, props) {
    if (state >= PENDING) {
      queue.add({ id: rid(2), type, ts: now(), page: loc.pathname, props });
      if (state) tx.soon();
    }
  }

  // From here on storage and network are allowed. The page view goes out at once: its
  // response carries the offers for this page, so no separate decisions request.
  function grant() {
    state = GRANTED;
    cfg.aid = anonymousId();
    queue.adopt();
    tx.flush();
  }

  // Forget everything this browser holds for Ringback.
  function forget() {
    cfg.identity = 0;
    queue.clear();
    ls((s) => s.removeItem(AID_KEY));
  }

  // Capture runs in every state; emit() decides what is kept.
  const calc = calculator(emit);
  const abandon = forms(emit);
  const heartbeat = autocapture(emit, abandon);
  if (state == BLOCKED) forget();
  if (state == GRANTED) grant();

  // Hidden or leaving: settle what is pending and hand the queue to the browser.
  function leave(closing) {
    calc.flush();
    if (closing) abandon();
    heartbeat();
    if (state == GRANTED) tx.leave();
  }
  on(window, 'pagehide', () => leave(1));
  on(doc, 'visibilitychange', () => (doc.hidden ? leave(0) : (heartbeat(), state == GRANTED && tx.soon())));

  const api = {
    identify(token) {
      cfg.identity = token;
    },
    // Logout: what the last visitor did goes out under their ids, then a new visitor.
    // (Navigate afterwards, as a logout does anyway: an offer on screen stays until then.)
    reset() {
      if (state == GRANTED) tx.leave(), queue.clear(), (cfg.aid = anonymousId(1));
      cfg.identity = 0;
    },
    calc: calc.calc,
    interest(product, callMe) {
      emit('interest', { product, call_me: !!callMe });
    },
    track(name, data) {
      // Through JSON now: what cannot be sent fails here, inside `safe`, not later.
      emit('custom', JSON.parse(JSON.stringify({ name: '' + name, data })));
    },
    consent(yes) {
      if (state == BLOCKED) return;
      if (yes) {
        ls((s) => s.removeItem(OPT_OUT_KEY));
        if (state != GRANTED) grant();
      } else {
        state = REFUSED;
        forget();
        ls((s) => s.setItem(OPT_OUT_KEY, 1));
      }
    },
  };

  // ringback('calc', ...) and ringback.calc(...) are the same call.
  const rb = (name, ...args) => api[name] && rb[name](...args);
  for (const k in api) rb[k] = safe(api[k]);
  rb.v = 1;
  window.ringback = rb;
  for (const args of stub?.q || []) rb(...args);
}

// Loaded twice (two tags, a tag manager): the first copy keeps running alone.
if (!stub?.v) safe(start)();
