"""The agent's call guide: the bank's quote for what the visitor was calculating.

A visitor who reworks a mortgage calculator has told the bank the amount and term
they want; the agent who calls back should open with the bank's own numbers, not
ask again. `call_guide` turns the calculator state of a profile (as
`decode_profile` gives it, with `previous`: the scenario before the newest change)
into the bank's quote at its configured rate (`[quotes.<product>]`), next to the
visitor's own figures when they entered a rate, plus what the offer chosen was and
why. Numbers only, with the site's locale and currency: the dashboard formats them
in the agent's browser (`Intl.NumberFormat`), so the server never builds display text.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypedDict

from engine.core.settings import QuoteConfig, Settings

__all__ = ["CallGuide", "Quote", "annuity_monthly", "call_guide", "quote", "site_guide"]

_CENT = Decimal("0.01")


class Change(TypedDict):
    """What the visitor changed in their newest calculation, and when (ms)."""

    fields: list[str]  # "amount", "term_months"
    before: dict[str, float | int | None]  # {"amount", "term_months"}
    after: dict[str, float | int | None]
    before_ms: int | None  # when they had calculated the previous scenario
    at_ms: int | None  # the newest calculation: the change came after before_ms, by this


class Quote(TypedDict):
    product: str
    label: str
    amount: float
    term_months: int  # the term quoted (the visitor's, within the bank's range)
    visitor_term_months: int
    rate_pct: float  # the bank's nominal yearly rate
    monthly: float  # the bank's monthly payment, rounded to cents
    total: float  # monthly x term: what the customer repays in all
    interest: float  # total - amount
    visitor_rate_pct: float | None  # what the visitor entered, if anything
    visitor_monthly: float | None  # what the visitor's calculator showed, if it said
    monthly_difference: float | None  # bank's monthly - visitor's (negative: cheaper)
    calculated_ms: int | None  # the newest calculation
    changed: Change | None


class CallGuide(TypedDict):
    locale: str  # BCP 47, the site's: how the browser formats the numbers
    currency: str  # ISO 4217
    quotes: list[Quote]  # newest calculation first
    offer: dict[str, Any] | None  # {"id", "title"} of the offer chosen
    why: dict[str, Any] | None  # {"rule", "reason", "propensity", "score"}


def annuity_monthly(amount: float, rate_pct: float, term_months: int) -> float:
    """The level monthly payment repaying `amount` over `term_months` at a nominal
    yearly `rate_pct` (interest monthly: rate / 12), rounded to cents.

    >>> annuity_monthly(400_000, 4.1, 300)
    2133.5
    >>> annuity_monthly(100_000, 5.0, 360)  # the textbook 30-year figure
    536.82
    >>> annuity_monthly(12_000, 0.0, 24)  # no interest: the amount in equal parts
    500.0
    """
    if term_months <= 0:
        raise ValueError("term_months must be positive")
    r = rate_pct / 100 / 12
    if r == 0:
        raw = amount / term_months
    else:
        raw = amount * r / (1 - (1 + r) ** -term_months)
    return float(Decimal(repr(raw)).quantize(_CENT, rounding=ROUND_HALF_UP))


def quote(conf: QuoteConfig, calc: Mapping[str, Any]) -> Quote | None:
    """The bank's quote for one product's calculator state; None without an amount
    and a term (a calculator the visitor only opened).

    >>> from engine.core.settings import QuoteConfig
    >>> q = quote(QuoteConfig("mortgage", 4.1, "Mortgage", 60, 420),
    ...           {"amount": 400_000.0, "term_months": 300, "rate": 3.5, "monthly": 2002.49,
    ...            "ts": 2000, "previous": {"amount": 300_000.0, "term_months": 300, "ts": 1000}})
    >>> q["monthly"], q["total"], q["visitor_monthly"], q["monthly_difference"]
    (2133.5, 640050.0, 2002.49, 131.01)
    >>> q["changed"]["fields"], q["changed"]["before"]["amount"], q["changed"]["at_ms"]
    (['amount'], 300000.0, 2000)
    >>> quote(QuoteConfig("mortgage", 4.1, "Mortgage", 60, 240),
    ...       {"amount": 400_000.0, "term_months": 300})["term_months"]  # the bank's longest
    240
    """
    amount, visitor_term = _num(calc.get("amount")), _int(calc.get("term_months"))
    if amount is None or amount <= 0 or visitor_term is None or visitor_term <= 0:
        return None
    term = visitor_term
    if conf.min_term_months is not None:
        term = max(term, conf.min_term_months)
    if conf.max_term_months is not None:
        term = min(term, conf.max_term_months)
    monthly = annuity_monthly(amount, conf.rate_pct, term)
    total = _cents(monthly * term)
    visitor_rate = _num(calc.get("rate"))
    # Only the figure the visitor's calculator showed: one worked out here from their
    # rate would be a number they never saw, put in their mouth on the card.
    visitor_monthly = _num(calc.get("monthly"))
    # Compared only over the same term: the bank's payment over its nearest term
    # against the visitor's over theirs says nothing about price.
    comparable = visitor_monthly is not None and term == visitor_term
    return Quote(
        product=conf.product,
        label=conf.label,
        amount=amount,
        term_months=term,
        visitor_term_months=visitor_term,
        rate_pct=conf.rate_pct,
        monthly=monthly,
        total=total,
        interest=_cents(total - amount),
        visitor_rate_pct=visitor_rate,
        visitor_monthly=visitor_monthly,
        monthly_difference=(
            _cents(monthly - visitor_monthly)
            if comparable and visitor_monthly is not None
            else None
        ),
        calculated_ms=_int(calc.get("ts")),
        changed=_change(calc),
    )


def call_guide(
    quotes: Mapping[str, QuoteConfig],
    calcs: Mapping[str, Any],
    *,
    locale: str = "en-GB",
    currency: str = "EUR",
    offer: Mapping[str, Any] | None = None,
    rule: str = "",
    reason: str = "",
    factors: Mapping[str, Any] | None = None,
) -> CallGuide:
    """The guide for one customer or trigger: a quote for each calculator product the
    bank has a rate for (newest calculation first), with the locale and currency to
    show them in, and the offer chosen and why (the rule's reason, the decision's
    propensity and score).

    >>> g = call_guide({"mortgage": QuoteConfig("mortgage", 4.1, "Mortgage")},
    ...                {"mortgage": {"amount": 400000, "term_months": 300},
    ...                 "savings": {"amount": 5, "term_months": 1}},
    ...                locale="de-DE", offer={"id": "adviser", "title": "Talk to us"},
    ...                rule="r", reason="Reworked the calculator", factors={"propensity": 0.41})
    >>> [q["monthly"] for q in g["quotes"]], g["locale"], g["currency"]
    ([2133.5], 'de-DE', 'EUR')
    >>> g["offer"], g["why"]["propensity"]
    ({'id': 'adviser', 'title': 'Talk to us'}, 0.41)
    """
    found = []
    for product, calc in calcs.items():
        conf = quotes.get(product)
        if conf is not None and isinstance(calc, Mapping):
            q = quote(conf, calc)
            if q is not None:
                found.append(q)
    found.sort(key=lambda q: -(q["calculated_ms"] or 0))
    f = factors or {}
    why = None
    if rule or reason or f:
        why = {
            "rule": rule,
            "reason": reason,
            "propensity": _num(f.get("propensity")),
            "score": _num(f.get("score")),
        }
    chosen = None
    if offer and (offer.get("id") or offer.get("title")):
        chosen = {"id": str(offer.get("id") or ""), "title": str(offer.get("title") or "")}
    return CallGuide(locale=locale, currency=currency, quotes=found, offer=chosen, why=why)


def site_guide(settings: Settings, site: str, calcs: Mapping[str, Any], **why: Any) -> CallGuide:
    """`call_guide` with the config's quotes and the site's locale and currency (the
    first site's when the site is unknown, e.g. a customer seen only through the CRM)."""
    conf = settings.sites.get(site) or next(iter(settings.sites.values()), None)
    return call_guide(
        settings.quotes,
        calcs,
        locale=conf.locale if conf else "en-GB",
        currency=conf.currency if conf else "EUR",
        **why,
    )


def _change(calc: Mapping[str, Any]) -> Change | None:
    prev = calc.get("previous")
    if not isinstance(prev, Mapping):
        return None
    before = {"amount": _num(prev.get("amount")), "term_months": _int(prev.get("term_months"))}
    after = {"amount": _num(calc.get("amount")), "term_months": _int(calc.get("term_months"))}
    changed = [k for k in ("amount", "term_months") if before[k] != after[k]]
    if not changed:
        return None
    return Change(
        fields=changed,
        before=dict(before),
        after=dict(after),
        before_ms=_int(prev.get("ts")),
        at_ms=_int(calc.get("ts")),
    )


def _cents(x: float) -> float:
    return float(Decimal(repr(x)).quantize(_CENT, rounding=ROUND_HALF_UP))


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def _int(x: Any) -> int | None:
    n = _num(x)
    return None if n is None else int(n)
