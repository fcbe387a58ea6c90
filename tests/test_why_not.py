"""Why was this customer called, or not? Calls, holdouts and suppressed contacts are
audited, and `GET /v1/customers/{id}/decisions` lists them with a one-line `why`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import EngineClient, calc, event, new_anon, now_ms, write_pack

from engine.core.settings import Settings
from engine.decisions.inputs import Capacity, DecisionInput
from engine.decisions.loader import load_rules
from engine.decisions.plan import decide, suppressed_decision
from engine.http.answers import CustomerDecisionsAnswer
from engine.ingest.schema import CalcEvent, CalcProps
from engine.models.registry import NO_MODELS

ALWAYS = (
    '{mon: "00:00-24:00", tue: "00:00-24:00", wed: "00:00-24:00", '
    'thu: "00:00-24:00", fri: "00:00-24:00", sat: "00:00-24:00", sun: "00:00-24:00"}'
)
COOLDOWN_S = 3600

PACK = f"""
calendars:
  - name: open
    timezone: Europe/London
    hours: {ALWAYS}
offers:
  - {{id: adviser, title: Adviser, product: mortgage, value: 900, channels: [web, callback]}}
  - {{id: saver, title: Saver, product: savings, value: 50, channels: [web, callback]}}
  - {{id: cards, title: Cards, product: cards, value: 10, channels: [web]}}
rules:
  - id: call_me
    when: profile.calc.mortgage.count >= 3
    action: {{type: callback, offer: adviser, channel: callback}}
    policy: {{cooldown_s: {COOLDOWN_S}, max_per_day: 5, calendar: open, expires_s: 600}}
  - id: savings_call
    when: profile.calc.savings.count >= 1
    action: {{type: callback, offer: saver, channel: callback}}
    holdout_pct: 100
  - id: cards_offer
    when: profile.counts.page_view >= 1
    action: {{type: offer, offer: cards, slot: hero}}
