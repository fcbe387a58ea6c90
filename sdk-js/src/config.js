// Configuration comes from data-* attributes on the snippet's own <script> tag, so a
// bank installs Ringback with one tag and no inline config object (CSP-friendly):
//
//   data-site         the site key (required)
//   data-endpoint     the engine's origin; default: the origin that served the snippet
//                     (first-party for the bank, and a host its CSP already allows)
//   data-consent      "required" (default) or "implied"; see consent.js
//   data-honor-gpc    "false" to ignore the browser's privacy signals (Global Privacy
//                     Control and Do Not Track); default: honoured

import { doc, loc } from './dom.js';

export function readConfig() {
  const el = doc.currentScript || doc.querySelector('script[data-site]');
  const cfg = { ...el.dataset };
  cfg.endpoint = (cfg.endpoint || new URL(el.src || loc).origin).replace(/\/$/, '');
  return cfg;
}
