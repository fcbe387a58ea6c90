// Form analytics by field NAME only. Values are never read: the engine learns that
// "email" was focused and the "personal-loan-application" form abandoned, nothing
// more. Password, card, account and id-number fields are skipped entirely, as is
// anything inside [data-rb-ignore] or a calculator ([data-rb-calc]: calculator.js
// reports its numbers on purpose).

import { doc, on } from './dom.js';

// Matched against a field's type, name and autocomplete hint. Deliberately broad: a
// false positive only costs an untracked field.
const SKIP = /pass|card|cc-|cv[cv]|iban|ssn|social|nation|tax|id.?n|acc|sort|rout|pin/i;

const attr = (el, k) => el.getAttribute(k) || '';

// A form by its name or id attribute (not .name/.id: a field named "id" shadows them).
const formName = (f) => f && (attr(f, 'name') || attr(f, 'id') || 'form').slice(0, 64);

// A field is known by its name (what the form submits); unnamed fields are skipped.
function fieldOf(el) {
  const name = el.matches('input,select,textarea') && !el.closest('[data-rb-calc],[data-rb-ignore]') && el.name;
  return name && !SKIP.test(el.type + name + el.autocomplete) && name.slice(0, 64);
}

export function forms(emit) {
  // Forms the visitor entered and has not submitted: form -> last field focused.
  let started = {};

  on(doc, 'focusin', (e) => {
    const el = e.target;
    const field = fieldOf(el);
    const form = field && formName(el.form);
    if (field) emit('form', { field, action: 'focus', form });
    if (form) started[form] = field;
  });

  // A submitted form is not abandoned. (No event: the page the form leads to says more.)
  on(doc, 'submit', (e) => delete started[formName(e.target)]);

  // Leaving the page (or the SPA route) with a started form is abandonment; the last
  // field focused shows where the visitor gave up.
  return () => {
    for (const form in started) emit('form', { field: started[form], action: 'abandon', form });
    started = {};
  };
}
