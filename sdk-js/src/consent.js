// Consent decides whether anything may be stored or sent.
//
//   BLOCKED  the browser sends a privacy signal (Global Privacy Control, or the older
//            Do Not Track) and the site honours them: nothing is stored or sent on
//            this page, whatever is called.
//   REFUSED  consent(false): queue and ids are gone; the refusal itself is remembered
//            (a strictly necessary marker) so an "implied" site stays quiet next time.
//   PENDING  the site requires consent and none was given yet: events wait in memory.
//   GRANTED  consent(true), or the site's mode is "implied".
//
// The bank's consent manager stays the source of truth: it calls consent(true) on
// every page load once the visitor agreed. Ringback never stores a grant itself.

import { ls } from './dom.js';

export const BLOCKED = -2;
export const REFUSED = -1;
export const PENDING = 0;
export const GRANTED = 1;
export const OPT_OUT_KEY = 'rb_optout';

// Privacy-safe defaults: consent is required unless the site says "implied", and the
// privacy signals are honoured unless the site says data-honor-gpc="false".
export function initialConsent(cfg) {
  const n = navigator;
  if (!cfg.site || (cfg.honorGpc != 'false' && (n.globalPrivacyControl || n.doNotTrack == 1))) return BLOCKED;
  if (ls((s) => s.getItem(OPT_OUT_KEY))) return REFUSED;
  return cfg.consent == 'implied' ? GRANTED : PENDING;
}
