"""Deciding, as a pure function: rules -> eligibility -> arbitration -> a `Plan`.

`decide(rules, inp, now_ms, capacity, offer_key, classify)` evaluates the rule set
against the live profile and says what should happen, without touching Valkey, a
clock or a metric: matching rules become candidates; candidates are filtered by
eligibility (a callback needs a known customer who consented, in the CRM or by
pressing "call me" within the hour, and is not on the do-not-call list; calendars
decide business hours; a stable hash puts a share of customers in the rule's
control group), ranked by propensity x value x lever and cut to one offer per slot.
The time is an input, so a recording replays at its own timestamps with this code.

What only Valkey can settle stays a question in the plan: contact policy (cooldowns,
daily caps) is taken atomically by `engine.profile.contact_history.reserve`, so the plan carries the
contact candidates ranked, each with its reservation, history entry and trigger;
delivery (`engine.delivery.executor.RulesDecider`) tries them in order and stops at
the first one that is reserved (one contact per batch: the best-ranked one policy
allows), then `settle` (pure too) turns the answers into the batch's decisions and
final trace, and `audit_record` into what each audit record says: the rules that did
not fire and what suppressed them included.

Before the rules, the set's segments are evaluated on the same inputs
(engine/decisions/segments.py), so rules can test `"id" in segments`; the plan carries
the visitor's segments and the entries and exits against the stored membership. The
customer value (engine/decisions/value.py) is scored once per plan: before the rules
when a condition reads `customer.value`, else only when something is recorded (a
candidate eligible, held out or suppressed), with the campaign attribution, the branch
and the report dimensions (`Plan.dims`) that records and counts carry.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import operator
import re
from collections.abc import Callable, Container, Mapping, Sequence
from statistics import NormalDist
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from engine.core.ids import new_decision_id
from engine.core.vocabulary import Action, Channel, EventType, TriggerKind, trigger_kind
from engine.decisions.compiled import Found, per_rule
from engine.decisions.features import features
from engine.decisions.inputs import Capacity, DecisionInput
from engine.decisions.loader import Offer, Rule, RuleFacts, RuleSet
from engine.decisions.model import Decision, Trigger
from engine.decisions.segments import changes
from engine.decisions.value import band
from engine.decisions.value import score as value_score
from engine.ingest.schema import event_type
from engine.models.registry import NO_MODELS, Estimate, Models, estimate
from engine.profile.contact_history import Reservation
from engine.valkey import keys

__all__ = [
    "CALL_REQUEST_CONSENT_S",
    "OFFER_DECISION_WINDOW_MS",
    "OTHER_CAMPAIGN",
    "Contact",
    "Decision",
    "Plan",
    "Settled",
    "Trigger",
    "asked_for_call",
    "attribution",
    "audit_record",
    "decide",
    "dims",
    "exploration_draw",
    "holdout",
    "offer_decision_id",
    "rule_inputs",
    "settle",
    "suppressed_decision",
]

# Which event of a batch a rule sees as `event`: the most intent-revealing one.
# Keyed by the plain values: a dict of exact strings looks up fastest.
_EVENT_RANK = {
    EventType.INTEREST.value: 6,
    EventType.CALC.value: 5,
    EventType.FORM.value: 4,
    EventType.PAGE_VIEW.value: 3,
    EventType.CLICK.value: 2,
    EventType.SCROLL.value: 1,
    EventType.HEARTBEAT.value: 0,
    EventType.CUSTOM.value: 0,
}

# Members the per-rule loop compares with, bound once: on Python 3.11 `Action.OFFER`
# goes through the enum class's attribute machinery (~110 ns), a global costs ~15.
_OFFER = Action.OFFER
_CALLBACK = Action.CALLBACK
_PHONE = Channel.CALLBACK

# A visitor who pressed "call me" consented to that call: for this long the request
# stands in for the CRM's consent_call (do-not-call still wins; it is the bank's list).
CALL_REQUEST_CONSENT_S = 3600

# The same page offer for the same visitor, rule and rule set within this window is
# one decision: one id, one audit record (written the first time, with the inputs that
# led to it). Without it every batch of a visitor browsing under an offer wrote a fresh
# audit record: 23 % of ingest throughput at 10-event batches (benchmarks/RESULTS.md).
OFFER_DECISION_WINDOW_MS = 10 * 60_000


class Contact(msgspec.Struct, frozen=True):
    """A contact (callback or notification) the rules chose, if policy allows it:
    everything the reservation and the trigger need. `decision` is what the batch
    answers when this contact is the one reserved."""

    rule: str
    channel: Channel
    decision: Decision
    reservation: Reservation
    history: dict[str, Any]  # the contact-history entry the reservation appends
    trigger: Trigger

    @property
    def phone_work(self) -> bool:
        """Whether the trigger also goes on the floor's callback queue: a phone callback
        (`trigger_kind` made it one only on the callback channel)."""
        return self.trigger.kind == TriggerKind.CALLBACK


class Plan(msgspec.Struct, frozen=True):
    """What the batch should do, best-ranked first.

    `ranked` holds the offer decisions (final: offers reserve nothing) and the contact
    candidates in rank order; `contacts` the candidates alone, for delivery to try in
    order. `trace` is per rule that matched or could not be evaluated, before the
    reservations; `hits` the rules whose condition held, `suppressions` the (rule,
    reason) pairs that eligibility and holdout suppressed (for the metrics).

    `trace` and `features` are what audit records say, and most batches write none (a
    page offer is audited once per window): both are kept compact and built on first
    read, once (`_trace`: rule id -> (result, channel, why); `_snapshot` computes the
    features from the plan's own inputs): at 50 rules ~18 trace dicts and a snapshot
    per batch, most of them never read.
    """

    now_ms: int
    site: str
    customer_id: str | None
    anonymous_id: str
    prefix: str
    rule_set: RuleSet
    ranked: list[Decision | Contact]
    contacts: list[Contact]
    _trace: dict[str, _Entry]  # `trace`, compact: built on first read
    hits: list[str]
    suppressions: list[tuple[str, str]]
    _features: dict[str, float | str]  # the snapshot, when computed while deciding
    holdouts: list[Decision] = []  # control-group decisions: recorded, never delivered
    # The offer bandit's exploration share (metrics): slots filled with an offer, and
    # those whose offer under sampling is not the one the posterior means would pick.
    slots: int = 0
    explored: int = 0
    # Segments (engine/decisions/segments.py): the ids the visitor is in now, and those
    # entered and exited against the profile's stored membership (sorted).
    segments: frozenset[str] = frozenset()
    entered: tuple[str, ...] = ()
    exited: tuple[str, ...] = ()
    # Who the decisions are about (`customer_value`, `attribution`, `branch`, `dims`):
    # worked out on first use, once (most batches record nothing new and need none of
    # it); empty when no candidate was eligible, held out or suppressed.
    _who: list[Callable[[], _About]] = []
    # The feature snapshot, when deciding did not need it: computed on first read.
    _snapshot: list[Callable[[], dict[str, float | str]]] = []
    _built: list[dict[str, dict[str, Any]]] = []  # `trace`, once built

    @property
    def trace(self) -> dict[str, dict[str, Any]]:
        """Per rule that matched or could not be evaluated: {rule, result, channel (if
        it matched), why (if it did not fire)}, in rule order."""
        if not self._built:
            self._built.append({r: _entry(r, *e) for r, e in self._trace.items()})
        return self._built[0]

    @property
    def features(self) -> dict[str, float | str]:
        """The snapshot propensities were (or would have been) estimated from; empty
        when no rule was eligible or held out. Built on first read from the decision's
        inputs: a caller that awaits anything before it records the plan must read it
        first (the executor does, before the contact reservation), or a profile changed
        meanwhile would be recorded instead of the one decided on."""
        return self._snapshot[0]() if self._snapshot else self._features

    def who(self) -> _About:
        """Value, attribution, segments, branch and report dimensions of the plan."""
        return self._who[0]() if self._who else _NOBODY

    @property
    def customer_value(self) -> float:
        return self.who().value

    @property
    def attribution(self) -> dict[str, str]:
        return self.who().attribution

    @property
    def branch(self) -> str:
        return self.who().branch

    @property
    def dims(self) -> tuple[tuple[str, str], ...]:
        """The report dimensions every count of the plan's decisions carries (`dims`)."""
        return self.who().dims


# A trace entry, compact: (result, channel or None, why or None).
_Entry = tuple[str, Channel | None, str | None]
_UNKNOWN_ENTRY: _Entry = ("unknown", None, "a value it needs is missing")


def _entry(rule_id: str, result: str, channel: Channel | None, why: str | None) -> dict[str, Any]:
    """A trace entry as records say it: the keys in this order, those without a value
    left out (a suppressed match keeps its channel).

    >>> _entry("r", "suppressed", Channel.WEB, "slot_taken")
    {'rule': 'r', 'result': 'suppressed', 'channel': <Channel.WEB: 'web'>, 'why': 'slot_taken'}
    >>> _entry("r", *_UNKNOWN_ENTRY)
    {'rule': 'r', 'result': 'unknown', 'why': 'a value it needs is missing'}
    """
    out: dict[str, Any] = {"rule": rule_id, "result": result}
    if channel is not None:
        out["channel"] = channel
    if why is not None:
        out["why"] = why
    return out


class Settled(msgspec.Struct, frozen=True):
    """The plan once contact policy answered: the batch's decisions, the contact that
    fired (None when none did), the final trace (what suppressed each rule)."""

    decisions: list[Decision]
    fired: Contact | None
    # The final trace; or the plan, whose trace it is when only offers were ranked (so
    # that it is built only if a record is written).
    _trace: dict[str, dict[str, Any]] | Plan

    @property
    def trace(self) -> dict[str, dict[str, Any]]:
        t = self._trace
        return t.trace if isinstance(t, Plan) else t


def asked_for_call(profile: dict[str, Any], now_ms: int, product: str | None = None) -> bool:
    """Whether the visitor asked to be called within the last `CALL_REQUEST_CONSENT_S`:
    about `product` (a request about savings is no consent to a mortgage call), or
    about anything when the rule offers no product (the "call me" rule itself).

    >>> p = {"last_call_request": 1_000, "call_requested": {"mortgage": 1_000}}
    >>> asked_for_call(p, 2_000), asked_for_call(p, 2_000, "mortgage"), asked_for_call({}, 2_000)
    (True, True, False)
    >>> asked_for_call(p, 2_000, "cards")
    False
    >>> asked_for_call(p, 1_000 + CALL_REQUEST_CONSENT_S * 1000 + 1)
    False
    """
    if product is None:
        ts = profile.get("last_call_request")
    else:
        ts = (profile.get("call_requested") or {}).get(product)
    return isinstance(ts, int) and 0 <= now_ms - ts <= CALL_REQUEST_CONSENT_S * 1000


def holdout(subject: str, rule_id: str, pct: float) -> bool:
    """Stable control-group membership: same customer and rule, same answer, always.

    >>> holdout("cust-1", "r", 0), holdout("cust-1", "r", 100)
    (False, True)
    >>> round(sum(holdout(f"c{i}", "r", 10) for i in range(10_000)) / 100)  # ~10 %
    10
    """
    if pct <= 0:
        return False
    h = hashlib.blake2b(f"{rule_id}\0{subject}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % 10_000 < pct * 100


def offer_decision_id(
    key: bytes, subject: str, rule_id: str, offer_id: str, version: str, now_ms: int
) -> str:
    """A page offer's decision id: stable within its window, unguessable without `key`.

    Time-ordered like `new_decision_id` (12 hex of the window's start, then 12 hex).

    >>> a = offer_decision_id(b"k", "cust-1", "r", "o", "v1", 1_000)
    >>> a == offer_decision_id(b"k", "cust-1", "r", "o", "v1", 2_000), len(a)
    (True, 24)
    >>> a == offer_decision_id(b"k", "cust-2", "r", "o", "v1", 1_000)
    False
    >>> a == offer_decision_id(b"k", "cust-1", "r", "o", "v1", 1_000 + OFFER_DECISION_WINDOW_MS)
    False
    """
    start = now_ms - now_ms % OFFER_DECISION_WINDOW_MS
    h = _keyed(key).copy()
    h.update(f"{subject}\0{rule_id}\0{offer_id}\0{version}\0{start}".encode())
    return f"{start:012x}{h.hexdigest()}"


def _offer_id_base(key: bytes, subject: str, now_ms: int) -> tuple[hashlib.blake2b, bytes, str]:
    """What every page-offer id of one batch starts from: the keyed hash fed the
    subject, the window's start as the text it ends with, and the id's time head.
    `offer_decision_id` with these done once (a batch at 50 rules fills 4 slots:
    ~1.5 µs of each id was formatting and hashing the same prefix again).

    >>> h, start, head = _offer_id_base(b"k", "cust-1", 1_000)
    >>> h.update(b"r\\0o\\0v1\\0"); h.update(start)
    >>> head + h.hexdigest() == offer_decision_id(b"k", "cust-1", "r", "o", "v1", 1_000)
    True
    """
    start = now_ms - now_ms % OFFER_DECISION_WINDOW_MS
    h = _keyed(key).copy()
    h.update(f"{subject}\0".encode())
    return h, str(start).encode(), f"{start:012x}"


@functools.lru_cache(maxsize=4)  # one key per deployment
def _keyed(key: bytes) -> hashlib.blake2b:
    """The keyed hash page-offer ids start from: copying it is cheaper than keying a
    new one (~0.25 µs of each id; a batch at 50 rules fills 4 slots)."""
    return hashlib.blake2b(key=key, digest_size=6)


def rule_inputs(rs: RuleSet, rule_id: str) -> set[str]:
    """The variable paths a rule's condition reads (what its audit record names)."""
    for r in rs.rules:
        if r.id == rule_id:
            return set(r.when.names)
    return set()


def _conditions(rs: RuleSet, variables: dict[str, Any], now_ms: int) -> Found:
    """The rules that matched or are UNKNOWN, in order, from the set's one generated
    function (engine/decisions/compiled.py), which also evaluates rules outside their
    enabled dates (the caller skips those). Should it raise, the enabled rules are
    evaluated one by one, so a rule's closure raises here exactly as it would alone."""
    try:
        return rs.conditions.find(variables)
    except Exception:
        today = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).date()
        off = {i for i, r in enumerate(rs.rules) if not r.enabled_on(today)}
        return per_rule([r.when._fn for r in rs.rules], variables, off)


def decide(
    rules: RuleSet,
    inp: DecisionInput,
    now_ms: int,
    capacity: Capacity,
    offer_key: bytes,
    classify: Callable[[str | None], str],
    new_id: Callable[[int], str] = new_decision_id,
    models: Models = NO_MODELS,
) -> Plan:
    """The plan for one batch, page load or screen-pop at `now_ms`: no I/O, no clock.

    `capacity` is the contact center's last reading, `offer_key` keys the page-offer
    ids, `new_id` makes a contact's decision id from the time (random by default),
    `models` the published models as this worker last loaded them (an immutable set).
    Candidates are ranked by score = propensity x value x lever; the rule's priority
    only breaks ties. Offers explore (Thompson sampling, the contextual bandit of web
    slots): each ranks by its `sampled` propensity x value x lever, a draw from its
    model's posterior seeded by `exploration_draw` (same subject, rule and second, same
    draw: a replay decides the same); contacts (callbacks, notifications) rank by the
    mean, since a phone call is too dear to spend on exploring. The feature snapshot
    the propensities came from goes into the plan (and each audit record), so a later
    outcome is learned against what was known when the decision was made, not the
    profile as it is by then.
    """
    rs = rules
    now = now_ms
    subject = inp.customer_id or f"{inp.site}:{inp.anonymous_id}"
    profile = inp.profile
    customer = inp.customer
    value: float | None = None
    if rs.reads_value:  # else scored below, only if something is recorded
        value = value_score(rs.value, profile, customer, now)
        customer = {**customer, "value": value}
    variables = {
        "event": _event_dict(inp, classify),
        "profile": profile,
        "session": profile.get("session", {}),
        "customer": customer,
        "now": now,
        "score": profile.get("scores", {}),
        "segments": _NO_SEGMENTS,
    }
    members = _NO_SEGMENTS
    if rs.segments.segments:
        members = variables["segments"] = rs.segments.members(variables)
    stored = profile.get("segments")
    entered: tuple[str, ...] = ()
    exited: tuple[str, ...] = ()
    if members or stored:
        entered, exited = changes(
            members, stored if isinstance(stored, dict) else {}, rs.segments.ids
        )
    trace: dict[str, _Entry] = {}
    hits: list[str] = []
    suppressions: list[tuple[str, str]] = []
    held: list[tuple[Rule, Channel]] = []  # eligible, but this subject is in the control group
    known: list[_About] = []

    def about() -> _About:
        if not known:
            v = value_score(rs.value, profile, inp.customer, now) if value is None else value
            known.append(_About.of(profile, inp.customer, members, v, rs.campaigns))
        return known[0]

    # The feature snapshot: computed now if a model or a control-group record needs it,
    # else on the first read of `Plan.features` (an audit record), or never.
    snapshot: list[dict[str, float | str]] = []

    def feats() -> dict[str, float | str]:
        if not snapshot:
            snapshot.append(features(profile, inp.customer, inp.events, now, _zone(rs), members))
        return snapshot[0]

    # The eligible candidates with their rank: score = propensity x value x lever (x the
    # customer value boost); an offer with a published model gets a posterior draw and
    # ranks by it. Factors, as dicts, only for the candidates that become decisions (at
    # 50 rules ~18 candidates for 4 slots): `_factors_of`, from the same estimate.
    scored: list[_Scored] = []
    sampling = False
    today = None
    all_rules = rs.rules
    all_facts = rs.facts
    for i, matched in _conditions(rs, variables, now):
        rule = all_rules[i]
        facts = all_facts[i]
        rule_id = rule.id
        if facts.fast:  # what the general case below does for it, in fewer steps
            if not matched:
                trace[rule_id] = _UNKNOWN_ENTRY
                continue
            hits.append(rule_id)
            trace[rule_id] = facts.entry
            if not models and not facts.boosted:
                scored.append((facts.key, facts.base, None, rule, facts, rule.channel, None))
                continue
            channel, scheduled = rule.channel, None
        else:
            if rule.enabled_from is not None or rule.enabled_until is not None:
                today = today or dt.datetime.fromtimestamp(now / 1000, tz=dt.UTC).date()
                if not rule.enabled_on(today):
                    continue
            if not matched:
                trace[rule_id] = _UNKNOWN_ENTRY
                continue
            hits.append(rule_id)
            channel, scheduled, why_not = _eligibility(rule, inp, rs, now, capacity)
            if why_not is None and holdout(subject, rule_id, rule.holdout_pct):
                why_not = "holdout"
                held.append((rule, channel))
            if why_not is not None:
                suppressions.append((rule_id, why_not))
                trace[rule_id] = ("suppressed", None, why_not)
                continue
            trace[rule_id] = ("matched", channel, None)
        est = None
        propensity = 1.0  # `estimate` with no model published
        sampled = None
        if models and facts.model in models:
            z = None
            if rule.action == _OFFER:
                z = exploration_draw(offer_key, subject, now, rule_id)
                sampling = True
            est = estimate(models, facts.model, feats(), z)
            propensity, sampled = est.propensity, est.sampled
        mean = propensity * facts.floor * facts.lever
        rank = mean
        if facts.boosted:
            boost = 1.0 + rule.value_weight * about().value / 100
            mean *= boost
            rank = mean
            if sampled is not None:
                rank = sampled * facts.floor * facts.lever * boost
        elif sampled is not None:
            rank = sampled * facts.floor * facts.lever
        scored.append(((-rank, -rule.priority), mean, est, rule, facts, channel, scheduled))

    prefix = (
        keys.customer_prefix(inp.customer_id)
        if inp.customer_id
        else keys.anonymous_prefix(inp.site, inp.anonymous_id)
    )
    ranked: list[Decision | Contact] = []
    contacts: list[Contact] = []
    who: list[Callable[[], _About]] = []
    if scored or held or suppressions:
        who.append(about)
    holdouts = [
        _holdout_decision(rule, channel, rs, feats(), models, offer_key, subject, now, who)
        for rule, channel in held
        if rule.action == _OFFER or inp.events  # as treated: page loads don't contact
    ]
    slots: set[str] = set()
    explored = 0
    id_base: hashlib.blake2b | None = None
    id_start, id_head = b"", ""
    if scored:
        # The slot each offer would fill ranked by the mean: exploring is taking another.
        by_mean: dict[str | None, str] = {}
        if sampling:
            for _, _, _, rule, _, _, _ in sorted(scored, key=lambda c: (-c[1], -c[3].priority)):
                if rule.action == _OFFER:
                    by_mean.setdefault(rule.slot, rule.id)
        scored.sort(key=_RANK)
        for _, _, est, rule, facts, channel, scheduled in scored:
            offer = facts.offer
            if rule.action == _OFFER:
                if rule.slot in slots:
                    entry = trace[rule.id]
                    trace[rule.id] = (
                        facts.slot_taken
                        if entry is facts.entry
                        else ("suppressed", entry[1], "slot_taken")
                    )
                    continue
                slots.add(rule.slot)
                if sampling and by_mean.get(rule.slot) != rule.id:
                    explored += 1
                # `offer_decision_id`, its subject and window hashed once per batch.
                if id_base is None:
                    id_base, id_start, id_head = _offer_id_base(offer_key, subject, now)
                h = id_base.copy()
                h.update(facts.id_part)
                h.update(id_start)
                if est is None and not facts.boosted:
                    factors, model = facts.plain_factors, facts.plain_model
                else:
                    factors, model = _factors_of(est, rule, facts, models, who)
                ranked.append(
                    Decision(
                        id_head + h.hexdigest(),
                        _OFFER,
                        rule.id,
                        channel,
                        factors,
                        model,
                        rule.slot,
                        facts.public,
                    )
                )
                continue
            if not inp.events:
                continue  # screen-pops and page loads show offers, they don't call
            factors, model = _factors_of(est, rule, facts, models, who)
            decision = Decision(
                new_id(now),
                rule.action,
                rule.id,
                channel,
                factors,
                model,
                offer=offer.public() if offer is not None else None,
            )
            contact = _contact(decision, rule, offer, inp, rs, prefix, now, scheduled, who[0]())
            ranked.append(contact)
            contacts.append(contact)
    lazy: list[Callable[[], dict[str, float | str]]] = []
    if (scored or held) and not snapshot:
        lazy.append(feats)
    return Plan(
        now_ms=now,
        site=inp.site,
        customer_id=inp.customer_id,
        anonymous_id=inp.anonymous_id,
        prefix=prefix,
        rule_set=rs,
        ranked=ranked,
        contacts=contacts,
        _trace=trace,
        hits=hits,
        suppressions=suppressions,
        _features=snapshot[0] if snapshot else {},
        holdouts=holdouts,
        slots=len(slots),
        explored=explored,
        segments=members,
        entered=entered,
        exited=exited,
        _who=who,
        _snapshot=lazy,
    )


# A candidate as ranked: ((-rank, -priority), mean score, estimate (None: no model
# published), rule, its facts, channel, scheduled_for).
_Scored = tuple[tuple[float, int], float, Estimate | None, Rule, RuleFacts, Channel, int | None]
_RANK = operator.itemgetter(0)


def settle(plan: Plan, refused: list[tuple[Contact, str]], taken: Contact | None) -> Settled:
    """The batch's decisions once policy answered: `refused` are the contacts tried in
    rank order and refused (with the reason), `taken` the one reserved, if any. Every
    contact ranked below the taken one is suppressed: one contact per batch.

    >>> offer = Decision("o", Action.OFFER, "r", Channel.WEB, {}, {}, "main")
    >>> p = Plan(0, "s", None, "a", "p", None, [offer], [], {}, [], [], {})
    >>> settle(p, [], None).decisions == [offer]
    True
    """
    if not plan.contacts:
        # Only offers were ranked: the decisions as they are, no copy.
        return Settled(plan.ranked, None, plan)  # type: ignore[arg-type]
    trace = dict(plan.trace)
    for contact, why in refused:
        trace[contact.rule] = {**trace[contact.rule], "result": "suppressed", "why": why}
    decisions: list[Decision] = []
    below = False
    for item in plan.ranked:
        if isinstance(item, Contact):
            if item is taken:
                below = True
                decisions.append(item.decision)
            elif below:
                trace[item.rule] = {
                    **trace[item.rule],
                    "result": "suppressed",
                    "why": "lower_ranked_contact",
                }
        else:
            decisions.append(item)
    return Settled(decisions, taken, trace)


def audit_record(plan: Plan, decision: Decision, trace: list[dict[str, Any]]) -> dict[str, Any]:
    """What a decision's audit record says: who, what, why, and the whole trace. A dict
    rather than a struct: it is written once, as JSON, and read back as JSON
    (`GET /v1/decisions/{id}`), and unlike a `Decision` it always names `offer`."""
    return {
        "id": decision.id,
        "at_ms": plan.now_ms,
        "site": plan.site,
        "customer_id": plan.customer_id,
        "anonymous_id": plan.anonymous_id,
        "prefix": plan.prefix,
        "rule": decision.rule,
        "action": decision.action,
        "channel": decision.channel,
        "offer": decision.offer,
        "rule_set": plan.rule_set.version,
        "model": decision.model,
        "factors": decision.factors,
        "features": plan.features,
        "holdout": decision.holdout,
        "inputs": sorted(rule_inputs(plan.rule_set, decision.rule)),
        "trace": trace,
        "attribution": plan.attribution,
        "segments": sorted(plan.segments),
        "branch": plan.branch,
        "customer_value": plan.customer_value,
    }


# -- who the decisions are about ---------------------------------------------------------

# Last touch and first touch, as the profile keeps them (`profile["campaign"]`), under
# the names records and reports use.
_ATTRIBUTION = (
    ("utm_campaign", "campaign"),
    ("utm_source", "source"),
    ("utm_medium", "medium"),
    ("utm_term", "term"),
    ("utm_content", "content"),
    ("referrer", "referrer"),
    ("first_utm_campaign", "first_campaign"),
    ("first_utm_source", "first_source"),
    ("first_utm_medium", "first_medium"),
    ("first_referrer", "first_referrer"),
)
_NO_SEGMENTS: frozenset[str] = frozenset()
_EMPTY: Mapping[str, Any] = {}
_DIM_UNSAFE = re.compile(r"[^a-z0-9_.\-]+")
DIM_MAX = 64  # characters of a dimension's value
# A campaign the rule set does not declare, when it declares any (the reports' own
# "(other)": engine/delivery/uplift.py OTHER).
OTHER_CAMPAIGN = "(other)"


def attribution(profile: Mapping[str, Any], campaigns: Container[str] = ()) -> dict[str, str]:
    """The campaign a decision is attributed to: the profile's last and first touch,
    only what is known.

    When the rule set declares `campaigns` (their ids), a last-touch campaign also gets
    `reported_campaign`: its declared id (the cleaned name, any case), else "(other)".
    It is worked out here, once, and recorded with the decision, so `dims` and the
    records' `dims_of` (conversions, later) count it under the same name even if the
    declared list changed in between, and neither needs the rule set.

    >>> attribution({"campaign": {"utm_campaign": "spring", "referrer": "www.google.com",
    ...                           "first_utm_source": "news", "ts": 5}})
    {'campaign': 'spring', 'referrer': 'www.google.com', 'first_source': 'news'}
    >>> attribution({"campaign": {"utm_campaign": "Spring"}}, {"spring", "card"})
    {'campaign': 'Spring', 'reported_campaign': 'spring'}
    >>> attribution({"campaign": {"utm_campaign": "x1"}}, {"spring"})["reported_campaign"]
    '(other)'
    """
    campaign = profile.get("campaign") or _EMPTY
    if not campaign:
        return {}
    out: dict[str, str] = {}
    for stored, name in _ATTRIBUTION:
        v = campaign.get(stored)
        if isinstance(v, str) and v:
            out[name] = v
    if campaigns and (c := out.get("campaign")):
        cleaned = _dim(c)
        out["reported_campaign"] = cleaned if cleaned in campaigns else OTHER_CAMPAIGN
    return out


@functools.lru_cache(maxsize=1024)  # campaigns and branches repeat
def _dim(value: str) -> str:
    """A dimension's value as reports key it: lower case, `[a-z0-9_.-]`, clipped (a
    campaign name is whatever a link said)."""
    return _DIM_UNSAFE.sub("_", value.lower())[:DIM_MAX] or "_"


def dims(
    attributed: Mapping[str, str], segments: frozenset[str], branch: str, value: float
) -> tuple[tuple[str, str], ...]:
    """A decision's report dimensions: campaign (last touch, as `reported_campaign`
    when `attribution` set one from the declared campaigns; else "(referral)" with a
    referrer, else "(direct)"), each segment (or "(none)"), branch (or "(none)") and the
    customer value's band. Every decision has each dimension, so campaign, branch and value
    each add up to the total (a visitor in two segments counts in both).

    >>> for d in dims({"campaign": "Spring Mortgage"}, frozenset({"b", "a"}), "b12", 70.0):
    ...     print(*d)
    campaign spring_mortgage
    segment a
    segment b
    branch b12
    value high
    >>> dims({"referrer": "www.google.com"}, frozenset(), "", 10.0)
    (('campaign', '(referral)'), ('segment', '(none)'), ('branch', '(none)'), ('value', 'low'))
    >>> dims({"campaign": "x1", "reported_campaign": "(other)"}, frozenset(), "", 10.0)[0]
    ('campaign', '(other)')
    """
    if r := attributed.get("reported_campaign"):
        campaign = r if r == OTHER_CAMPAIGN else _dim(r)
    elif c := attributed.get("campaign"):
        campaign = _dim(c)
    else:
        campaign = "(referral)" if attributed.get("referrer") else "(direct)"
    out = [("campaign", campaign)]
    out += [("segment", s) for s in sorted(segments)] or [("segment", "(none)")]
    out.append(("branch", _dim(branch) if branch else "(none)"))
    out.append(("value", band(value)))
    return tuple(out)


class _About(msgspec.Struct, frozen=True, gc=False):
    """What records and counts say about who a plan's decisions are for."""

    value: float = 0.0
    attribution: dict[str, str] = {}
    segments: tuple[str, ...] = ()  # sorted
    branch: str = ""
    dims: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        profile: Mapping[str, Any],
        customer: Mapping[str, Any],
        segments: frozenset[str],
        value: float,
        campaigns: Container[str] = (),
    ) -> _About:
        attributed = attribution(profile, campaigns)
        b = customer.get("branch")
        branch = b if isinstance(b, str) else ""
        return cls(
            value,
            attributed,
            tuple(sorted(segments)),
            branch,
            dims(attributed, segments, branch, value),
        )


