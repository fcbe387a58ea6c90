"""The decision step: rules -> eligibility -> arbitration -> contact policy -> delivery.

For each batch (and each page load or screen-pop) the current rule set is evaluated
against the live profile. Matching rules become candidates; candidates are filtered
by eligibility (a callback needs a known customer who consented, in the CRM or by
pressing "call me" within the hour, and is not on the
do-not-call list; calendars decide business hours; a stable hash puts a share of
customers in the rule's control group), ranked by propensity x value x lever, cut to
one offer per slot and one contact per batch, and contacts are reserved atomically in
Valkey (cooldowns, daily caps), so two workers racing on one customer fire once.
Every decision gets an id and an audit record saying why, including the rules that
did not fire and what suppressed them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from engine import keys
from engine.capacity import Capacity, enqueue, is_phone_work
from engine.decide import DecisionInput
from engine.decisions.expr import UNKNOWN
from engine.decisions.loader import Rule, RuleSet
from engine.deliver import new_decision_id, write_audit, write_trigger
from engine.metrics import Metrics
from engine.policy import Reservation, reserve
from engine.schema import event_type
from engine.store import Store

__all__ = [
    "CALL_REQUEST_CONSENT_S",
    "RulesDecider",
    "asked_for_call",
    "holdout",
    "trigger_kind",
]

# Which event of a batch a rule sees as `event`: the most intent-revealing one.
_EVENT_RANK = {
    "interest": 6,
    "calc": 5,
    "form": 4,
    "page_view": 3,
    "click": 2,
    "scroll": 1,
    "heartbeat": 0,
    "custom": 0,
}


# A visitor who pressed "call me" consented to that call: for this long the request
# stands in for the CRM's consent_call (do-not-call still wins; it is the bank's list).
CALL_REQUEST_CONSENT_S = 3600


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


def trigger_kind(action: str, channel: str) -> str:
    """What a fired contact is, from the channel eligibility actually chose: only a
    phone callback is agents' work ("callback": on the capacity queue, claimable on the
    dashboard); a callback that fell back to e-mail or SMS (do-not-call, no consent,
    outside hours) is a notification, for webhooks only. An agent must never be able
    to claim, and phone, a do-not-call customer.

    >>> trigger_kind("callback", "callback"), trigger_kind("callback", "email")
    ('callback', 'notify')
    >>> trigger_kind("notify", "sms")
    'notify'
    """
    return "callback" if action == "callback" and channel == "callback" else "notify"


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


def _event_dict(inp: DecisionInput, classify: Callable[[str | None], str]) -> dict[str, Any] | None:
    if not inp.events:
        return None
    ev = max(inp.events, key=lambda e: (_EVENT_RANK.get(event_type(e), 0), e.ts))
    props = getattr(ev, "props", None)
    return {
        "type": event_type(ev),
        "page": ev.page,
        "category": classify(ev.page),
        "ts": ev.ts,
        "props": {f: getattr(props, f) for f in props.__struct_fields__}
        if props is not None
        else {},
    }


# The same page offer for the same visitor, rule and rule set within this window is
# one decision: one id, one audit record (written the first time, with the inputs that
# led to it). Without it every batch of a visitor browsing under an offer wrote a fresh
# audit record: 23 % of ingest throughput at 10-event batches (benchmarks/RESULTS.md).
OFFER_DECISION_WINDOW_MS = 10 * 60_000
# Offer decisions this worker has audited (id -> None), oldest first; a cache only:
# another worker (same key, same id), or this one after eviction, writes it again.
_AUDITED_MAX = 50_000


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
    msg = f"{subject}\0{rule_id}\0{offer_id}\0{version}\0{start}".encode()
    return f"{start:012x}{hashlib.blake2b(msg, key=key, digest_size=6).hexdigest()}"


def _rank(factors: dict[str, Any], rule: Rule) -> float:
    """Propensity x value x lever, with the rule's priority as the tie-breaker on top."""
    score = factors["propensity"] * max(factors["value"], 0.01) * factors["lever"]
    return float(score) + rule.priority


def _offer_product(rs: RuleSet, rule: Rule) -> str | None:
    offer = rs.offers.get(rule.offer) if rule.offer else None
    return offer.product if offer is not None and offer.product else None