"""


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return write_pack(tmp_path, PACK)


async def _engine(make_engine: Any, settings: Settings, pack: Path) -> EngineClient:
    return await make_engine(replace(settings, rules_dir=pack))  # type: ignore[no-any-return]


async def _set_attrs(engine: EngineClient, customer: str, **attrs: Any) -> None:
    async with engine.session.put(
        f"{engine.url}/v1/profiles/{customer}/attributes", json=attrs, headers=engine.api_headers
    ) as r:
        assert r.status == 200, await r.text()


def _mortgage_calcs() -> list[dict[str, Any]]:
    return [calc("mortgage", 250_000 + i * 10_000, 300) for i in range(3)]


async def _decisions(engine: EngineClient, customer: str, query: str = "") -> list[dict[str, Any]]:
    status, body = await engine.get_json(
        f"/v1/customers/{customer}/decisions{query}", headers=engine.api_headers
    )
    assert status == 200, body
    msgspec.convert(body, CustomerDecisionsAnswer)  # the route table's declared answer
    assert body["customer_id"] == customer
    return body["decisions"]  # type: ignore[no-any-return]


async def test_a_call_then_cooldown_lists_the_call_and_one_suppressed_record(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    await _set_attrs(engine, "c-cool", consent_call=True)
    token = engine.token("c-cool")
    _, first, _ = await engine.post_events(engine.batch(_mortgage_calcs(), identity=token))
    (call,) = [d for d in first["decisions"] if d["action"] == "callback"]
    window_ms = COOLDOWN_S * 1000
    before = now_ms()
    for _ in range(5):  # browsing on under the rule while it is on cooldown
        _, resp, _ = await engine.post_events(engine.batch(_mortgage_calcs(), identity=token))
        assert not [d for d in resp["decisions"] if d["action"] == "callback"]
    # One record per rule, reason and window, not one per batch (two only when the five
    # batches straddled the window's boundary).
    windows = 1 + (now_ms() // window_ms != before // window_ms)

    listed = await _decisions(engine, "c-cool")
    made = [d for d in listed if d["rule"] == "call_me" and d["suppressed"] is None]
    suppressed = [d for d in listed if d["rule"] == "call_me" and d["suppressed"]]
    assert [d["id"] for d in made] == [call["id"]]
    assert made[0]["why"].startswith("matched; ranked first: score ")
    assert made[0]["factors"] == call["factors"] and made[0]["model"] == call["model"]
    assert len(suppressed) == windows
    assert {d["suppressed"] for d in suppressed} == {"cooldown_rule"}
    assert suppressed[0]["why"].startswith("suppressed: cooldown_rule (contacted by this rule ")
    assert suppressed[0]["channel"] == "callback" and suppressed[0]["offer_id"] == "adviser"
    assert suppressed[0]["factors"]["score"] > 0 and "features" not in suppressed[0]
    assert [d["at_ms"] for d in listed] == sorted((d["at_ms"] for d in listed), reverse=True)

    # The record itself holds the features, the trace, the model and the factors.
    status, audit = await engine.get_json(
        f"/v1/decisions/{suppressed[0]['id']}", headers=engine.api_headers
    )
    assert status == 200, audit
    assert audit["suppressed"] == "cooldown_rule" and audit["features"]["calc_mortgage_count"] >= 3
    (verdict,) = [t for t in audit["trace"] if t["rule"] == "call_me"]
    assert verdict["result"] == "suppressed" and verdict["why"] == "cooldown_rule"

    full = await _decisions(engine, "c-cool", "?full=1&limit=1")
    assert len(full) == 1 and full[0]["features"]["known"] == 1.0 and full[0]["trace"]
    assert await _decisions(engine, "c-cool", f"?since={now_ms() + 60_000}") == []


async def test_a_do_not_call_customer_without_fallback_is_listed_as_suppressed(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    await _set_attrs(engine, "c-dnc", consent_call=True, do_not_call=True)
    token = engine.token("c-dnc")
    for _ in range(3):
        _, resp, _ = await engine.post_events(engine.batch(_mortgage_calcs(), identity=token))
        assert not [d for d in resp["decisions"] if d["action"] == "callback"]
    listed = await _decisions(engine, "c-dnc")
    (record,) = [d for d in listed if d["rule"] == "call_me"]
    assert record["suppressed"] == "do_not_call" and not record["holdout"]
    assert record["why"].startswith("suppressed: do_not_call (on the do-not-call list")


async def test_a_holdout_member_is_listed_with_its_control_group_decision(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    await _set_attrs(engine, "c-held", consent_call=True)
    _, resp, _ = await engine.post_events(
        engine.batch([calc("savings", 5_000, 12)], identity=engine.token("c-held"))
    )
    assert not [d for d in resp["decisions"] if d["action"] == "callback"]
    (record,) = [d for d in await _decisions(engine, "c-held") if d["rule"] == "savings_call"]
    assert record["holdout"] is True and record["suppressed"] is None  # not recorded twice
    assert record["why"].startswith("holdout: ")


async def test_decisions_made_while_anonymous_are_listed_once_linked(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    anon = new_anon()
    _, resp, _ = await engine.post_events(
        engine.batch([event("page_view", page="/cards")], anonymous_id=anon)
    )
    (offer,) = [d for d in resp["decisions"] if d["rule"] == "cards_offer"]
    status, _, _ = await engine.post_events(
        engine.batch(
            [event("page_view", page="/loans")], anonymous_id=anon, identity=engine.token("c-link")
        )
    )
    assert status == 200
    listed = await _decisions(engine, "c-link")
    assert offer["id"] in [d["id"] for d in listed]


async def test_the_list_needs_credentials_and_a_known_customer(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    await engine.post_events(engine.batch(_mortgage_calcs(), identity=engine.token("c-auth")))
    status, body = await engine.get_json("/v1/customers/c-auth/decisions")
    assert status == 401 and body["error"]["code"] == "missing_credentials"
    status, body = await engine.get_json(
        "/v1/customers/c-nobody/decisions", headers=engine.api_headers
    )
    assert status == 404 and body["error"]["code"] == "unknown_customer"
    status, body = await engine.get_json(
        "/v1/customers/c-auth/decisions?limit=0", headers=engine.api_headers
    )
    assert status == 400 and body["error"]["code"] == "invalid_query"
    session, _ = await engine.agent()  # the demo's agent is a supervisor
    try:
        async with session.get(f"{engine.url}/v1/customers/c-auth/decisions") as r:
            assert r.status == 200, await r.text()
    finally:
        await session.close()


async def test_erasure_removes_the_customers_decision_records(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    await _set_attrs(engine, "c-gone", consent_call=True, do_not_call=True)
    await engine.post_events(engine.batch(_mortgage_calcs(), identity=engine.token("c-gone")))
    listed = await _decisions(engine, "c-gone")
    assert [d["suppressed"] for d in listed] == ["do_not_call"]
    async with engine.session.delete(
        f"{engine.url}/v1/profiles/c-gone", headers=engine.api_headers
    ) as r:
        assert r.status == 200, await r.text()
    status, _ = await engine.get_json("/v1/customers/c-gone/decisions", headers=engine.api_headers)
    assert status == 404
    status, _ = await engine.get_json(
        f"/v1/decisions/{listed[0]['id']}", headers=engine.api_headers
    )
    assert status == 404


def test_a_suppressed_contact_is_one_decision_per_window_and_offers_are_never_one(
    tmp_path: Path,
) -> None:
    rs = load_rules(write_pack(tmp_path, PACK))
    now = 1_795_000_000_000 - 1_795_000_000_000 % (COOLDOWN_S * 1000)
    events = [CalcEvent(id="e1", ts=now, props=CalcProps("mortgage", 1.0, 300))]
    profile: dict[str, Any] = {"counts": {"calc": 3}, "calc": {"mortgage": {"count": 3}}}
    inp = DecisionInput("demo-bank", "anon-0001", "c-1", profile, {}, events, now)

    def made(at_ms: int, reason: str = "cooldown_rule", rule: str = "call_me") -> Any:
        plan = decide(rs, inp, at_ms, Capacity(), b"k", lambda p: "mortgages")
        return suppressed_decision(plan, inp, rule, reason, b"k", NO_MODELS)

    decision, feats = made(now)
    assert (
        decision.rule == "call_me" and feats["calc_mortgage_count"] == 3.0
    )  # none eligible: computed
    assert made(now + COOLDOWN_S * 1000 - 1)[0].id == decision.id  # same window
    assert made(now + COOLDOWN_S * 1000)[0].id != decision.id  # the next one
    assert made(now, "daily_cap")[0].id != decision.id  # another reason
    assert made(now, rule="cards_offer") is None  # offers: no 'why not called'
    plan = decide(rs, inp, now, Capacity(), b"k", lambda p: "mortgages")
    assert (
        suppressed_decision(
            plan, inp, "call_me", "cooldown_rule", b"k", NO_MODELS, skip={decision.id}
        )
        is None
    )