_NOBODY = _About()


# -- steps -------------------------------------------------------------------------------


def _event_dict(inp: DecisionInput, classify: Callable[[str | None], str]) -> dict[str, Any] | None:
    # The first of the highest (rank, ts), as `max` picks: by hand, every batch pays it.
    ev = None
    best = (0, 0)
    kind = ""
    for e in inp.events:
        t = event_type(e)
        rank = (_EVENT_RANK.get(t, 0), e.ts)
        if ev is None or rank > best:
            ev, best, kind = e, rank, t
    if ev is None:
        return None
    props = getattr(ev, "props", None)
    return {
        "type": kind,
        "page": ev.page,
        "category": classify(ev.page),
        "ts": ev.ts,
        "props": msgspec.structs.asdict(props) if props is not None else {},
    }


def _offer_product(rs: RuleSet, rule: Rule) -> str | None:
    offer = rs.offers.get(rule.offer) if rule.offer else None
    return offer.product if offer is not None and offer.product else None


def _eligibility(
    rule: Rule, inp: DecisionInput, rs: RuleSet, now: int, capacity: Capacity
) -> tuple[Channel, int | None, str | None]:
    """(channel, scheduled_for, why_not)."""
    channel = rule.channel
    scheduled = None
    if rule.action == _CALLBACK:
        c = inp.customer
        if not inp.customer_id:
            return channel, None, "anonymous"
        if c.get("do_not_call") is True:
            if not rule.fallback:
                return channel, None, "do_not_call"
            channel = rule.fallback
        elif c.get("consent_call") is not True and not asked_for_call(
            inp.profile, now, _offer_product(rs, rule)
        ):
            if not rule.fallback:
                return channel, None, "no_consent"
            channel = rule.fallback
    if rule.policy.calendar and channel == _PHONE:
        cal = rs.calendars[rule.policy.calendar]
        if not cal.is_open(now):
            if rule.policy.outside_hours == "schedule":
                scheduled = cal.next_open(now)
            elif rule.policy.outside_hours == "fallback" and rule.fallback:
                channel = rule.fallback
            else:
                return channel, None, "outside_hours"
    if channel == _PHONE and capacity.overloaded(rule.policy.max_queue_per_agent):
        # The floor cannot answer in time: same choices as outside business hours.
        if rule.policy.outside_hours == "fallback" and rule.fallback:
            channel = rule.fallback
        else:
            return channel, None, "no_capacity"
    return channel, scheduled, None


