"""`ringback simulate --population N`: a bank's customers with hidden response
probabilities, driven through the engine's real API, so a demo visibly learns and a
test or benchmark can measure how well.

    ringback simulate --url http://127.0.0.1:8080 --population 2000 --duration 120 \\
        --speed 1 --truth truth.jsonl

**The population.** N known customers, each with CRM attributes the engine is told
through `PUT /v1/profiles/{id}/attributes` before their first session (`value_tier`
standard 70% / vip 20% / private 10%, `segment`, `products_held`, `consent_call`,
`do_not_call`), one device (a stable anonymous id) and a hidden main interest (mortgage,
loans, cards, savings, investments or retention, by segment) with a loan size they have
in mind. A share of sessions (`--anonymous-share`) comes from anonymous visitors, a
fresh one each time, with no CRM record and no identity token.

**A session** lands on a journey's first page (sometimes from a campaign: `utm_source`,
`utm_medium`, `utm_campaign` and a `referrer` on that page view), browses the journey
(page views, scroll, heartbeats with dwell), and for mortgage and loans interest often
plays with the calculator (`calc` events: product, amount near the loan in mind, term).
It goes out as up to three `POST /v1/events` batches with `sent_at`, known customers
with an identity token minted from the site's identity secret. Offers in the answers
are "seen": an `offer_impression` custom event `{decision_id, offer_id}` goes in the next
batch (a final one, like the snippet's pagehide beacon, if none follows), and with the
hidden click probability an `offer_click` with it.

**The contact center.** For each phone callback decision, the bank's systems report
through `POST /v1/outcomes` (API token): with the hidden answer probability `connected`,
then `converted` or `not_interested` by the hidden conversion probability; else
`no_answer`. Callbacks that fell back to e-mail or SMS get no outcome.

**Conversions days later, on a fast clock.** `--speed` is simulated days per real
second. A converted call is signed 2-21 simulated days later; a clicked offer of a known
customer is signed with the hidden sign probability 1-14 days later. Each is sent as
`POST /v1/conversions {customer_id, product, value, ts, conversion_id}` when its
(compressed) day comes, with `ts` the real time then: the engine's clock is real, the
simulator compresses the wait, never the stamps. Conversions still waiting when the
run ends get up to `drain_s` (default 21 simulated days, the longest delay, at most
30 s); later ones are
dropped and counted. Note the engine credits a conversion to the customer's latest
decision for the product (last touch), so a signed call or clicked offer often gets a
second positive label (`converted`) on the decision that already had one.

**Organic sales** (`organic`, off by default): customers also sign without the engine.
At the end of a known customer's first session of the run, for each product of
`organic_products`, they sign on their own with probability `p_organic` (`organic`
for a standard customer, twice that for a premium one: only the tier, which the
engine sees), whatever the engine did or did not do, 1-21 simulated days later,
reported like the others. Last touch credits it to their latest decision for the
product, if any, treated or holdout: so a rule's holdout cohort converts at all.
For a decision whose customer's organic draw follows it (a rule that decides on a
customer's first session), the chance it is credited a conversion is
`p_converts(p_organic, p_effect, treated)`, with `p_effect` the engine's own effect
when treated (`p_callback` for a callback, `p_click` x `p_sign` for an offer): the
uplift a report should find is the mean of treated minus held out over the rule's
decisions (benchmarks/live_learning_bench.py; `person_seen` rebuilds what these
read from a decision's recorded features).

**Hidden probabilities** (the oracle) use only what the engine can also see at the
moment it decides: this session's campaign, this session's intent so far (page views
in the product's category plus twice its calculator uses), CRM tier and segment of a
known customer, and the largest amount calculated so far; the draw itself is the only
noise. `intent` is strong at >= 3, some at >= 1:

- offer click, by intent x campaign for the offer's product: strong intent with its
  campaign 0.50, strong 0.14, some intent with its campaign 0.22, some 0.06, campaign
  only 0.05, neither 0.02; x 1.3 for a known vip/private customer and a mortgage,
  investments or savings offer (at most 0.95);
- callback answered, by segment: retiree 0.75, family 0.6, young professional 0.45,
  student 0.35;
- converted once answered, by tier x large amount for mortgage (>= 300k) and loans
  (>= 20k): premium and large 0.8, premium 0.2, standard and large 0.15, standard 0.06;
  by tier for other products: premium 0.35, standard 0.12;
- a clicked offer signed later, by tier: premium 0.4, standard 0.2;
- an organic sale (above), by tier: premium 2 x `organic`, standard `organic`.

("premium" is vip or private.) A callback decision's `p_true` is P(answered) x
P(converted | answered): the probability of the positive label its model learns from.

**The truth file** (`--truth FILE`, JSON lines): one line per decision the engine made,
written when it is made: `decision_id`, `model` (the model name the decision names),
`action`, `rule`, `offer`, `product`, `p_true`, `p_model` (the engine's propensity),
`model_source`, `label` (what the simulator then did: clicked, or converted on the
call) and `known`. A benchmark compares the live model's AUC with the oracle's
(`p_true`) on the same decisions.

Bounded: new sessions start for `duration_s` seconds and until `max_requests` requests
are sent (outcomes and conversions owed for decisions already made still go, so the
cap is soft by those); `concurrency` sessions run at once. It binds nothing. Customer
ids are `sim-<tag>-<index>`: a fresh random `tag` per run unless one is given.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

from engine.ingest.identity import mint_token

__all__ = [
    "CAMPAIGNS",
    "JOURNEYS",
    "Person",
    "PopulationReport",
    "SessionState",
    "add_arguments",
    "make_population",
    "p_answer",
    "p_callback",
    "p_click",
    "p_convert",
    "p_converts",
    "p_organic",
    "p_sign",
    "person_seen",
    "run",
    "simulate_population",
]

PRODUCTS = ("mortgage", "loans", "cards", "savings", "investments", "retention")
# The page path prefix of each product's journey, in the demo config's categories
# (`retention` reads as the `fees` category).
JOURNEYS: dict[str, list[str]] = {
    "mortgage": ["/", "/mortgages", "/mortgages/fixed-rate", "/mortgages/calculator"],
    "loans": ["/", "/loans", "/personal-loan", "/personal-loan/apply"],
    "cards": ["/", "/cards", "/cards/compare", "/cards/platinum"],
    "savings": ["/", "/savings", "/savings/fixed-term", "/savings/compare"],
    "investments": ["/", "/investments", "/funds/compare", "/funds/global-equity"],
    "retention": ["/", "/fees", "/complaints", "/close-account"],
}


@dataclass(frozen=True)
class Campaign:
    source: str
    medium: str
    name: str
    product: str  # what it advertises
    referrer: str


CAMPAIGNS: tuple[Campaign, ...] = (
    Campaign("google", "cpc", "mortgage-search", "mortgage", "https://www.google.com/"),
    Campaign("newsletter", "email", "spring-rates", "savings", "https://mail.example.net/"),
    Campaign("social", "paid", "cashback-promo", "cards", "https://social.example.com/"),
    Campaign("partner", "referral", "wealth-webinar", "investments", "https://partner.example/"),
    Campaign("google", "cpc", "loan-summer", "loans", "https://www.google.com/"),
)
CAMPAIGN_SHARE = 0.45  # sessions landing from a campaign
TARGETED_SHARE = 0.6  # of those: a campaign for the visitor's own interest

SEGMENTS: dict[str, dict[str, float]] = {  # segment -> (share, interest weights)
    "young_professional": {"mortgage": 4, "loans": 2, "cards": 3, "savings": 1, "investments": 1},
    "family": {"mortgage": 4, "loans": 3, "cards": 1, "savings": 2, "retention": 1},
    "retiree": {"savings": 4, "investments": 4, "retention": 2, "cards": 1},
    "student": {"cards": 4, "loans": 2, "savings": 1, "retention": 1},
}
SEGMENT_SHARE = {"young_professional": 0.35, "family": 0.35, "retiree": 0.2, "student": 0.1}
TIERS = (("standard", 0.7), ("vip", 0.2), ("private", 0.1))
HELD = ("current_account", "savings", "credit_card", "mortgage", "personal_loan", "fixed_saver")
LARGE_AMOUNT = {"mortgage": 300_000.0, "loans": 20_000.0}
TERMS = {"mortgage": 300, "loans": 48}
MAX_DELAY_DAYS = 21.0  # the longest a sale takes to be signed


# -- the population ----------------------------------------------------------------------


@dataclass
class Person:
    """A customer (customer_id set, CRM attributes) or an anonymous visitor."""

    anonymous_id: str
    customer_id: str | None
    value_tier: str
    segment: str
    products_held: list[str]
    consent_call: bool
    do_not_call: bool
    interest: str
    amount: float  # the loan they have in mind (mortgage or loans interest)
    attributes_sent: bool = False

    @property
    def premium(self) -> bool:
        """vip or private, as far as the engine can know: anonymous visitors are not."""
        return self.customer_id is not None and self.value_tier in ("vip", "private")

    def attributes(self) -> dict[str, Any]:
        return {
            "value_tier": self.value_tier,
            "segment": self.segment,
            "products_held": self.products_held,
            "consent_call": self.consent_call,
            "do_not_call": self.do_not_call,
        }


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def _person(rng: random.Random, tag: str, index: int | None) -> Person:
    segment = _pick(rng, SEGMENT_SHARE)
    tier = _pick(rng, dict(TIERS))
    interest = _pick(rng, SEGMENTS[segment])
    if interest == "mortgage":
        amount = rng.lognormvariate(math.log(220_000), 0.45)
    else:
        amount = rng.lognormvariate(math.log(12_000), 0.6)
    if tier != "standard":
        amount *= 1.7
    held = ["current_account"] + [p for p in HELD[1:] if rng.random() < 0.15]
    held = [
        p for p in held if p != {"mortgage": "mortgage", "loans": "personal_loan"}.get(interest)
    ]
    return Person(
        anonymous_id=f"sim{tag}" + uuid.UUID(int=rng.getrandbits(128)).hex[:16],
        customer_id=None if index is None else f"sim-{tag}-{index:06d}",
        value_tier=tier,
        segment=segment,
        products_held=held,
        consent_call=rng.random() < 0.85,
        do_not_call=rng.random() < 0.03,
        interest=interest,
        amount=round(amount, -2),
    )


def make_population(n: int, rng: random.Random, tag: str) -> list[Person]:
    """`n` known customers; `tag` keeps ids of separate runs apart."""
    return [_person(rng, tag, i) for i in range(n)]


# -- hidden probabilities (the table in the module docstring) ---------------------------


@dataclass
class SessionState:
    """What this session has shown the engine so far: the oracle's inputs."""

    campaign: Campaign | None
    pages: Counter[str] = field(default_factory=Counter)  # product -> page views
    calcs: Counter[str] = field(default_factory=Counter)  # product -> calculator uses
    max_amount: dict[str, float] = field(default_factory=dict)

    def intent(self, product: str) -> int:
        return self.pages[product] + 2 * self.calcs[product]


