"""The decision step: decide (pure) -> contact policy -> delivery -> metrics.

For each batch (and each page load or screen-pop) `engine.decisions.plan.decide`
evaluates the current rule set against the live profile and returns a `Plan`: the
offers, one per slot, and the contact candidates, ranked, with the full trace. This
module carries the plan out: it reserves the contacts atomically in Valkey in rank
order (cooldowns, daily caps; two workers racing on one customer fire once), stopping
at the first one policy allows (one contact per batch), then writes that contact's
trigger, queues phone work, writes the audit records, and counts what happened.
Every decision gets an id and an audit record saying why, including the rules that
did not fire and what suppressed them. A batch's segment entries and exits, and the
per-day segment counts, go out with the same writes (engine/delivery/segment_counts.py),
and every count of a decision carries the plan's report dimensions (`Plan.dims`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from engine.core.metrics import Metrics
from engine.core.vocabulary import Action, Channel
from engine.decisions.inputs import Capacity, DecisionInput
from engine.decisions.loader import RuleSet
from engine.decisions.plan import (
    Contact,
    audit_record,
    decide,
    settle,
    suppressed_decision,
)
from engine.decisions.precheck import Candidates
from engine.delivery.queue import enqueue
from engine.delivery.records import write_audit, write_trigger
from engine.delivery.segment_counts import SegmentCounter
from engine.delivery.uplift import count_decision
from engine.models.registry import NO_MODELS, Models
from engine.profile.contact_history import append_history, release, reserve
from engine.valkey.store import Store

__all__ = ["RulesDecider"]

# Offer decisions this worker has audited (id -> None), oldest first; a cache only:
# another worker (same key, same id), or this one after eviction, writes it again.
_AUDITED_MAX = 50_000


_OFFER = Action.OFFER  # bound once: a member lookup on the class costs ~110 ns (3.11)

# Eligibility suppressions a contact rule's record is written for (with every contact
# policy refusal: cooldowns, daily cap). Not `anonymous` (no one to call: every new
# visitor matching a callback rule would write one), not `holdout` (the control
# group's decision is recorded as such).
_RECORDED_ELIGIBILITY = frozenset({"do_not_call", "no_consent", "outside_hours", "no_capacity"})

_UNMEASURED = Capacity()  # frozen: one for every call (building one costs ~0.5 us)


def _unmeasured() -> Capacity:
    """No capacity monitor: the floor is never reported overloaded."""
    return _UNMEASURED


class RulesDecider:
    """Implements `engine.decisions.inputs.Decider` over a hot-reloadable rule set."""

    def __init__(
        self,
        rules: Callable[[], RuleSet],
        store: Store,
        metrics: Metrics,
        classify: Callable[[str | None], str],
        capacity: Callable[[], Capacity] = _unmeasured,
        offer_key: bytes | None = None,
        models: Callable[[], Models] = lambda: NO_MODELS,
    ) -> None:
        self._rules = rules
        self.capacity = capacity
        self.models = models  # the registry's current set: swapped whole, read per batch
        self.store = store
        self.metrics = metrics
        self.classify = classify
        self._hit_counters: dict[str, Any] = {}  # .labels() costs ~1 us: bind once per rule
        # Rule hits added to the Prometheus counters a second after the first one since
        # the last flush, before every /metrics render and at shutdown: an `inc` takes
        # a lock and a batch at 50 rules can match 18 of them (valgrind: -9 %
        # instructions a decide). Until then each plan's list of hits is only kept, and
        # counted when flushed (one C loop per second, not a dict update per hit).
        self._hits: list[list[str]] = []
        # The offer bandit's slots filled and explored since the last flush, likewise.
        self._slots = self._explored = 0
        self._hits_timer: asyncio.TimerHandle | None = None  # the pending flush
        metrics.before_render.append(self.flush_hits)
        # Keys the page-offer decision ids: every worker of a deployment needs the same
        # one (the app derives it from the config's secrets) so the same visitor gets
        # the same decision, and one audit record, from whichever worker answers.
        self._offer_key = offer_key if offer_key is not None else os.urandom(16)
        self._audited: OrderedDict[str, None] = OrderedDict()
        self._candidates: Candidates | None = None  # the current rule set's pre-checks
        self.segments = SegmentCounter(store, metrics, self._offer_key)

    def flush_hits(self) -> None:
        """Add the rule hits counted since the last flush to `ringback_rule_hits_total`."""
        if self._hits_timer is not None:
            self._hits_timer.cancel()
            self._hits_timer = None
        pending, self._hits = self._hits, []
        if self._slots:
            self.metrics.offer_slots.inc(self._slots)
            self._slots = 0
        if self._explored:
            self.metrics.offer_explored.inc(self._explored)
            self._explored = 0
        counted: Counter[str] = Counter()
        for batch in pending:
            counted.update(batch)
        for rule_id, n in counted.items():
            hits = self._hit_counters.get(rule_id)
            if hits is None:
                hits = self._hit_counters[rule_id] = self.metrics.rule_hits.labels(rule_id)
            hits.inc(n)

    def reservations(self, customer_id: str | None, now_ms: int) -> list[dict[str, Any]]:
        """The contacts the profile update may reserve for (`engine.decisions.precheck`):
        none for an anonymous visitor, or when no contact rule has a pre-check."""
        if customer_id is None:
            return []
        rs = self._rules()
        cands = self._candidates
        if cands is None or cands.rules is not rs:  # a new rule set: derive once
            cands = self._candidates = Candidates(rs)
        return cands.for_batch(customer_id, now_ms, self.capacity())

    async def decide(self, inp: DecisionInput) -> list[dict[str, Any]]:
        now = inp.now_ms or int(time.time() * 1000)
        models = self.models()
        plan = decide(
            self._rules(),
            inp,
            now,
            self.capacity(),
            self._offer_key,
            self.classify,
            models=models,
        )
        if plan.hits or plan.slots:
            self._hits.append(plan.hits)
            self._slots += plan.slots  # the offer bandit's exploration share
            self._explored += plan.explored
            if self._hits_timer is None:  # counted within a second, even if all goes quiet
                self._hits_timer = asyncio.get_running_loop().call_later(1.0, self.flush_hits)
        suppressed = self.metrics.rule_suppressed
        for rule_id, reason in plan.suppressions:
            suppressed.labels(rule_id, reason).inc()

        # Contact policy first, atomically, best-ranked first: the first contact it
        # allows is the batch's one contact.
        # The profile update may already have checked (and taken) the policy of
        # contacts whose pre-check held (`engine.decisions.precheck`): a verdict from
        # it stands (same atomic check, one round trip fewer); the rest reserve here.
        refused: list[tuple[Contact, str]] = []
        taken: Contact | None = None
        verdicts: dict[tuple[str, ...], tuple[str, ...]] = {}
        held: tuple[str, ...] | None = None
        if inp.reservations:
            verdicts = {(v[0], v[1]): v for v in inp.reservations}
            held = next((v for v in inp.reservations if v[2] == "ok"), None)
        if plan.contacts:
            # The feature snapshot records carry is built on first read: take it now,
            # before awaiting Valkey, as deciding saw the profile.
            _ = plan.features
        round_trips = inp.round_trips
        prepaid = False  # the taken contact's reservation came with the profile update
        for contact in plan.contacts:
            v = verdicts.get((contact.rule, contact.channel))
            if v is not None and v[2] == "ok":
                taken, prepaid, held = contact, True, None
                break
            if v is not None:
                why: str | None = v[2]
            else:
                if held is not None:  # another contact won: give that one back first
                    await release(self.store, plan.prefix, held)
                    held = None
                    round_trips += 1
                why = await reserve(
                    self.store, plan.prefix, contact.reservation, contact.history, now
                )
                round_trips += 1
            if why is None:
                taken = contact
                break
            suppressed.labels(contact.rule, why).inc()
            refused.append((contact, why))
        settled = settle(plan, refused, taken)

        deliveries: list[Awaitable[Any]] = []
        if inp.events and (plan.segments or plan.entered or plan.exited):
            deliveries += self.segments.deliveries(plan)  # batches only: see segment_counts
        if held is not None:  # reserved with the profile, but no contact made of it
            deliveries.append(release(self.store, plan.prefix, held))
        if taken is not None:
            if prepaid:  # rb_reserve would have appended it: the same entry
                deliveries.append(append_history(self.store, plan.prefix, taken.history))
            deliveries.append(write_trigger(self.store, plan.prefix, taken.trigger))
            deliveries.append(
                count_decision(
                    self.store, taken.rule, now, False, taken.decision.id, dims=plan.dims
                )
            )
            if taken.phone_work:  # phone work only: never an e-mail fallback
                deliveries.append(enqueue(self.store, taken.trigger.id, taken.trigger.expires_ms))
        new_offers: list[str] = []  # offer decisions to remember once their record is out
        trace: list[dict[str, Any]] | None = None
        # The `Decider` answer: JSON-ready dicts (the HTTP answer, the metrics' labels).
        answer: list[dict[str, Any]] = []
        for d in settled.decisions:
            answer.append(d.wire())
            if d.action == _OFFER:
                if d.id in self._audited:
                    self._audited.move_to_end(d.id)
                    continue
                new_offers.append(d.id)
                deliveries.append(
                    count_decision(self.store, d.rule, now, False, d.id, dims=plan.dims)
                )
            if trace is None:
                trace = list(settled.trace.values())
            deliveries.append(
                write_audit(self.store, d.id, audit_record(plan, d, trace), plan.rule_set)
            )
        # Control-group members: the decision they would have had, recorded and counted
        # (uplift), never shown or sent. Stable ids per window: written once per worker.
        for d in plan.holdouts:
            if d.id in self._audited:
                self._audited.move_to_end(d.id)
                continue
            new_offers.append(d.id)
            if trace is None:
                trace = list(settled.trace.values())
            deliveries.append(
                write_audit(self.store, d.id, audit_record(plan, d, trace), plan.rule_set)
            )
            deliveries.append(count_decision(self.store, d.rule, now, True, d.id, dims=plan.dims))
        # Contacts that matched but were suppressed (eligibility) or refused (policy):
        # recorded with what suppressed them, so the audit says why this customer was
        # not called. Stable ids per window, written once per worker: a visitor browsing
        # under a rule on cooldown is one record per window, not one per batch.
        if inp.events:  # as treated: page loads and screen-pops don't contact
            why_not: list[tuple[str, str, Channel | None]] = [
                (rule_id, why, None)
                for rule_id, why in plan.suppressions
                if why in _RECORDED_ELIGIBILITY
            ]
            why_not += [(contact.rule, why, contact.channel) for contact, why in refused]
            for rule_id, why, channel in why_not:
                made = suppressed_decision(
                    plan, inp, rule_id, why, self._offer_key, models, channel, self._audited
                )
                if made is None:
                    continue
                d, feats = made
                new_offers.append(d.id)
                if trace is None:
                    trace = list(settled.trace.values())
                record = audit_record(plan, d, trace)
                record["features"] = feats
                record["suppressed"] = why
                deliveries.append(write_audit(self.store, d.id, record, plan.rule_set))
        # Trigger, callback queue and audit records go out together: started in one
        # loop tick, the store sends them as one pipeline (one round trip after the
        # reservation, not one per write).
        if deliveries:
            await asyncio.gather(*deliveries)
        if taken is not None:
            if round_trips:  # 0: not from a batch (page load, replay)
                # + 1: the trigger and its records, written together after.
                self.metrics.callback_round_trips.observe(round_trips + 1)
            self.metrics.event_to_trigger_seconds.observe(max(0.0, time.time() - now / 1000))
            self.metrics.triggers.labels(taken.channel).inc()
            self.metrics.rule_triggers.labels(taken.rule).inc()
        for decision_id in new_offers:  # remembered once written, not before
            self._audited[decision_id] = None
            if len(self._audited) > _AUDITED_MAX:
                self._audited.popitem(last=False)
        return answer