def _holdout_decision(
    rule: Rule,
    channel: Channel,
    rs: RuleSet,
    feats: dict[str, float | str],
    models: Models,
    offer_key: bytes,
    subject: str,
    now: int,
    who: Sequence[Callable[[], _About]] = (),
) -> Decision:
    """What a control-group member would have been given: recorded (audit record,
    uplift counts, conversions attributed to it), never shown or sent.

    Its id is stable per subject and rule for a window as long as the rule's cooldown
    (at least the page-offer window), so a member browsing under a matching rule counts
    about as often as a treated one, whom the cooldown lets be contacted once per
    window; a fresh id per batch would swell the control group."""
    offer = rs.offers.get(rule.offer) if rule.offer else None
    factors, model = _factors(rule, rs, feats, models, None, who)
    window_ms = max(rule.policy.cooldown_s * 1000, OFFER_DECISION_WINDOW_MS)
    start = now - now % window_ms
    msg = f"holdout\0{subject}\0{rule.id}\0{rs.version}\0{start}".encode()
    decision_id = f"{start:012x}{hashlib.blake2b(msg, key=offer_key, digest_size=6).hexdigest()}"
    return Decision(
        decision_id,
        rule.action,
        rule.id,
        channel,
        factors,
        model,
        rule.slot if rule.action == _OFFER else None,
        offer.public() if offer is not None else None,
        holdout=True,
    )


