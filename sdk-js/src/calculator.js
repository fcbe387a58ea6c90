// Loan calculators: the strongest intent signal a bank website has.
//
//   <form data-rb-calc="mortgage">
//     <input type="range" data-rb-field="amount">  <input data-rb-field="term_months">
//     <input data-rb-field="rate">  <output data-rb-field="monthly_payment"></output>
//   </form>
//
// Sliders fire dozens of input events a second: one `calc` event is sent when the
// visitor pauses (debounced), and the same figures are not sent twice. Formatted
// text ("£1,234.56") is read as a plain number ("1234.56").

import { doc, on, safe } from './dom.js';

const DEBOUNCE_MS = 700;

export function calculator(emit) {
  const last = {};
  let pending; // the calculator waiting out its debounce (one is in use at a time)
  let timer;

  function calc(product, v) {
    // A missing rate or payment is NaN here and null on the wire, which the engine
    // reads as "not given".
    const p = { product, amount: +v.amount, term_months: Math.round(v.term_months), rate: +v.rate, monthly_payment: +v.monthly_payment };
    const key = JSON.stringify(p);
    // Incomplete figures would only be refused by the engine: not sent.
    if (p.amount >= 0 && p.term_months > 0 && last[product] != key) {
      last[product] = key;
      emit('calc', p);
    }
  }

  // Send the figures of the calculator waiting out its debounce, if any.
  function flush() {
    const form = pending;
    const v = {};
    clearTimeout(timer);
    pending = 0;
    if (form) {
      for (const el of form.querySelectorAll('[data-rb-field]'))
        v[el.dataset.rbField] = parseFloat((el.value || el.textContent).replace(/[^\d.-]/g, ''));
      calc(form.dataset.rbCalc, v);
    }
  }

  const onInput = (e) => {
    const form = e.target.closest('[data-rb-calc]');
    if (form) {
      if (form != pending) flush();
      pending = form;
      clearTimeout(timer);
      timer = setTimeout(safe(flush), DEBOUNCE_MS);
    }
  };
  on(doc, 'input', onInput);
  on(doc, 'change', onInput);

  return { calc, flush };
}