class RulesDecider:
    """Implements `engine.decide.Decider` over a hot-reloadable rule set."""

    def __init__(
        self,
        rules: Callable[[], RuleSet],
        store: Store,
        metrics: Metrics,
        classify: Callable[[str | None], str],
        capacity: Callable[[], Capacity] = Capacity,
        offer_key: bytes | None = None,
    ) -> None:
        self._rules = rules
        self.capacity = capacity
        self.store = store
        self.metrics = metrics
        self.classify = classify
        self._hit_counters: dict[str, Any] = {}  # .labels() costs ~1 us: bind once per rule
        # Keys the page-offer decision ids: every worker of a deployment needs the same
        # one (the app derives it from the config's secrets) so the same visitor gets
        # the same decision, and one audit record, from whichever worker answers.
        self._offer_key = offer_key if offer_key is not None else os.urandom(16)
        self._audited: OrderedDict[str, None] = OrderedDict()

    async def decide(self, inp: DecisionInput) -> list[dict[str, Any]]:
        rs = self._rules()
        now = inp.now_ms or int(time.time() * 1000)
        subject = inp.customer_id or f"{inp.site}:{inp.anonymous_id}"
        variables = {
            "event": _event_dict(inp, self.classify),
            "profile": inp.profile,
            "session": inp.profile.get("session", {}),
            "customer": inp.customer,
            "now": now,
            "score": inp.profile.get("scores", {}),
        }
        trace: dict[str, dict[str, Any]] = {}
        eligible: list[tuple[Rule, str, int | None]] = []
        today = None
        for rule in rs.rules:
            if rule.enabled_from is not None or rule.enabled_until is not None:
                today = today or dt.datetime.fromtimestamp(now / 1000, tz=dt.UTC).date()
                if not rule.enabled_on(today):
                    continue
            result = rule.when._fn(variables)  # the compiled closure, no method hop
            if result is not True:
                if result is UNKNOWN:
                    trace[rule.id] = {
                        "rule": rule.id,
                        "result": "unknown",
                        "why": "a value it needs is missing",
                    }
                continue
            hits = self._hit_counters.get(rule.id)
            if hits is None:
                hits = self._hit_counters[rule.id] = self.metrics.rule_hits.labels(rule.id)
            hits.inc()
            channel, scheduled, why_not = self._eligibility(rule, inp, rs, now)
            if why_not is None and holdout(subject, rule.id, rule.holdout_pct):
                why_not = "holdout"
            if why_not is not None:
                self.metrics.rule_suppressed.labels(rule.id, why_not).inc()
                trace[rule.id] = {"rule": rule.id, "result": "suppressed", "why": why_not}
                continue
            trace[rule.id] = {"rule": rule.id, "result": "matched", "channel": channel}
            eligible.append((rule, channel, scheduled))

        # Factors once per candidate: ranking and the decision record both use them.
        scored = [(self._factors(rule, rs, variables), rule, ch, sch) for rule, ch, sch in eligible]
        scored.sort(key=lambda c: -_rank(c[0], c[1]))
        decisions: list[dict[str, Any]] = []
        deliveries: list[Awaitable[Any]] = []
        fired: list[tuple[str, str]] = []  # (rule, channel) of the triggers written
        slots: set[str] = set()
        contacted = False
        prefix = (
            keys.customer_prefix(inp.customer_id)
            if inp.customer_id
            else keys.anonymous_prefix(inp.site, inp.anonymous_id)
        )
        for factors, rule, channel, scheduled in scored:
            if rule.action == "offer" and rule.slot in slots:
                self._note(trace, rule, "suppressed", "slot_taken")
                continue
            offer = rs.offers.get(rule.offer) if rule.offer else None
            if rule.action == "offer":
                slots.add(rule.slot)
                decision_id = offer_decision_id(
                    self._offer_key, subject, rule.id, offer.id if offer else "", rs.version, now
                )
                decision = self._decision(rule, "offer", channel, offer, factors, decision_id)
            else:
                if contacted:  # one contact per batch: the best-ranked one
                    self._note(trace, rule, "suppressed", "lower_ranked_contact")
                    continue
                if not inp.events:
                    continue  # screen-pops and page loads show offers, they don't call
                decision = self._decision(
                    rule, rule.action, channel, offer, factors, new_decision_id(now)
                )
                day = ""
                if rule.policy.calendar and rule.policy.calendar in rs.calendars:
                    day = rs.calendars[rule.policy.calendar].day_key(now)
                why = await reserve(
                    self.store,
                    prefix,
                    Reservation(
                        rule.id,
                        channel,
                        rule.policy.cooldown_s,
                        rule.policy.channel_cooldown_s,
                        rule.policy.max_per_day,
                        day,
                    ),
                    {
                        "kind": "decision",
                        "decision_id": decision["id"],
                        "rule": rule.id,
                        "action": rule.action,
                        "channel": channel,
                        "offer": offer.id if offer else "",
                        "ts": now,
                    },
                    now,
                )
                if why is not None:
                    self.metrics.rule_suppressed.labels(rule.id, why).inc()
                    self._note(trace, rule, "suppressed", why)
                    continue
                contacted = True
                trigger = self._trigger(decision, rule, channel, offer, inp, prefix, now, scheduled)
                deliveries.append(write_trigger(self.store, prefix, trigger))
                if is_phone_work(trigger):  # phone work only: never an e-mail fallback
                    deliveries.append(enqueue(self.store, trigger["id"], trigger["expires_ms"]))
                fired.append((rule.id, channel))
            decisions.append(decision)

        new_offers: list[str] = []  # offer decisions to remember once their record is out
        for d in decisions:
            if d["action"] == "offer":
                if d["id"] in self._audited:
                    self._audited.move_to_end(d["id"])
                    continue
                new_offers.append(d["id"])
            deliveries.append(
                write_audit(
                    self.store,
                    d["id"],
                    {
                        "id": d["id"],
                        "at_ms": now,
                        "site": inp.site,
                        "customer_id": inp.customer_id,
                        "anonymous_id": inp.anonymous_id,
                        "prefix": prefix,
                        "rule": d["rule"],
                        "action": d["action"],
                        "channel": d["channel"],
                        "offer": d.get("offer"),
                        "rule_set": rs.version,
                        "model_version": None,
                        "factors": d["factors"],
                        "inputs": sorted(rs_rule_inputs(rs, d["rule"])),
                        "trace": list(trace.values()),
                    },
                )
            )
        # Trigger, callback queue and audit records go out together: started in one
        # loop tick, the store sends them as one pipeline (one round trip after the
        # reservation, not one per write).
        if deliveries:
            await asyncio.gather(*deliveries)
        for rule_id, channel in fired:
            self.metrics.event_to_trigger_seconds.observe(max(0.0, time.time() - now / 1000))
            self.metrics.triggers.labels(channel).inc()
            self.metrics.rule_triggers.labels(rule_id).inc()
        for decision_id in new_offers:  # remembered once written, not before
            self._audited[decision_id] = None
            if len(self._audited) > _AUDITED_MAX:
                self._audited.popitem(last=False)
        return decisions

    # -- steps ---------------------------------------------------------------------------

    def _eligibility(
        self, rule: Rule, inp: DecisionInput, rs: RuleSet, now: int
    ) -> tuple[str, int | None, str | None]:
        """(channel, scheduled_for, why_not)."""
        channel = rule.channel
        scheduled = None
        if rule.action == "callback":
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
        if rule.policy.calendar and channel == "callback":
            cal = rs.calendars[rule.policy.calendar]
            if not cal.is_open(now):
                if rule.policy.outside_hours == "schedule":
                    scheduled = cal.next_open(now)
                elif rule.policy.outside_hours == "fallback" and rule.fallback:
                    channel = rule.fallback
                else:
                    return channel, None, "outside_hours"
        if channel == "callback" and self.capacity().overloaded(rule.policy.max_queue_per_agent):
            # The floor cannot answer in time: same choices as outside business hours.
            if rule.policy.outside_hours == "fallback" and rule.fallback:
                channel = rule.fallback
            else:
                return channel, None, "no_capacity"
        return channel, scheduled, None

    def _propensity(self, rule: Rule, variables: dict[str, Any]) -> float:
        scores = variables.get("score") or {}
        value = scores.get(rule.id) if isinstance(scores, dict) else None
        return float(value) if isinstance(value, int | float) else 1.0

    def _factors(self, rule: Rule, rs: RuleSet, variables: dict[str, Any]) -> dict[str, Any]:
        offer = rs.offers.get(rule.offer) if rule.offer else None
        return {
            "propensity": self._propensity(rule, variables),
            "value": rule.value or (offer.value if offer else 0.0),
            "lever": rs.levers.get(offer.product if offer else "", 1.0),
        }

    @staticmethod
    def _note(trace: dict[str, dict[str, Any]], rule: Rule, result: str, why: str) -> None:
        trace[rule.id].update(result=result, why=why)

    @staticmethod
    def _decision(
        rule: Rule, action: str, channel: str, offer: Any, factors: dict[str, Any], decision_id: str
    ) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": decision_id,
            "action": action,
            "rule": rule.id,
            "channel": channel,
            "factors": factors,
        }
        if action == "offer":
            d["slot"] = rule.slot
        if offer is not None:
            d["offer"] = offer.public()
        return d

    def _trigger(
        self,
        decision: dict[str, Any],
        rule: Rule,
        channel: str,
        offer: Any,
        inp: DecisionInput,
        prefix: str,
        now: int,
        scheduled: int | None,
    ) -> dict[str, Any]:
        p = inp.profile
        vip = inp.customer.get("value_tier") in ("vip", "private")
        pages = [str(x).partition(" ")[2] for x in (p.get("pages") or [])][:5]
        return {
            "id": decision["id"],
            "kind": trigger_kind(rule.action, channel),
            "channel": channel,
            "rule": rule.id,
            "reason": rule.description or rule.id,
            "customer_id": inp.customer_id or "",
            "anonymous_id": inp.anonymous_id,
            "site": inp.site,
            "prefix": prefix,
            "priority": rule.priority + (100 if vip else 0),
            "vip": vip,
            "online": bool(p.get("online")),
            "online_until": p.get("online_until") or 0,  # presence needs no read until then
            "created_ms": now,
            "expires_ms": (scheduled or now) + rule.policy.expires_s * 1000,
            "scheduled_for": scheduled or "",
            "context": {
                "calc": p.get("calc", {}),
                "intent": p.get("intent", {}),
                "pages": pages,
                "last_page": p.get("last_page"),
                "offer": offer.public() if offer else None,
                "language": inp.customer.get("language"),
            },
        }


def rs_rule_inputs(rs: RuleSet, rule_id: str) -> set[str]:
    for r in rs.rules:
        if r.id == rule_id:
            return set(r.when.names)
    return set()