def suppressed_decision(
    plan: Plan,
    inp: DecisionInput,
    rule_id: str,
    reason: str,
    offer_key: bytes,
    models: Models,
    channel: Channel | None = None,
    skip: Container[str] = (),
) -> tuple[Decision, dict[str, float | str]] | None:
    """The contact a matching rule would have made, had eligibility (no consent,
    do-not-call, quiet hours, no capacity) or contact policy (cooldown, daily cap,
    `reason`) not suppressed it: recorded, so the audit answers "why was this customer
    not called?". Returns it with the feature snapshot it was scored on (the plan's, or
    computed now when no rule was eligible); None for an offer rule (offers lose slots
    every batch: no 'why not called'), a rule not in the set, or an id in `skip` (what
    the caller already recorded: nothing is built for those, one hash per batch).

    Its id is stable per subject, rule, reason and window (the rule's cooldown, at least
    the page-offer window), like a holdout's: a visitor browsing for an hour under a
    rule on cooldown is one record per window, not one per batch."""
    rs = plan.rule_set
    rule = next((r for r in rs.rules if r.id == rule_id), None)
    if rule is None or rule.action == _OFFER:
        return None
    now = plan.now_ms
    subject = plan.customer_id or f"{plan.site}:{plan.anonymous_id}"
    window_ms = max(rule.policy.cooldown_s * 1000, OFFER_DECISION_WINDOW_MS)
    start = now - now % window_ms
    msg = f"suppressed\0{reason}\0{subject}\0{rule.id}\0{rs.version}\0{start}".encode()
    decision_id = f"{start:012x}{hashlib.blake2b(msg, key=offer_key, digest_size=6).hexdigest()}"
    if decision_id in skip:
        return None
    feats = plan.features or features(
        inp.profile, inp.customer, inp.events, now, _zone(rs), plan.segments
    )
    factors, model = _factors(rule, rs, feats, models, None, plan._who)
    offer = rs.offers.get(rule.offer) if rule.offer else None
    decision = Decision(
        decision_id,
        rule.action,
        rule.id,
        channel or rule.channel,
        factors,
        model,
        offer=offer.public() if offer is not None else None,
    )
    return decision, feats