def p_click(person: Person, state: SessionState, product: str) -> float:
    """P(the offer for `product` is clicked): intent x campaign, tier for some products.

    >>> s = SessionState(CAMPAIGNS[0], Counter(mortgage=3))
    >>> anon = _person(random.Random(1), "t", None)
    >>> p_click(anon, s, "mortgage"), p_click(anon, s, "cards")
    (0.5, 0.02)
    """
    intent = state.intent(product)
    camp = state.campaign is not None and state.campaign.product == product
    if intent >= 3:
        p = 0.50 if camp else 0.14
    elif intent >= 1:
        p = 0.22 if camp else 0.06
    else:
        p = 0.05 if camp else 0.02
    if person.premium and product in ("mortgage", "investments", "savings"):
        p *= 1.3
    return min(round(p, 6), 0.95)


def p_answer(person: Person) -> float:
    """P(a callback is answered), by the customer's segment."""
    return {"retiree": 0.75, "family": 0.6, "young_professional": 0.45}.get(person.segment, 0.35)


def p_convert(person: Person, state: SessionState, product: str) -> float:
    """P(converted | answered): tier x large amount for loans, tier for the rest."""
    threshold = LARGE_AMOUNT.get(product)
    if threshold is not None:
        large = state.max_amount.get(product, 0.0) >= threshold
        if person.premium:
            return 0.8 if large else 0.2
        return 0.15 if large else 0.06
    return 0.35 if person.premium else 0.12


