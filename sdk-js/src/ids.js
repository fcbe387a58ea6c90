// Identifiers. crypto.getRandomValues works on plain http too (randomUUID does not);
// base 36 keeps ids in the alphabet both wire patterns accept.

import { ls } from './dom.js';

// n x 32 random bits: rid(2) ~ 12 characters (event ids), rid(4) ~ 25 (visitor ids).
export const rid = (n) => [...crypto.getRandomValues(new Uint32Array(n))].map((x) => x.toString(36)).join('');

export const AID_KEY = 'rb_aid';

// The anonymous id: first-party storage only, no cookies, nothing third-party.
export function anonymousId(fresh) {
  let id = !fresh && ls((s) => s.getItem(AID_KEY));
  if (!/^\w{8,64}$/.test(id)) {
    id = rid(4);
    ls((s) => s.setItem(AID_KEY, id));
  }
  return id;
}
