"""Deciding is a pure function: `decide(rules, input, now) -> Plan`, no Valkey, no app.

Each case feeds one batch to `engine.decisions.plan.decide` at a fixed time and checks
the plan: the contact candidates (what the reservation and the trigger would get), the
offers, and the trace of the rules that did not fire. `settle` then stands in for the
contact policy's answers, as `RulesDecider` gives them from Valkey.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from itertools import count
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine.decisions.features import features
from engine.decisions.inputs import Capacity, DecisionInput
from engine.decisions.loader import RuleSet, load_rules
from engine.decisions.plan import Decision, Plan, audit_record, decide, settle
from engine.ingest.schema import CalcEvent, CalcProps, PageViewEvent
from engine.valkey import keys

LONDON = ZoneInfo("Europe/London")
WEEKDAYS = "{" + ", ".join(f'{d}: "09:00-17:00"' for d in ("mon", "tue", "wed", "thu", "fri")) + "}"

PACK = f"""
calendars:
  - name: weekdays
    timezone: Europe/London
    hours: {WEEKDAYS}
offers:
  - {{id: adviser, title: Adviser, text: "Call us", product: mortgage, value: 900,
      channels: [web, callback]}}
  - {{id: cheap, title: Cheap, product: cards, value: 10, channels: [web]}}
  - {{id: dear, title: Dear, product: savings, value: 500, channels: [web]}}
rules:
  - id: call_me
    description: Mortgage calculator used 3 times
    when: profile.calc.mortgage.count >= 3
    action: {{type: callback, offer: adviser, channel: callback, fallback: email}}
    priority: 10
    policy: {{cooldown_s: 3600, channel_cooldown_s: 600, max_per_day: 2, calendar: weekdays,
              expires_s: 600, outside_hours: OUTSIDE}}
  - id: mail_me
    when: profile.calc.mortgage.count >= 3
    action: {{type: notify, channel: email}}
  - id: cheap_offer
    when: profile.counts.page_view >= 1
    action: {{type: offer, offer: cheap, slot: hero}}
  - id: dear_offer
    when: profile.counts.page_view >= 1
    action: {{type: offer, offer: dear, slot: hero}}
  - id: held_out
    when: profile.counts.page_view >= 1
    action: {{type: offer, offer: cheap, slot: side}}
    holdout_pct: 100
  - id: needs_score
    when: profile.missing.value > 1
    action: {{type: offer, offer: cheap, slot: other}}