def p_callback(person: Person, state: SessionState, product: str) -> float:
    """P(a callback ends `converted`): the positive label of its model."""
    return round(p_answer(person) * p_convert(person, state, product), 6)


def p_sign(person: Person) -> float:
    """P(a clicked offer is signed days later)."""
    return 0.4 if person.premium else 0.2


def p_organic(person: Person, organic: float) -> float:
    """P(a known customer signs for one of `organic_products` on their own in the run).

    >>> vip = Person("a", "c1", "vip", "retiree", [], True, False, "savings", 0.0)
    >>> standard = Person("b", "c2", "standard", "retiree", [], True, False, "savings", 0.0)
    >>> p_organic(vip, 0.05), p_organic(standard, 0.05)
    (0.1, 0.05)
    """
    if person.customer_id is None:
        return 0.0
    return min(round(organic * (2.0 if person.premium else 1.0), 6), 1.0)


def p_converts(p_org: float, p_effect: float, treated: bool) -> float:
    """P(a decision is credited a conversion): treated, the engine's effect or an organic
    sale (independent draws); held out (nothing shown or sent), the organic sale only.

    >>> round(p_converts(0.1, 0.2, True), 6), p_converts(0.1, 0.2, False)
    (0.28, 0.1)
    """
    return 1.0 - (1.0 - p_org) * (1.0 - p_effect) if treated else p_org


