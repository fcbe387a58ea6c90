// The demo bank's own page script. Everything Ringback-specific goes through the
// public `ringback(...)` API, exactly as a bank's code would; the rest (calculators,
// navigation, login, consent banner) is ordinary site behaviour.
'use strict';

const PAGE_TITLES = {
  '': 'Northbridge Bank - mortgages, loans, cards and savings',
  mortgages: 'Mortgages - Northbridge Bank',
  loans: 'Personal loans - Northbridge Bank',
  cards: 'Credit cards - Northbridge Bank',
  savings: 'Savings - Northbridge Bank',
};
// Offer call-to-action URLs from the rule files, mapped onto this demo's pages; the
// ones that ask for a call are this bank's "call me" for that product.
const CTA_PAGES = { mortgages: 'mortgages', 'personal-loan': 'loans', cards: 'cards', savings: 'savings' };
const CTA_CALLS = { '/mortgages/advice': 'mortgage' };
const CONSENT_KEY = 'demo-consent'; // the bank's consent manager keeps its own record
const SESSION_KEY = 'demo-session';

const money = (v, digits = 0) =>
  '£' + v.toLocaleString('en-GB', { minimumFractionDigits: digits, maximumFractionDigits: digits });

// --- navigation: a small single-page app, so route changes are SPA page views -------

function pageOf(path) {
  const name = path.replace(/^\/demo\/?/, '').split('/')[0];
  return name in PAGE_TITLES ? name : '';
}

function show(page) {
  for (const section of document.querySelectorAll('[data-page]')) section.hidden = section.dataset.page !== page;
  for (const link of document.querySelectorAll('nav a')) {
    link.classList.toggle('active', pageOf(new URL(link.href).pathname) === page && page !== '');
  }
}

function navigate(page) {
  document.title = PAGE_TITLES[page];
  history.pushState({}, '', page ? `/demo/${page}` : '/demo');
  show(page);
  window.scrollTo(0, 0);
}

document.addEventListener('click', (e) => {
  const link = e.target.closest('a[href]');
  if (!link || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey) return;
  const url = new URL(link.href);
  if (link.closest('[data-rb-decision]')) {
    // An offer's call to action: take the visitor to the matching demo page.
    e.preventDefault();
    navigate(CTA_PAGES[url.pathname.split('/')[1]] || '');
    const product = CTA_CALLS[url.pathname];
    if (product) requestCall(product);
  } else if (url.origin === location.origin && url.pathname.startsWith('/demo')) {
    e.preventDefault();
    navigate(pageOf(url.pathname));
  }
});
window.addEventListener('popstate', () => show(pageOf(location.pathname)));

// --- loan calculators ----------------------------------------------------------------

// Annuity repayment: rate is annual percent, term in months.
function monthlyPayment(amount, termMonths, rate) {
  const r = rate / 100 / 12;
  return r === 0 ? amount / termMonths : (amount * r) / (1 - Math.pow(1 + r, -termMonths));
}

function wireCalculator(prefix) {
  const amount = document.getElementById(`${prefix}-amount`);
  const term = document.getElementById(`${prefix}-term`);
  const rate = document.getElementById(`${prefix}-rate`);
  const payment = document.getElementById(`${prefix}-payment`);
  function update() {
    const months = Number(term.value);
    document.getElementById(`${prefix}-amount-out`).value = money(Number(amount.value));
    document.getElementById(`${prefix}-term-out`).value =
      months % 12 ? `${months} months` : `${months / 12} years`;
    document.getElementById(`${prefix}-rate-out`).value = `${Number(rate.value).toFixed(2)}%`;
    payment.value = money(monthlyPayment(Number(amount.value), months, Number(rate.value)), 2);
  }
  // Runs before Ringback reads the figures: its listener waits for a pause.
  amount.form.addEventListener('input', update);
  update();
}
wireCalculator('mortgage');
wireCalculator('loan');

function requestCall(product) {
  ringback('interest', product, true);
  for (const button of document.querySelectorAll(`[data-call-me="${product}"]`)) button.hidden = true;
  for (const note of document.querySelectorAll(`[data-call-me-done="${product}"]`)) note.hidden = false;
}
for (const button of document.querySelectorAll('[data-call-me]')) {
  button.addEventListener('click', () => requestCall(button.dataset.callMe));
}
for (const button of document.querySelectorAll('[data-interest]')) {
  button.addEventListener('click', () => {
    ringback('interest', button.dataset.interest);
    button.disabled = true;
    button.textContent = 'Thank you, we will let you know';
  });
}

document.getElementById('loan-application').addEventListener('submit', (e) => {
  e.preventDefault(); // a demo: nothing is sent anywhere
  e.target.querySelector('button[type=submit]').disabled = true;
  document.getElementById('application-done').hidden = false;
});

// --- log in: the bank's server mints the identity token ------------------------------

const site = document.querySelector('script[data-site]').dataset.site;
const dialog = document.getElementById('login-dialog');

function showSession(session) {
  document.getElementById('greeting').textContent = session ? `Hi ${session.name.split(' ')[0]}` : '';
  document.getElementById('greeting').hidden = !session;
  document.getElementById('login-button').hidden = Boolean(session);
  document.getElementById('logout-button').hidden = !session;
}

document.getElementById('login-button').addEventListener('click', () => {
  document.getElementById('login-error').hidden = true;
  dialog.showModal();
});
document.getElementById('login-cancel').addEventListener('click', () => dialog.close());
document.getElementById('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const user = new FormData(e.target).get('user');
  const error = document.getElementById('login-error');
  try {
    const r = await fetch('/demo/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ site, user }),
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : `HTTP ${r.status}`);
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token: body.token, name: body.name }));
    ringback('identify', body.token);
    showSession(body);
    e.target.reset();
    dialog.close();
  } catch (err) {
    error.textContent = `Could not log in: ${err.message}`;
    error.hidden = false;
  }
});
document.getElementById('logout-button').addEventListener('click', () => {
  sessionStorage.removeItem(SESSION_KEY);
  ringback('reset');
  showSession(null);
  navigate('');
});

// --- consent banner (the bank's consent manager) ----------------------------------------

const banner = document.getElementById('consent-banner');
function decide(granted) {
  localStorage.setItem(CONSENT_KEY, granted ? 'yes' : 'no');
  ringback('consent', granted);
  banner.hidden = true;
}
document.getElementById('consent-accept').addEventListener('click', () => decide(true));
document.getElementById('consent-decline').addEventListener('click', () => decide(false));

// --- on every page load ------------------------------------------------------------------

const choice = localStorage.getItem(CONSENT_KEY);
if (choice) ringback('consent', choice === 'yes');
else banner.hidden = false;

const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
if (saved) ringback('identify', saved.token);
showSession(saved);
show(pageOf(location.pathname));
document.title = PAGE_TITLES[pageOf(location.pathname)];