"""


def _ms(local: str) -> int:
    return int(dt.datetime.fromisoformat(local).replace(tzinfo=LONDON).timestamp() * 1000)


MON_NOON = _ms("2026-11-02T12:00")
SUN_NOON = _ms("2026-11-01T12:00")
MON_OPENING = _ms("2026-11-02T09:00")


def _rules(tmp_path: Path, outside: str = "schedule") -> RuleSet:
    d = tmp_path / f"rules-{outside}"
    d.mkdir()
    (d / "pack.yaml").write_text(PACK.replace("OUTSIDE", outside))
    return load_rules(d)


def _input(now_ms: int, customer_id: str | None, **customer: Any) -> DecisionInput:
    profile: dict[str, Any] = {
        "calc": {"mortgage": {"count": 3}},
        "counts": {"page_view": 2},
        "pages": [f"{now_ms} /mortgages"],
        "online": True,
    }
    if customer.pop("asked_at_ms", None) is not None:
        profile["last_call_request"] = now_ms - 30 * 60_000
        profile["call_requested"] = {"mortgage": now_ms - 30 * 60_000}
    events = [
        PageViewEvent(id="e1", ts=now_ms, page="/mortgages"),
        CalcEvent(
            id="e2",
            ts=now_ms,
            page="/mortgages/calculator",
            props=CalcProps(product="mortgage", amount=250_000, term_months=300),
        ),
    ]
    return DecisionInput("demo-bank", "anon-1", customer_id, profile, customer, events, now_ms)


def _plan(rs: RuleSet, inp: DecisionInput, now_ms: int) -> Plan:
    ids = count(1)
    return decide(
        rs,
        inp,
        now_ms,
        Capacity(),
        b"k" * 16,
        lambda page: "mortgage",
        new_id=lambda now: f"{now:012x}{next(ids):012x}",
    )


def _contacts(plan: Plan) -> list[tuple[str, str, str]]:
    return [(c.rule, c.channel, c.trigger.kind) for c in plan.contacts]


def _why(plan: Plan, rule: str) -> tuple[str, str | None]:
    entry = plan.trace[rule]
    return entry["result"], entry.get("why")


@pytest.mark.parametrize(
    ("case", "outside", "now_ms", "customer_id", "customer", "contacts", "suppressed"),
    [
        (
            "a consenting known customer gets a phone callback",
            "drop",
            MON_NOON,
            "c-1",
            {"consent_call": True},
            [("call_me", "callback", "callback"), ("mail_me", "email", "notify")],
            {},
        ),
        (
            "do-not-call falls back to e-mail, a notification",
            "drop",
            MON_NOON,
            "c-1",
            {"consent_call": True, "do_not_call": True},
            [("call_me", "email", "notify"), ("mail_me", "email", "notify")],
            {},
        ),
        (
            "no consent falls back to e-mail",
            "drop",
            MON_NOON,
            "c-1",
            {},
            [("call_me", "email", "notify"), ("mail_me", "email", "notify")],
            {},
        ),
        (
            "pressing call me within the hour is consent",
            "drop",
            MON_NOON,
            "c-1",
            {"asked_at_ms": True},
            [("call_me", "callback", "callback"), ("mail_me", "email", "notify")],
            {},
        ),
        (
            "outside hours a dropping rule refuses the callback",
            "drop",
            SUN_NOON,
            "c-1",
            {"consent_call": True},
            [("mail_me", "email", "notify")],
            {"call_me": "outside_hours"},
        ),
        (
            "outside hours a falling-back rule sends e-mail",
            "fallback",
            SUN_NOON,
            "c-1",
            {"consent_call": True},
            [("call_me", "email", "notify"), ("mail_me", "email", "notify")],
            {},
        ),
        (
            "an anonymous visitor is never called",
            "drop",
            MON_NOON,
            None,
            {},
            [("mail_me", "email", "notify")],
            {"call_me": "anonymous"},
        ),
    ],
)
def test_the_plan_names_the_contacts_eligibility_allows(
    tmp_path: Path,
    case: str,
    outside: str,
    now_ms: int,
    customer_id: str | None,
    customer: dict[str, Any],
    contacts: list[tuple[str, str, str]],
    suppressed: dict[str, str],
) -> None:
    plan = _plan(_rules(tmp_path, outside), _input(now_ms, customer_id, **customer), now_ms)
    assert _contacts(plan) == contacts, case
    for rule, why in suppressed.items():
        assert _why(plan, rule) == ("suppressed", why), case
        assert (rule, why) in plan.suppressions, case
    assert "call_me" in plan.hits and "mail_me" in plan.hits
    # Phone work only for a real phone callback: an agent never phones a fallback.
    assert [c.phone_work for c in plan.contacts] == [k == "callback" for _, _, k in contacts]


def test_a_consenting_customer_gets_a_reservation_and_a_trigger_with_the_callback(
    tmp_path: Path,
) -> None:
    plan = _plan(_rules(tmp_path, "drop"), _input(MON_NOON, "c-1", consent_call=True), MON_NOON)
    call = plan.contacts[0]
    assert plan.prefix == keys.customer_prefix("c-1")
    r = call.reservation
    assert (r.rule, r.channel, r.rule_cooldown_s, r.channel_cooldown_s, r.max_per_day) == (
        "call_me",
        "callback",
        3600,
        600,
        2,
    )
    assert r.day == "2026-11-02"  # the calendar's local day: caps follow the customer's day
    assert call.history["decision_id"] == call.decision.id == call.trigger.id
    assert call.trigger.created_ms == MON_NOON
    assert call.trigger.expires_ms == MON_NOON + 600_000
    assert call.trigger.reason == "Mortgage calculator used 3 times"
    assert call.trigger.context["pages"] == ["/mortgages"]
    assert call.decision.offer["id"] == "adviser"


def test_outside_hours_a_scheduling_rule_calls_at_the_next_opening(tmp_path: Path) -> None:
    plan = _plan(_rules(tmp_path), _input(SUN_NOON, "c-1", consent_call=True), SUN_NOON)
    call = plan.contacts[0]
    assert (call.rule, call.channel) == ("call_me", "callback")
    assert call.trigger.scheduled_for == MON_OPENING
    assert call.trigger.expires_ms == MON_OPENING + 600_000


def test_a_full_floor_holds_the_callback_back(tmp_path: Path) -> None:
    (tmp_path / "pack.yaml").write_text(
        PACK.replace("OUTSIDE", "drop").replace(
            "expires_s: 600,", "expires_s: 600, max_queue_per_agent: 2,"
        )
    )
    rs = load_rules(tmp_path)
    inp = _input(MON_NOON, "c-1", consent_call=True)
    busy = decide(rs, inp, MON_NOON, Capacity(1, 2, True), b"k", lambda p: "x")
    assert _why(busy, "call_me") == ("suppressed", "no_capacity")
    idle = decide(rs, inp, MON_NOON, Capacity(1, 1, True), b"k", lambda p: "x")
    assert idle.contacts[0].channel == "callback"


def test_the_higher_value_offer_takes_the_slot_and_holdout_and_unknowns_are_traced(
    tmp_path: Path,
) -> None:
    plan = _plan(_rules(tmp_path), _input(MON_NOON, "c-1"), MON_NOON)
    offers = [d for d in plan.ranked if isinstance(d, Decision)]
    assert [(d.slot, d.offer["id"]) for d in offers] == [("hero", "dear")]
    assert _why(plan, "cheap_offer") == ("suppressed", "slot_taken")
    assert _why(plan, "held_out") == ("suppressed", "holdout")
    assert ("held_out", "holdout") in plan.suppressions
    assert ("cheap_offer", "slot_taken") not in plan.suppressions  # arbitration, not policy
    assert _why(plan, "needs_score") == ("unknown", "a value it needs is missing")
    assert "needs_score" not in plan.hits


def test_an_offer_record_has_the_whole_trace_and_the_features_as_deciding_saw_them(
    tmp_path: Path,
) -> None:
    """Only offers ranked and no one held out: the record still names every rule (a
    losing offer with the channel it would have used) and the feature snapshot of the
    decision's inputs, though deciding builds neither until a record is written."""
    full = _rules(tmp_path)
    rs = replace(full, rules=tuple(r for r in full.rules if r.id != "held_out"))
    inp = _input(MON_NOON, None)
    page_load = DecisionInput(inp.site, inp.anonymous_id, None, inp.profile, {}, [], MON_NOON)
    plan = _plan(rs, page_load, MON_NOON)
    assert plan.contacts == [] and plan.holdouts == []
    settled = settle(plan, [], None)
    (dear,) = settled.decisions
    record = audit_record(plan, dear, list(settled.trace.values()))
    assert record["trace"] == [
        {"rule": "call_me", "result": "suppressed", "why": "anonymous"},
        {"rule": "mail_me", "result": "matched", "channel": "email"},
        {"rule": "cheap_offer", "result": "suppressed", "channel": "web", "why": "slot_taken"},
        {"rule": "dear_offer", "result": "matched", "channel": "web"},
        {"rule": "needs_score", "result": "unknown", "why": "a value it needs is missing"},
    ]
    assert list(record["trace"][2]) == ["rule", "result", "channel", "why"]
    snapshot = features(inp.profile, {}, [], MON_NOON, LONDON, frozenset())
    assert record["features"] == snapshot and snapshot["calc_mortgage_count"] == 3