def person_seen(features: Mapping[str, float | str]) -> Person:
    """The customer as a decision's recorded features show them: enough for what the
    hidden probabilities of a callback for a product without amounts (`p_answer`,
    `p_convert`) and of an organic sale read (tier, segment, known).

    >>> p = person_seen({"known": 1.0, "value_tier": "private", "segment": "family"})
    >>> p.premium, p_answer(p), p_convert(p, SessionState(None), "savings")
    (True, 0.6, 0.35)
    """
    known = bool(features.get("known"))
    return Person(
        anonymous_id="",
        customer_id="seen" if known else None,
        value_tier=str(features.get("value_tier") or "standard"),
        segment=str(features.get("segment") or ""),
        products_held=[],
        consent_call=True,
        do_not_call=False,
        interest="",
        amount=0.0,
    )


# -- the report --------------------------------------------------------------------------


@dataclass
class PopulationReport:
    customers: int = 0
    sessions: int = 0
    requests: int = 0
    events: int = 0
    decisions: Counter[str] = field(default_factory=Counter)  # action -> distinct decisions
    repeated: int = 0  # a page offer shown again within its decision window
    impressions: int = 0
    clicks: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # outcome -> count
    conversions: int = 0
    conversions_attributed: int = 0
    conversions_dropped: int = 0
    organic: int = 0  # organic sales scheduled (`organic`)
    truth_lines: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # "POST /v1/events 400" -> count

    def summary(self) -> str:
        decisions = ", ".join(f"{k} {v}" for k, v in sorted(self.decisions.items())) or "0"
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "0"
        return (
            f"sessions {self.sessions}, requests {self.requests}, events {self.events}, "
            f"decisions ({decisions}; {self.repeated} shown again), "
            f"impressions {self.impressions}, clicks {self.clicks}, "
            f"call outcomes ({outcomes}), conversions {self.conversions} "
            f"({self.organic} organic; attributed {self.conversions_attributed}, "
            f"dropped {self.conversions_dropped}), "
            f"errors {dict(self.errors) or 0}"
        )


# -- the driver --------------------------------------------------------------------------


def _value(decision: dict[str, Any]) -> float:
    return float((decision.get("factors") or {}).get("value") or 0.0)


@dataclass(order=True)
class _Due:
    due_s: float  # time.monotonic() when it is sent
    seq: int
    body: dict[str, Any] = field(compare=False)


