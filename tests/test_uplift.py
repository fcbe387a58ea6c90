"""Proof of value: a rule's holdout members get a decision record (`holdout: true`, no
contact, nothing shown), both cohorts are counted per day, and `GET /v1/reports/uplift`
compares their conversion rates with a 95% interval.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from conftest import (
    EngineClient,
    commands_run,
    event,
    new_anon,
    open_store,
    reset_commands,
    write_pack,
)

from engine.core.settings import Settings
from engine.decisions.inputs import Capacity, DecisionInput
from engine.decisions.loader import load_rules
from engine.decisions.plan import decide, dims, holdout
from engine.delivery.records import read_audit
from engine.delivery.uplift import Cohort, count_conversion, count_decision, day_of, interval
from engine.http.state import STORE
from engine.ingest.schema import PageViewEvent
from engine.valkey import keys

PACK = """
offers:
  - {id: cards, title: Cards, product: cards, value: 100, channels: [web]}
rules:
  - id: cards_offer
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: cards, slot: hero}
    holdout_pct: 50
"""
NOW = 1_795_000_000_000


def _input(anon: str) -> DecisionInput:
    events = [PageViewEvent(id="e1", ts=NOW, page="/cards")]
    profile: dict[str, Any] = {"counts": {"page_view": 1}, "calc": {}, "pages": []}
    return DecisionInput("demo-bank", anon, None, profile, {}, events, NOW)


def test_a_holdout_member_gets_a_recorded_decision_and_nothing_shown(tmp_path: Path) -> None:
    rs = load_rules(write_pack(tmp_path, PACK))
    member = next(
        f"anon-{i:04d}" for i in range(100) if holdout(f"demo-bank:anon-{i:04d}", "cards_offer", 50)
    )
    plan = decide(rs, _input(member), NOW, Capacity(), b"k", lambda p: "cards")
    assert plan.ranked == []  # nothing shown
    (held,) = plan.holdouts
    assert held.holdout and held.rule == "cards_offer" and held.wire()["holdout"] is True
    assert plan.trace["cards_offer"]["why"] == "holdout"
    # The same member a minute later is the same control-group decision, not a new one.
    again = decide(rs, _input(member), NOW + 60_000, Capacity(), b"k", lambda p: "cards")
    assert again.holdouts[0].id == held.id


def test_the_interval_of_a_clear_difference_excludes_zero() -> None:
    lo, hi = interval(Cohort(2000, 300, 0.15), Cohort(2000, 200, 0.10)) or (0.0, 0.0)
    assert 0 < lo < 0.05 < hi
    assert interval(Cohort(0, 0, None), Cohort(10, 1, 0.1)) is None


async def test_the_report_counts_both_cohorts_and_their_conversions(
    make_engine: Any, settings: Any, tmp_path: Path
) -> None:
    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, PACK))
    )
    store = engine.extra["app"][STORE]
    treated: list[str] = []
    held: list[str] = []
    for _ in range(60):
        anon = new_anon()
        status, body, _ = await engine.post_events(
            engine.batch([event("page_view", page="/cards")], anonymous_id=anon)
        )
        assert status == 200
        shown = [d for d in body["decisions"] if d["rule"] == "cards_offer"]
        if shown:
            assert "holdout" not in shown[0]
            treated.append(shown[0]["id"])
        else:
            held.append(anon)
    assert treated and held  # 50 %: both groups have members
    now = int(time.time() * 1000)
    today = day_of(now)
    # Conversions: 6 treated and 1 holdout member converted.
    for decision_id in treated[:6]:
        audit = await read_audit(store, decision_id)
        assert audit is not None and audit["holdout"] is False
        await count_conversion(store, "cards_offer", now, False, decision_id)
    status, body = await engine.get_json(
        f"/v1/reports/uplift?rule=cards_offer&from={today}&to={today}", headers=engine.api_headers
    )
    assert status == 200, body
    # Cohorts are HyperLogLogs: two of ~30 random ids share a register about 3% of the
    # time (n^2 / 2 / 16384), and then count as one. Off by one is that, not a loss.
    assert abs(body["treated"]["decisions"] - len(treated)) <= 1
    assert abs(body["holdout"]["decisions"] - len(held)) <= 1
    assert body["treated"]["conversions"] == 6
    assert body["holdout"]["conversions"] == 0
    assert abs(body["uplift"] - 6 / body["treated"]["decisions"]) < 1e-9
    lo, hi = body["ci95"]
    assert lo < body["uplift"] < hi


async def test_the_report_refuses_bad_ranges_and_anonymous_callers(engine: EngineClient) -> None:
    today = dt.date.today().isoformat()
    status, body = await engine.get_json(
        f"/v1/reports/uplift?rule=r&from={today}&to=2020-01-01", headers=engine.api_headers
    )
    assert status == 400 and body["error"]["code"] == "invalid_query"
    status, body = await engine.get_json(
        "/v1/reports/uplift?rule=r&from=yesterday", headers=engine.api_headers
    )
    assert status == 400 and body["error"]["path"] == "$.from"
    status, _ = await engine.get_json("/v1/reports/uplift?rule=r")
    assert status == 401


async def test_a_conversion_reported_by_the_bank_counts_for_the_decisions_cohort(
    make_engine: Any, settings: Any, tmp_path: Path
) -> None:
    pack = PACK.replace("holdout_pct: 50", "holdout_pct: 0")
    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, pack))
    )
    customer = "cust-uplift-1"
    status, body, _ = await engine.post_events(
        engine.batch([event("page_view", page="/cards")], identity=engine.token(customer))
    )
    assert status == 200 and body["decisions"][0]["rule"] == "cards_offer"
    async with engine.session.post(
        f"{engine.url}/v1/conversions",
        json={"customer_id": customer, "product": "cards", "ts": int(time.time() * 1000)},
        headers=engine.api_headers,
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["attributed"] == body["decisions"][0]["id"]
    status, report = await engine.get_json(
        "/v1/reports/uplift?rule=cards_offer", headers=engine.api_headers
    )
    assert status == 200
    assert report["treated"] == {"decisions": 1, "conversions": 1, "rate": 1.0}
    assert report["holdout"]["decisions"] == 0 and report["uplift"] is None


COUNTED = ("pfadd", "sadd", "scard", "srem", "del", "expire")


async def test_the_same_decision_again_that_day_costs_one_pfadd_per_cohort(
    settings: Settings, redis: aioredis.Redis
) -> None:
    """An offer decision of a visitor in two segments joins 6 cohorts (the rule's, the
    campaign's, each segment's, the branch's, the value band's): the first of the day
    also lists the values and sets the TTLs; the next costs the 6 PFADDs alone."""
    plan_dims = dims({"campaign": "Spring"}, frozenset({"a", "b"}), "b12", 80.0)
    now = int(time.time() * 1000)
    day = day_of(now)
    store = open_store(settings)
    try:
        await count_decision(store, "cards_offer", now, False, "d1", plan_dims)
        await reset_commands(redis)
        await count_decision(store, "cards_offer", now, False, "d2", plan_dims)
        assert await commands_run(redis, COUNTED) == {"pfadd": 6}

        # Another worker (its own Store) finds the values listed by the first (its SADDs
        # answer 0), then costs the same; nothing is listed twice, every key has a TTL.
        other = open_store(settings)
        try:
            await count_decision(other, "cards_offer", now, True, "h1", plan_dims)
            await reset_commands(redis)
            await count_decision(other, "cards_offer", now, True, "h2", plan_dims)
            assert await commands_run(redis, COUNTED) == {"pfadd": 6}
        finally:
            await other.close()
        assert await redis.smembers(keys.uplift_dim_values(day, "segment")) == {"a", "b"}
        for group in ("t", "h"):  # two decisions each: treated, then held out
            for key in (
                keys.uplift_counts("cards_offer", day, group),
                keys.uplift_dim_counts("segment", "b", day, group),
                keys.uplift_dim_counts("campaign", "spring", day, group),
            ):
                assert await redis.pfcount(key) == 2, key
                assert await redis.ttl(key) > 0, key
        assert await redis.ttl(keys.uplift_dim_values(day, "value")) > 0
    finally:
        await store.close()