def test_one_contact_per_batch_the_lower_ranked_one_only_when_policy_refuses_the_first(
    tmp_path: Path,
) -> None:
    plan = _plan(_rules(tmp_path, "drop"), _input(MON_NOON, "c-1", consent_call=True), MON_NOON)
    call, mail = plan.contacts
    assert plan.ranked.index(call) < plan.ranked.index(mail)

    first = settle(plan, [], call)
    assert [d.rule for d in first.decisions if d.action != "offer"] == ["call_me"]
    assert first.fired is call
    assert first.trace["mail_me"]["why"] == "lower_ranked_contact"
    assert first.trace["call_me"]["result"] == "matched"

    cooled = settle(plan, [(call, "cooldown")], mail)
    assert [d.rule for d in cooled.decisions if d.action != "offer"] == ["mail_me"]
    assert (cooled.trace["call_me"]["result"], cooled.trace["call_me"]["why"]) == (
        "suppressed",
        "cooldown",
    )
    assert cooled.trace["mail_me"]["result"] == "matched"

    none = settle(plan, [(call, "cooldown"), (mail, "daily_cap")], None)
    assert none.fired is None and all(d.action == "offer" for d in none.decisions)
    assert plan.trace["call_me"]["result"] == "matched"  # the plan itself is unchanged

    called = next(d for d in first.decisions if d.rule == "call_me")
    record = audit_record(plan, called, list(first.trace.values()))
    assert record["rule"] == "call_me" and record["inputs"] == ["profile"]
    assert record["at_ms"] == MON_NOON and record["customer_id"] == "c-1"
    assert {"rule": "mail_me", "result": "suppressed", "channel": "email",
            "why": "lower_ranked_contact"} in record["trace"]  # fmt: skip