class _Driver:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        credentials: dict[str, str],
        *,
        site: str,
        speed: float,
        rng: random.Random,
        truth: IO[bytes] | None,
        report: PopulationReport,
        organic: float = 0.0,
        organic_products: tuple[str, ...] = PRODUCTS,
    ) -> None:
        self.http = http
        self.url = url
        self.api_headers = {"Authorization": f"Bearer {credentials['api_token']}"}
        self.identity_secret = credentials["identity_secret"]
        self.site = site
        self.speed = speed
        self.rng = rng
        self.truth = truth
        self.report = report
        self.organic = organic
        self.organic_products = organic_products
        self.due: list[_Due] = []  # conversions waiting for their day
        self.due_changed = asyncio.Event()
        self.seq = 0
        self.answered: set[str] = set()  # decision ids already answered

    async def _call(
        self, method: str, path: str, body: dict[str, Any], *, api: bool
    ) -> dict[str, Any] | None:
        """One request; its JSON answer, or None (counted in `errors`) when refused."""
        self.report.requests += 1
        headers = {"Content-Type": "application/json"}
        if api:
            headers.update(self.api_headers)
        try:
            async with self.http.request(
                method, self.url + path, data=orjson.dumps(body), headers=headers
            ) as r:
                raw = await r.read()
                if r.status == 200:
                    answer: dict[str, Any] = orjson.loads(raw)
                    return answer
                self.report.errors[f"{method} {path.split('/')[2]} {r.status}"] += 1
        except (aiohttp.ClientError, TimeoutError):
            self.report.errors[f"{method} {path.split('/')[2]} unreachable"] += 1
        return None

    def _event(
        self, sid: str, etype: str, page: str | None, props: dict[str, Any]
    ) -> dict[str, Any]:
        self.seq += 1
        ev: dict[str, Any] = {
            "id": f"{sid}.{self.seq}",
            "type": etype,
            "ts": int(time.time() * 1000),
            "props": props,
        }
        if page is not None:
            ev["page"] = page
        return ev

    async def session(self, person: Person) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        report = self.report
        report.sessions += 1
        first = not person.attributes_sent
        if person.customer_id is not None and not person.attributes_sent:
            person.attributes_sent = True
            await self._call(
                "PUT",
                f"/v1/profiles/{person.customer_id}/attributes",
                person.attributes(),
                api=True,
            )
        interest = person.interest if rng.random() < 0.8 else rng.choice(PRODUCTS)
        campaign: Campaign | None = None
        if rng.random() < CAMPAIGN_SHARE:
            own = [c for c in CAMPAIGNS if c.product == interest]
            targeted = own and rng.random() < TARGETED_SHARE
            campaign = rng.choice(own if targeted else list(CAMPAIGNS))
        state = SessionState(campaign)
        sid = uuid.UUID(int=rng.getrandbits(128)).hex[:10]
        anonymous_id = person.anonymous_id
        if person.customer_id is None:  # a new anonymous visitor each session
            anonymous_id = "simanon" + uuid.UUID(int=rng.getrandbits(128)).hex[:20]
        journey = JOURNEYS[interest][: rng.randint(2, len(JOURNEYS[interest]))]
        landing_props: dict[str, Any] = {"title": "Home"}
        if campaign is not None:
            landing_props.update(
                utm_source=campaign.source,
                utm_medium=campaign.medium,
                utm_campaign=campaign.name,
                referrer=campaign.referrer,
            )
        batches: list[list[tuple[dict[str, Any], str | None]]] = [
            [(self._event(sid, "page_view", journey[0], landing_props), None)]
        ]
        browse: list[tuple[dict[str, Any], str | None]] = []
        for page in journey[1:]:
            title = page.strip("/").replace("-", " ").replace("/", " - ").title()
            browse.append((self._event(sid, "page_view", page, {"title": title}), interest))
            if rng.random() < 0.5:
                depth = rng.choice([25, 50, 75, 100])
                browse.append((self._event(sid, "scroll", page, {"depth": depth}), None))
            dwell = {"dwell_ms": rng.randint(5_000, 60_000)}
            browse.append((self._event(sid, "heartbeat", page, dwell), None))
        batches.append(browse)
        if interest in TERMS and rng.random() < 0.7:
            amount = person.amount
            calcs: list[tuple[dict[str, Any], str | None]] = []
            for _ in range(rng.randint(2, 6)):
                amount = max(1000.0, round(amount * rng.uniform(0.9, 1.12), -2))
                props = {"product": interest, "amount": amount, "term_months": TERMS[interest]}
                calcs.append((self._event(sid, "calc", journey[-1], props), "calc:" + interest))
            batches.append(calcs)
        pending: list[dict[str, Any]] = []  # offer events for the next batch
        for batch in batches:
            events = pending + [ev for ev, _ in batch]
            pending = []
            for ev, counts in batch:  # what the engine will have seen when it decides
                if counts is not None and counts.startswith("calc:"):
                    product = counts[5:]
                    state.calcs[product] += 1
                    amount = float(ev["props"]["amount"])
                    state.max_amount[product] = max(state.max_amount.get(product, 0.0), amount)
                elif counts is not None:
                    state.pages[counts] += 1
            decisions = await self._send(person, anonymous_id, events)
            for decision in decisions:
                pending += await self._decided(person, state, decision, sid, rng, reshow=True)
        for _ in range(3):  # the pagehide beacon; its answer may decide once more
            if not pending:
                break
            decisions = await self._send(person, anonymous_id, pending)
            pending = []
            for decision in decisions:
                pending += await self._decided(person, state, decision, sid, rng, reshow=False)
        if first and person.customer_id is not None and self.organic > 0:
            for product in self.organic_products:  # whatever the engine did
                if rng.random() < p_organic(person, self.organic):
                    report.organic += 1
                    value = round(person.amount * 0.01, 2) if product in TERMS else 100.0
                    key = f"organic-{person.customer_id}-{product}"
                    self._schedule(person, product, rng.uniform(1, MAX_DELAY_DAYS), key, value)

    async def _send(
        self, person: Person, anonymous_id: str, events: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {
            "site": self.site,
            "anonymous_id": anonymous_id,
            "events": events,
            "sent_at": int(time.time() * 1000),
        }
        if person.customer_id is not None:
            body["identity"] = mint_token(self.identity_secret, self.site, person.customer_id)
        answer = await self._call("POST", "/v1/events", body, api=False)
        if answer is None:
            return []
        self.report.events += len(events)
        decisions: list[dict[str, Any]] = answer.get("decisions") or []
        return decisions

    async def _decided(
        self,
        person: Person,
        state: SessionState,
        decision: dict[str, Any],
        sid: str,
        rng: random.Random,
        *,
        reshow: bool,
    ) -> list[dict[str, Any]]:
        """Respond to one decision; the page events it leads to (impression, click).

        A page offer's decision id is stable for its window (10 minutes, the engine's
        `OFFER_DECISION_WINDOW_MS`): shown again within it, it is the same decision and
        gets one label. So a decision is answered the first time it is seen; later
        sightings are impressions only (`reshow`; not after the session's last page)."""
        report = self.report
        action = str(decision.get("action"))
        offer = decision.get("offer") or {}
        product = str(offer.get("product") or person.interest)
        page_events: list[dict[str, Any]] = []
        data = {"decision_id": decision["id"], "offer_id": str(offer.get("id", ""))}
        impression = {"name": "offer_impression", "data": data}
        repeated = decision["id"] in self.answered
        if action == "offer" and (reshow or not repeated):
            page_events.append(self._event(sid, "custom", None, impression))
            report.impressions += 1
        if repeated:
            report.repeated += 1
            return page_events
        self.answered.add(decision["id"])
        report.decisions[action] += 1
        label: bool | None = None
        if action == "offer":
            p_true = p_click(person, state, product)
            label = rng.random() < p_true
            if label:
                report.clicks += 1
                page_events.append(
                    self._event(sid, "custom", None, {"name": "offer_click", "data": data})
                )
                if person.customer_id is not None and rng.random() < p_sign(person):
                    self._schedule(
                        person, product, rng.uniform(1, 14), decision["id"], _value(decision)
                    )
        elif action == "callback" and decision.get("channel") == "callback":
            p_true = p_callback(person, state, product)
            label = await self._contact_center(person, state, decision, product, rng)
        else:
            return page_events
        self._truth(person, decision, product, p_true, label)
        return page_events

    async def _contact_center(
        self,
        person: Person,
        state: SessionState,
        decision: dict[str, Any],
        product: str,
        rng: random.Random,
    ) -> bool:
        """The bank's systems report the call: answered, then converted or not."""
        outcomes: list[str] = []
        converted = False
        if rng.random() < p_answer(person):
            converted = rng.random() < p_convert(person, state, product)
            outcomes = ["connected", "converted" if converted else "not_interested"]
        else:
            outcomes = ["no_answer"]
        for outcome in outcomes:
            body = {"decision_id": decision["id"], "outcome": outcome}
            if await self._call("POST", "/v1/outcomes", body, api=True) is not None:
                self.report.outcomes[outcome] += 1
        if converted:
            self._schedule(
                person, product, rng.uniform(2, MAX_DELAY_DAYS), decision["id"], _value(decision)
            )
        return converted

    def _schedule(self, person: Person, product: str, days: float, key: str, value: float) -> None:
        assert person.customer_id is not None
        if product in TERMS:
            value = round(person.amount * (0.01 if product == "mortgage" else 0.05), 2)
        self.seq += 1
        body = {
            "customer_id": person.customer_id,
            "product": product,
            "value": value,
            "conversion_id": f"sim-{key}-{self.seq}",
        }
        self.due.append(_Due(time.monotonic() + days / self.speed, self.seq, body))
        self.due.sort()
        self.due_changed.set()

    def _truth(
        self,
        person: Person,
        decision: dict[str, Any],
        product: str,
        p_true: float,
        label: bool | None,
    ) -> None:
        if self.truth is None:
            return
        model = decision.get("model") or {}
        factors = decision.get("factors") or {}
        line = {
            "decision_id": decision["id"],
            "model": model.get("name"),
            "action": decision.get("action"),
            "rule": decision.get("rule"),
            "offer": (decision.get("offer") or {}).get("id"),
            "product": product,
            "p_true": p_true,
            "p_model": factors.get("propensity"),
            "model_source": model.get("source"),
            "label": label,
            "known": person.customer_id is not None,
        }
        self.truth.write(orjson.dumps(line) + b"\n")
        self.report.truth_lines += 1

    async def conversions(self, stop: asyncio.Event) -> None:
        """Send each conversion when its day comes, until `stop` and nothing is due."""
        while not (stop.is_set() and not self.due):
            self.due_changed.clear()  # before sending: a conversion scheduled meanwhile wakes us
            now = time.monotonic()
            while self.due and self.due[0].due_s <= now:
                item = self.due.pop(0)
                body = dict(item.body, ts=int(time.time() * 1000))
                answer = await self._call("POST", "/v1/conversions", body, api=True)
                if answer is not None:
                    self.report.conversions += 1
                    self.report.conversions_attributed += answer.get("attributed") is not None
            wait_s = (self.due[0].due_s - time.monotonic()) if self.due else 0.5
            try:
                await asyncio.wait_for(self.due_changed.wait(), timeout=max(0.01, wait_s))
            except TimeoutError:
                pass


async def simulate_population(
    url: str,
    credentials: dict[str, str],
    n: int,
    *,
    duration_s: float = 60.0,
    max_requests: int | None = None,
    speed: float = 1.0,
    seed: int | None = None,
    truth_path: Path | None = None,
    anonymous_share: float = 0.3,
    concurrency: int = 16,
    site: str = "demo-bank",
    drain_s: float | None = None,
    progress_s: float | None = None,
    progress: Callable[[PopulationReport], None] | None = None,
    organic: float = 0.0,
    organic_products: tuple[str, ...] = PRODUCTS,
    tag: str | None = None,
    stop_sessions: asyncio.Event | None = None,
) -> PopulationReport:
    """Run `n` customers (and anonymous visitors) against the engine at `url`.

    `credentials` holds `api_token` and `identity_secret` (demo-credentials.json);
    `speed` is simulated days per real second (conversions' delays); `progress` is
    called every `progress_s` seconds with the report so far; `organic` and
    `organic_products` are the organic sales (module docstring); customer ids are
    `sim-<tag>-<index>` (`tag` default: fresh, so a rerun meets no cooldowns of the last);
    setting `stop_sessions` ends the run early as `duration_s` would (a benchmark that
    runs until the engine has learned enough)."""
    if n < 1 or speed <= 0 or concurrency < 1 or not 0 <= anonymous_share <= 1:
        raise ValueError("need n >= 1, speed > 0, concurrency >= 1, 0 <= anonymous_share <= 1")
    if not 0 <= organic <= 0.5 or not set(organic_products) <= set(PRODUCTS):
        raise ValueError(f"need 0 <= organic <= 0.5 and organic_products among {PRODUCTS}")
    rng = random.Random(seed)
    tag = tag or uuid.uuid4().hex[:6]
    people = make_population(n, rng, tag)
    report = PopulationReport(customers=n)
    drain_s = min(MAX_DELAY_DAYS / speed, 30.0) if drain_s is None else drain_s
    truth = truth_path.open("wb") if truth_path is not None else None
    stop = asyncio.Event()
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency * 2),
            timeout=aiohttp.ClientTimeout(total=30),
        ) as http:
            driver = _Driver(
                http,
                url.rstrip("/"),
                credentials,
                site=site,
                speed=speed,
                rng=rng,
                truth=truth,
                report=report,
                organic=organic,
                organic_products=tuple(organic_products),
            )

            def more() -> bool:
                in_time = time.monotonic() - started < duration_s
                if stop_sessions is not None and stop_sessions.is_set():
                    return False
                return in_time and (max_requests is None or report.requests < max_requests)

            async def worker() -> None:
                while more():
                    if rng.random() < anonymous_share:
                        visitor = _person(rng, tag, None)
                    else:
                        visitor = rng.choice(people)
                    await driver.session(visitor)

            async def ticker() -> None:
                while progress is not None and progress_s:
                    await asyncio.sleep(progress_s)
                    progress(report)

            sender = asyncio.create_task(driver.conversions(stop))
            tick = asyncio.create_task(ticker())
            try:
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                cutoff = time.monotonic() + drain_s
                dropped = [d for d in driver.due if d.due_s > cutoff]
                driver.due = [d for d in driver.due if d.due_s <= cutoff]
                report.conversions_dropped = len(dropped)
                stop.set()
                driver.due_changed.set()
                await sender
            finally:
                for task in (sender, tick):
                    task.cancel()
                await asyncio.gather(sender, tick, return_exceptions=True)
    finally:
        if truth is not None:
            truth.close()
    return report