def _factors(
    rule: Rule,
    rs: RuleSet,
    feats: dict[str, float | str],
    models: Models,
    z: float | None = None,
    who: Sequence[Callable[[], _About]] = (),
) -> tuple[dict[str, float], dict[str, Any]]:
    """(factors, model): propensity from the rule's model (or its prior, or 1.0 with
    none published), value and lever from the rule set, score their product; the
    value is floored at 0.01 so a rule without a value still ranks by propensity.

    With a standard-normal draw `z` (offers: `exploration_draw`) and a published model,
    `sampled` is the propensity drawn from the model's posterior (`estimate`), what the
    offer ranks by; `propensity` and `score` stay the posterior mean's (the estimate an
    audit or a calibration check wants), so an explored offer is one whose score is
    not the slot's highest.

    With a customer value weight w for the rule (its own `customer_value_weight`, else
    the set's `arbitration: {customer_value_weight}`), the score is multiplied by
    `customer_value_boost` = 1 + w x customer value / 100 (the value from `who`, the
    plan's), which the factors name; with none (the default) the factors are exactly
    what they were before it existed."""
    facts = RuleFacts.of(rule, rs.offers, rs.levers)
    return _factors_of(estimate(models, facts.model, feats, z), rule, facts, models, who)


def _factors_of(
    est: Estimate | None,
    rule: Rule,
    facts: RuleFacts,
    models: Models,
    who: Sequence[Callable[[], _About]] = (),
) -> tuple[dict[str, float], dict[str, Any]]:
    """`_factors` from the rule's estimate (None: no model published for it, which
    estimates 1.0 from no features)."""
    if est is None:
        est = estimate(models, facts.model, _NO_FEATURES)
    value = facts.value
    lever = facts.lever
    score = est.propensity * facts.floor * lever
    factors = {"propensity": est.propensity, "value": value, "lever": lever, "score": score}
    if rule.value_weight > 0:
        boost = 1.0 + rule.value_weight * (who[0]().value if who else 0.0) / 100
        factors["customer_value_boost"] = boost
        factors["score"] = score * boost
    if est.sampled is not None:
        factors["sampled"] = est.sampled
    return factors, {"name": est.model, "version": est.version, "source": est.source}