def test_a_page_load_without_events_shows_offers_and_calls_no_one(tmp_path: Path) -> None:
    inp = _input(MON_NOON, "c-1", consent_call=True)
    page_load = DecisionInput(
        inp.site, inp.anonymous_id, "c-1", inp.profile, inp.customer, [], MON_NOON
    )
    plan = _plan(_rules(tmp_path), page_load, MON_NOON)
    assert plan.contacts == [] and [d.rule for d in plan.ranked] == ["dear_offer"]


def test_the_same_input_at_the_same_time_is_the_same_plan(tmp_path: Path) -> None:
    rs = _rules(tmp_path)
    inp = _input(MON_NOON, "c-1", consent_call=True)
    a, b = _plan(rs, inp, MON_NOON), _plan(rs, inp, MON_NOON)
    assert a.ranked == b.ranked and a.trace == b.trace and a.suppressions == b.suppressions


def _local_noon_days_ago(days: int, weekday: bool) -> int:
    """Noon in London at least `days` ago, on a weekday or on a Sunday."""
    day = dt.datetime.fromtimestamp(time.time(), tz=LONDON).date() - dt.timedelta(days=days)
    while (day.weekday() < 5) != weekday or (not weekday and day.weekday() != 6):
        day -= dt.timedelta(days=1)
    return _ms(f"{day.isoformat()}T12:00")


def test_a_batch_from_30_days_ago_gets_the_decision_it_would_have_got_then(
    tmp_path: Path,
) -> None:
    rs = _rules(tmp_path)
    then = _local_noon_days_ago(30, weekday=True)
    # "Call me" pressed half an hour before that batch: consent then, not today.
    plan = _plan(rs, _input(then, "c-1", asked_at_ms=True), then)
    call = plan.contacts[0]
    assert (call.rule, call.channel, call.trigger.kind) == ("call_me", "callback", "callback")
    assert call.reservation.day == dt.datetime.fromtimestamp(then / 1000, LONDON).date().isoformat()
    assert call.trigger.created_ms == then and call.trigger.scheduled_for == ""
    assert call.decision.id.startswith(f"{then:012x}")

    sunday = _local_noon_days_ago(30, weekday=False)
    closed = _plan(rs, _input(sunday, "c-1", asked_at_ms=True), sunday)
    monday_opening = sunday + 21 * 3_600_000  # Sunday 12:00 -> Monday 09:00
    assert closed.contacts[0].trigger.scheduled_for in (
        monday_opening,
        monday_opening - 3_600_000,  # a DST change that night
        monday_opening + 3_600_000,
    )
    assert closed.contacts[0].trigger.scheduled_for < time.time() * 1000