# -- command line ------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The population mode's options of `ringback simulate`."""
    p.add_argument(
        "--population",
        type=int,
        metavar="N",
        help="simulate N bank customers (and anonymous visitors) with hidden response "
        "probabilities: sessions, offers clicked, callbacks answered, conversions",
    )
    p.add_argument("--truth", type=Path, help="population: write the oracle (JSON lines) here")
    p.add_argument("--max-requests", type=int, help="population: start no session past this")
    p.add_argument(
        "--anonymous-share", type=float, default=0.3, help="population: anonymous sessions"
    )
    p.add_argument("--concurrency", type=int, default=16, help="population: sessions at once")
    p.add_argument(
        "--organic",
        type=float,
        default=0.0,
        metavar="P",
        help="population: P(a known customer signs for each product on their own, "
        "whatever the engine did); twice that for vip and private (default 0)",
    )
    p.add_argument(
        "--data-dir",
        default=".ringback",
        help="population: where demo-credentials.json is (API token, identity secret)",
    )


def run(args: argparse.Namespace) -> int:
    """`ringback simulate --population N`: 0 when every request was accepted."""
    import uvloop

    path = Path(args.data_dir) / "demo-credentials.json"
    try:
        credentials = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        print(f"ringback: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if not {"api_token", "identity_secret"} <= set(credentials):
        print(f"ringback: {path} lacks api_token or identity_secret", file=sys.stderr)
        return 2

    from engine.core.progress import line

    started = time.monotonic()

    def show(report: PopulationReport) -> None:
        # done/total and time left by requests when --max-requests bounds the run,
        # else the rate so far; then what the population did.
        done = line(
            "simulating", report.requests, args.max_requests, time.monotonic() - started, "requests"
        )
        print(f"{done}; {report.summary()}", file=sys.stderr, flush=True)

    try:
        report = uvloop.run(
            simulate_population(
                args.url,
                credentials,
                args.population,
                duration_s=args.duration,
                max_requests=args.max_requests,
                speed=args.speed,
                seed=args.seed,
                truth_path=args.truth,
                anonymous_share=args.anonymous_share,
                concurrency=args.concurrency,
                site=args.site,
                progress_s=5.0,
                progress=show,
                organic=args.organic,
            )
        )
    except ValueError as exc:
        print(f"ringback: {exc}", file=sys.stderr)
        return 2
    show(report)
    return 0 if not report.errors else 1
