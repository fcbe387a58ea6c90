// Small shared helpers. Globals are aliased once so the minifier can shorten them.

export const doc = document;
export const loc = location;
export const now = () => Date.now();

// A URL resolved against the page, only if it is http(s): never javascript:, data:,
// tel: or mailto: (a phone number or e-mail address is none of our business).
export function httpUrl(href) {
  const u = new URL(href, loc);
  if (/^http/.test(u.protocol)) return u;
}

// Every entry point from the host page (API call, listener, timer) runs through
// `safe`: Ringback must never throw into a bank's page.
export const safe =
  (f) =>
  (...args) => {
    try {
      return f(...args);
    } catch (e) {}
  };

// Listen in the capture phase, so a page's stopPropagation cannot blind us.
export const on = (target, type, f) => target.addEventListener(type, safe(f), true);

// localStorage can be missing, full or forbidden (private mode, blocked storage):
// every access goes through here, and Ringback then keeps its state in memory only.
export function ls(f) {
  try {
    return f(localStorage);
  } catch (e) {}
}