_NO_FEATURES: dict[str, float | str] = {}


_STANDARD_NORMAL = NormalDist()


def exploration_draw(key: bytes, subject: str, now_ms: int, rule_id: str) -> float:
    """The standard-normal draw an offer's Thompson sample uses: a keyed hash of
    (subject, rule, page-offer window) through the normal's inverse CDF. Deterministic,
    so deciding stays pure and a replayed recording makes the same choices; keyed by
    the page-offer key, so a visitor cannot predict it; the same for the whole
    10-minute window in which the page offer keeps its decision id, so a visitor does
    not see the slot flip from page to page, and draws afresh in the next window.

    >>> w = OFFER_DECISION_WINDOW_MS
    >>> exploration_draw(b"k", "cust-1", 1_500, "r") == exploration_draw(b"k", "cust-1", w - 1, "r")
    True
    >>> exploration_draw(b"k", "cust-1", 1_500, "r") == exploration_draw(b"k", "cust-1", w, "r")
    False
    """
    msg = f"explore\0{subject}\0{rule_id}\0{now_ms // OFFER_DECISION_WINDOW_MS}".encode()
    h = int.from_bytes(hashlib.blake2b(msg, key=key, digest_size=8).digest(), "big")
    u = (2 * (h >> 12) + 1) / 2**53  # 52 bits, odd numerator: strictly inside (0, 1)
    return _STANDARD_NORMAL.inv_cdf(u)


def _zone(rs: RuleSet) -> ZoneInfo | None:
    """The zone hour and weekday features are read in: the rule set's first contact
    calendar's (the bank's own), else UTC. Sites have no zone of their own yet."""
    for cal in rs.calendars.values():
        return cal.zone
    return None


def _contact(
    decision: Decision,
    rule: Rule,
    offer: Offer | None,
    inp: DecisionInput,
    rs: RuleSet,
    prefix: str,
    now: int,
    scheduled: int | None,
    about: _About,
) -> Contact:
    """A contact candidate: its reservation, its history entry and its trigger."""
    day = ""
    if rule.policy.calendar and rule.policy.calendar in rs.calendars:
        day = rs.calendars[rule.policy.calendar].day_key(now)
    chosen = decision.channel
    reservation = Reservation(
        rule.id,
        chosen,
        rule.policy.cooldown_s,
        rule.policy.channel_cooldown_s,
        rule.policy.max_per_day,
        day,
    )
    history = {
        "kind": "decision",
        "decision_id": decision.id,
        "rule": rule.id,
        "action": decision.action,
        "channel": chosen,
        "offer": offer.id if offer else "",
        "ts": now,
    }
    p = inp.profile
    vip = inp.customer.get("value_tier") in ("vip", "private")
    pages = [str(x).partition(" ")[2] for x in (p.get("pages") or [])][:5]
    trigger = Trigger(
        id=decision.id,
        kind=trigger_kind(decision.action, chosen),
        channel=chosen,
        rule=rule.id,
        reason=rule.description or rule.id,
        customer_id=inp.customer_id or "",
        anonymous_id=inp.anonymous_id,
        site=inp.site,
        prefix=prefix,
        priority=rule.priority + (100 if vip else 0),
        vip=vip,
        online=bool(p.get("online")),
        online_until=p.get("online_until") or 0,  # presence needs no read until then
        created_ms=now,
        expires_ms=(scheduled or now) + rule.policy.expires_s * 1000,
        scheduled_for=scheduled or "",
        factors=decision.factors,
        model=decision.model,
        context={
            "calc": p.get("calc", {}),
            "intent": p.get("intent", {}),
            "pages": pages,
            "last_page": p.get("last_page"),
            "offer": decision.offer,
            "language": inp.customer.get("language"),
        },
        attribution=about.attribution,
        segments=list(about.segments),
        branch=about.branch,
        customer_value=about.value,
    )
    return Contact(rule.id, chosen, decision, reservation, history, trigger)
