"""The marketing reports (`GET /v1/reports/funnel|conversions|segments`) agree with the
queue and /metrics after real triggers go through the real engine: a visitor asks for
a call -> the callback fires -> an agent claims it (in time, or late) -> completes it
-> the bank reports the sale. Counted by the day the trigger fired; CSV says what the
JSON says; only supervisors and bank systems may read them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
import redis.asyncio as aioredis
from conftest import (
    EngineClient,
    commands_run,
    event,
    open_store,
    reset_commands,
    write_pack,
)

from engine.contact_center.claims import claim
from engine.core.errors import Gone
from engine.core.settings import Agent, Settings, hash_password
from engine.core.vocabulary import Outcome
from engine.delivery.records import write_trigger
from engine.delivery.reports import MAX_VALUES, OTHER, count_fired
from engine.delivery.uplift import count_decision, day_of
from engine.http.reports import FUNNEL_COLUMNS
from engine.http.routes import ROUTES
from engine.http.state import STORE
from engine.valkey import keys

PACK = """
segments:
  - id: mortgage_askers
    description: asked about mortgages in the last week
    when: within(default(profile.interest.mortgage, 0), 7 * 86400, now)
rules:
  - id: adviser_call
    when: 'event.type == "interest" and event.props.product == "mortgage"'
    action: {type: callback, channel: callback}
  - id: card_call
    when: 'event.type == "interest" and event.props.product == "cards"'
    action: {type: callback, channel: callback}
"""
LATE_S = 200  # one claim comes this long after its callback was due


@dataclass
class Floor:
    """What the test did, to compare the reports with."""

    triggers: dict[str, str] = field(default_factory=dict)  # customer -> trigger id
    rule_of: dict[str, str] = field(default_factory=dict)  # trigger id -> rule


async def _ask_for_a_call(
    engine: EngineClient, customer: str, product: str, campaign: str | None
) -> str:
    props: dict[str, Any] = {"utm_campaign": campaign, "utm_source": "news"} if campaign else {}
    events = [
        event("page_view", page=f"/{product}", props=props),
        event("interest", page=f"/{product}", props={"product": product, "call_me": True}),
    ]
    status, reply, _ = await engine.post_events(
        engine.batch(events, identity=engine.token(customer))
    )
    assert status == 200, reply
    [callback] = [d for d in reply["decisions"] if d["action"] == "callback"]
    return str(callback["id"])


async def drive(engine: EngineClient) -> Floor:
    """Eight callbacks; five claimed (one late), five completed, three sales.

    adviser_call: a0..a3 came from the "spring" campaign, a4 and a5 directly.
      a0, a1 converted on the call; a2 connected; a3 no answer; a4 (claimed late) not
      interested; a5 never claimed, but the bank reports its sale. The bank also
      reports an application for a0: the same decision, not a second conversion.
    card_call: c0 (direct) claimed, no answer; c1 (direct) never claimed.
    """
    floor = Floor()
    plan = [(f"a{i}", "mortgage", "spring" if i < 4 else None) for i in range(6)]
    plan += [("c0", "cards", None), ("c1", "cards", None)]
    for customer, product, campaign in plan:
        trigger_id = await _ask_for_a_call(engine, customer, product, campaign)
        floor.triggers[customer] = trigger_id
        floor.rule_of[trigger_id] = "adviser_call" if product == "mortgage" else "card_call"
    t = floor.triggers
    session, csrf = await engine.agent()
    try:
        for customer, outcome in [
            ("a0", Outcome.CONVERTED),
            ("a1", Outcome.CONVERTED),
            ("a2", Outcome.CONNECTED),
            ("a3", Outcome.NO_ANSWER),
            ("c0", Outcome.NO_ANSWER),
        ]:
            url = f"{engine.url}/v1/triggers/{t[customer]}"
            async with session.post(f"{url}/claim", headers={"X-CSRF-Token": csrf}) as r:
                assert r.status == 200, await r.text()
            async with session.post(
                f"{url}/complete", json={"outcome": outcome}, headers={"X-CSRF-Token": csrf}
            ) as r:
                assert r.status == 200, await r.text()
        # a4 is claimed LATE_S after it was due (the engine's claim, at that time).
        store = engine.extra["app"][STORE]
        created = await store.call("HGET", keys.trigger_record(t["a4"]), "data")
        created_ms = int(orjson.loads(created)["created_ms"])
        agent, late_ms = engine.credentials["agent_user"], created_ms + LATE_S * 1000
        await claim(store, t["a4"], agent, late_ms, engine.metrics)
        async with session.post(
            f"{engine.url}/v1/triggers/{t['a4']}/complete",
            json={"outcome": "not_interested"},
            headers={"X-CSRF-Token": csrf},
        ) as r:
            assert r.status == 200, await r.text()
    finally:
        await session.close()
    for decision, outcome in [(t["a5"], "converted"), (t["a0"], "applied")]:
        async with engine.session.post(
            f"{engine.url}/v1/outcomes",
            json={"decision_id": decision, "outcome": outcome},
            headers=engine.api_headers,
        ) as r:
            assert r.status == 200, await r.text()
    return floor


EXPECTED_BY_RULE = {
    "adviser_call": {
        "fired": 6,
        "due": 6,  # every one a callback: a5, never claimed, is a miss of the SLA
        "claimed": 5,
        "claimed_in_sla": 4,
        "completed": 5,
        "connected": 4,
        "converted": 3,
    },
    "card_call": {
        "fired": 2,
        "due": 2,
        "claimed": 1,
        "claimed_in_sla": 1,
        "completed": 1,
        "connected": 0,
        "converted": 0,
    },
}


def _counts(row: dict[str, Any]) -> dict[str, int]:
    return {k: row[k] for k in EXPECTED_BY_RULE["card_call"]}


async def _engine(make_engine: Any, settings: Settings, tmp_path: Path) -> EngineClient:
    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, PACK)),
        agents=(*settings.agents, Agent("bob", hash_password("bob-password-123"))),
    )
    return engine


async def _metrics(engine: EngineClient) -> dict[str, float]:
    async with engine.session.get(f"{engine.url}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def _trigger_states(engine: EngineClient, floor: Floor) -> dict[str, dict[str, int]]:
    """Per rule, what the trigger records (the queue's own state) say."""
    store = engine.extra["app"][STORE]
    states: dict[str, dict[str, int]] = {}
    for trigger_id, rule in floor.rule_of.items():
        rec = await store.call("HGETALL", keys.trigger_record(trigger_id))
        s = states.setdefault(rule, {"fired": 0, "claimed": 0, "completed": 0, "connected": 0})
        s["fired"] += 1
        s["claimed"] += "claimed_by" in rec
        s["completed"] += "outcome" in rec
        s["connected"] += rec.get("outcome") in ("connected", "converted", "not_interested")
    return states


async def test_the_funnel_agrees_with_the_queue_and_metrics(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    floor = await drive(engine)
    api = engine.api_headers

    status, body = await engine.get_json("/v1/reports/funnel", headers=api)
    assert status == 200, body
    assert body["sla_s"] == 60 and body["by"] == "rule"
    rows = {r["name"]: r for r in body["rows"]}
    assert {name: _counts(r) for name, r in rows.items()} == EXPECTED_BY_RULE
    # Of the 6 callbacks due, 4 were claimed within 60 s (a4 late, a5 never).
    assert rows["adviser_call"]["sla_attainment"] == 4 / 6
    assert rows["card_call"]["sla_attainment"] == 1 / 2
    assert [r["name"] for r in body["rows"]] == ["adviser_call", "card_call"]  # most fired
    assert _counts(body["total"]) == {
        k: sum(e[k] for e in EXPECTED_BY_RULE.values()) for k in EXPECTED_BY_RULE["card_call"]
    }
    # The queue's own records say the same.
    for rule, state in (await _trigger_states(engine, floor)).items():
        assert {k: rows[rule][k] for k in state} == state, rule
    # ... and so does /metrics.
    m = await _metrics(engine)
    for rule, expected in EXPECTED_BY_RULE.items():
        assert m[f'ringback_rule_triggers_total{{rule="{rule}"}}'] == expected["fired"]
    claimed = sum(e["claimed"] for e in EXPECTED_BY_RULE.values())
    assert m["ringback_trigger_to_claim_seconds_count"] == claimed
    # The claim histogram's 60 s bucket holds the claims in a 60 s SLA (none was scheduled).
    assert (
        m['ringback_trigger_to_claim_seconds_bucket{le="60.0"}'] == body["total"]["claimed_in_sla"]
    )
    # ... and the live floor's funnel (the triggers stream) too.
    status, live = await engine.get_json("/v1/supervisor/funnel?fresh=1", headers=api)
    assert status == 200
    for rule, expected in EXPECTED_BY_RULE.items():
        assert live["rules"][rule]["fired"] == expected["fired"]
        assert live["rules"][rule]["claimed"] == expected["claimed"]

    # Another SLA: the late claim (200 s) is within 5 minutes.
    status, body = await engine.get_json("/v1/reports/funnel?sla_s=300", headers=api)
    assert status == 200
    adviser = next(r for r in body["rows"] if r["name"] == "adviser_call")
    assert adviser["claimed_in_sla"] == 5 and adviser["sla_attainment"] == 5 / 6
    status, body = await engine.get_json("/v1/reports/funnel?sla_s=120", headers=api)
    assert next(r for r in body["rows"] if r["name"] == "adviser_call")["claimed_in_sla"] == 4


async def test_a_callback_that_expired_unclaimed_is_an_sla_miss_and_an_email_is_not_due(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    store = engine.extra["app"][STORE]
    now = int(time.time() * 1000)
    base = {"rule": "adviser_call", "created_ms": now - 900_000, "attribution": {}}
    fired = {
        "taken": {**base, "kind": "callback", "channel": "callback", "expires_ms": now + 60_000},
        "expired": {**base, "kind": "callback", "channel": "callback", "expires_ms": now - 1},
        "emailed": {**base, "kind": "notify", "channel": "email", "expires_ms": now + 60_000},
    }
    for i, (name, trigger) in enumerate(fired.items()):
        trigger["id"] = f"{i:024d}"
        assert await write_trigger(store, keys.customer_prefix(f"sla-{name}"), trigger)
    agent = engine.credentials["agent_user"]
    await claim(store, fired["taken"]["id"], agent, now - 900_000 + 10_000, engine.metrics)
    with pytest.raises(Gone):  # nobody took it in time; now nobody can
        await claim(store, fired["expired"]["id"], agent, now, engine.metrics)

    status, body = await engine.get_json("/v1/reports/funnel", headers=engine.api_headers)
    assert status == 200, body
    [row] = body["rows"]
    got = {k: row[k] for k in ("fired", "due", "claimed", "claimed_in_sla", "sla_attainment")}
    # Two callbacks were due, one was taken in time: 50 %, not the 100 % of claims.
    assert got == {"fired": 3, "due": 2, "claimed": 1, "claimed_in_sla": 1, "sla_attainment": 0.5}
    assert body["total"]["sla_attainment"] == 0.5


async def test_the_funnel_and_conversions_split_by_campaign_segment_and_value(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    await drive(engine)
    api = engine.api_headers

    status, body = await engine.get_json("/v1/reports/funnel?by=campaign", headers=api)
    assert status == 200, body
    rows = {r["name"]: _counts(r) for r in body["rows"]}
    assert rows == {
        "spring": {
            "fired": 4,
            "due": 4,
            "claimed": 4,
            "claimed_in_sla": 4,
            "completed": 4,
            "connected": 3,
            "converted": 2,
        },
        "(direct)": {
            "fired": 4,
            "due": 4,
            "claimed": 2,
            "claimed_in_sla": 1,
            "completed": 2,
            "connected": 1,
            "converted": 1,
        },
    }
    status, body = await engine.get_json("/v1/reports/funnel?by=segment", headers=api)
    rows = {r["name"]: r["fired"] for r in body["rows"]}
    assert rows == {"mortgage_askers": 6, "(none)": 2}

    status, body = await engine.get_json("/v1/reports/conversions?by=campaign", headers=api)
    assert status == 200, body
    conv = {r["name"]: r for r in body["rows"]}
    assert set(conv) == {"spring", "(direct)"}
    assert conv["spring"]["treated"] == {"decisions": 4, "conversions": 2, "rate": 0.5}
    assert conv["(direct)"]["treated"] == {"decisions": 4, "conversions": 1, "rate": 0.25}
    assert conv["spring"]["holdout"]["decisions"] == 0 and conv["spring"]["uplift"] is None
    # Every decision has one value band, one branch: each adds up to all 8.
    for by in ("value", "branch"):
        status, body = await engine.get_json(f"/v1/reports/conversions?by={by}", headers=api)
        assert status == 200
        assert sum(r["treated"]["decisions"] for r in body["rows"]) == 8, body
        assert sum(r["treated"]["conversions"] for r in body["rows"]) == 3, body

    status, body = await engine.get_json("/v1/reports/segments", headers=api)
    assert status == 200, body
    today = day_of(int(time.time() * 1000))
    [row] = [d for d in body["segments"]["mortgage_askers"] if d["day"] == today]
    assert row["members"] == 6 and row["entered"] == 6


async def test_the_range_picks_the_days_triggers_fired(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    store = engine.extra["app"][STORE]
    now = int(time.time() * 1000)
    today = dt.date.fromisoformat(day_of(now))
    days_ago = today - dt.timedelta(days=3)
    for i, (day, n) in enumerate([(today, 2), (days_ago, 3)]):
        created = int(dt.datetime.combine(day, dt.time(12), dt.UTC).timestamp() * 1000)
        for j in range(n):
            trigger = {
                "id": f"{i:012d}{j:012d}",
                "kind": "callback",
                "rule": "adviser_call",
                "created_ms": created,
                "expires_ms": now + 600_000,
            }
            assert await write_trigger(store, keys.customer_prefix(f"r{i}{j}"), trigger)

    async def fired(query: str) -> int:
        status, body = await engine.get_json(
            f"/v1/reports/funnel?{query}", headers=engine.api_headers
        )
        assert status == 200, body
        return int(body["total"]["fired"])

    assert await fired(f"from={today}&to={today}") == 2
    assert await fired(f"from={days_ago}&to={days_ago}") == 3
    assert await fired(f"from={days_ago}&to={today}") == 5
    assert await fired("") == 5  # the default: the last 30 days
    assert await fired(f"from={days_ago + dt.timedelta(days=1)}&to={today}") == 2
    assert await fired(f"to={days_ago - dt.timedelta(days=1)}") == 0


def _parse_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def _num(cell: str) -> Any:
    return None if cell == "" else float(cell)


async def test_csv_says_what_the_json_says(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    await drive(engine)
    api = engine.api_headers
    for path in (
        "/v1/reports/funnel?sla_s=30",
        "/v1/reports/funnel?by=campaign",
        "/v1/reports/conversions?by=campaign",
        "/v1/reports/segments",
    ):
        status, body = await engine.get_json(path, headers=api)
        assert status == 200
        # The answer is what the route table declares (and /openapi.json documents).
        declared = next(r for r in ROUTES if r.path == path.partition("?")[0])
        msgspec.convert(body, declared.replies[200].body)
        assert "text/csv" in declared.replies[200].media
        sep = "&" if "?" in path else "?"
        async with engine.session.get(f"{engine.url}{path}{sep}format=csv", headers=api) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
            assert r.headers["Content-Disposition"].startswith('attachment; filename="ringback-')
            raw = await r.read()
        assert raw.endswith(b"\r\n") and b"\r\n" in raw.rstrip(b"\r\n")  # RFC 4180 lines
        header, *rows = _parse_csv(raw.decode())
        if "funnel" in path:
            assert header == [body["by"], *FUNNEL_COLUMNS[1:]]
            want = [*body["rows"], body["total"]]
            assert [r[0] for r in rows] == [w["name"] for w in want]
            for got, w in zip(rows, want, strict=True):
                assert [_num(c) for c in got[1:]] == [w[k] for k in header[1:]]
        elif "conversions" in path:
            assert [r[0] for r in rows] == [w["name"] for w in body["rows"]]
            for got, w in zip(rows, body["rows"], strict=True):
                assert _num(got[1]) == w["treated"]["decisions"]
                assert _num(got[2]) == w["treated"]["conversions"]
                assert _num(got[3]) == w["treated"]["rate"]
                assert _num(got[4]) == w["holdout"]["decisions"]
                assert _num(got[7]) == w["uplift"]
        else:
            assert header == ["segment", "day", "members", "entered", "exited"]
            want_rows = [
                [seg, d["day"], d["members"], d["entered"], d["exited"]]
                for seg, per_day in body["segments"].items()
                for d in per_day
            ]
            assert [[r[0], r[1], *map(int, r[2:])] for r in rows] == want_rows


async def test_a_campaign_name_is_quoted_and_never_a_spreadsheet_formula(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    store = engine.extra["app"][STORE]
    now = int(time.time() * 1000)
    await count_decision(store, "r", now, False, "d1", dims=[("campaign", "-2+3,x")])
    _, body = await engine.get_json(
        "/v1/reports/conversions?by=campaign", headers=engine.api_headers
    )
    assert [r["name"] for r in body["rows"]] == ["-2_3_x"]  # cleaned when counted
    await count_decision(store, "r", now, False, "d2", dims=[("campaign", "=cmd")])
    async with engine.session.get(
        f"{engine.url}/v1/reports/conversions?by=campaign&format=csv", headers=engine.api_headers
    ) as r:
        rows = _parse_csv(await r.text())
    # "-2_3_x" would be a formula to a spreadsheet: led by a quote; "_cmd" is text.
    assert sorted(row[0] for row in rows[1:]) == ["'-2_3_x", "_cmd"]


async def test_campaign_names_from_urls_cannot_grow_the_reports_without_bound(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    store = engine.extra["app"][STORE]
    now = int(time.time() * 1000)
    n = MAX_VALUES + 20
    for i in range(n):
        trigger = {
            "id": f"t{i}",
            "rule": "adviser_call",
            "created_ms": now,
            "attribution": {"campaign": f"c{i}"},
            "segments": [],
            "branch": "",
            "customer_value": 10.0,
        }
        await count_fired(store, trigger, now)
        await count_decision(
            store, "adviser_call", now, False, f"d{i}", dims=[("campaign", f"c{i}")]
        )
    api = engine.api_headers
    _, body = await engine.get_json("/v1/reports/funnel?by=campaign", headers=api)
    names = {r["name"]: r["fired"] for r in body["rows"]}
    assert OTHER in names and len(names) <= MAX_VALUES + 1
    assert sum(names.values()) == n == body["total"]["fired"]  # nothing lost, only pooled
    _, body = await engine.get_json("/v1/reports/conversions?by=campaign", headers=api)
    conv = {r["name"]: r["treated"]["decisions"] for r in body["rows"]}
    assert OTHER in conv and len(conv) <= MAX_VALUES + 1
    assert sum(conv.values()) == n
    day = day_of(now)
    assert await store.call("SCARD", keys.uplift_dim_values(day, "campaign")) <= MAX_VALUES + 1


async def test_reports_are_for_supervisors_and_bank_systems(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    for path in ("/v1/reports/funnel", "/v1/reports/conversions", "/v1/reports/segments"):
        status, body = await engine.get_json(path)
        assert status == 401, body
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as bob:
            async with bob.post(
                f"{engine.url}/v1/agents/login",
                json={"user": "bob", "password": "bob-password-123"},
            ) as r:
                assert r.status == 200
            async with bob.get(f"{engine.url}{path}") as r:
                assert r.status == 403
                assert (await r.json())["error"]["code"] == "supervisors_only"
        session, _ = await engine.agent()  # the demo's supervisor
        async with session.get(f"{engine.url}{path}") as r:
            assert r.status == 200, await r.text()
        await session.close()


async def test_a_bad_query_is_refused_with_its_code_and_path(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    today = dt.date.today()
    for path, where in [
        ("/v1/reports/funnel?sla_s=45", "$.sla_s"),
        ("/v1/reports/funnel?sla_s=soon", "$.sla_s"),
        ("/v1/reports/funnel?by=colour", "$.by"),
        ("/v1/reports/funnel?format=xlsx", "$.format"),
        ("/v1/reports/funnel?from=2026-13-01", "$.from"),
        ("/v1/reports/funnel?from=yesterday", "$.from"),
        (f"/v1/reports/funnel?from={today}&to={today - dt.timedelta(days=1)}", "$.from"),
        (f"/v1/reports/funnel?from={today - dt.timedelta(days=400)}", "$.from"),
        ("/v1/reports/conversions?by=rule", "$.by"),
        ("/v1/reports/conversions?colour=red", "$"),
        ("/v1/reports/segments?to=2026-02-30", "$.to"),
    ]:
        status, body = await engine.get_json(path, headers=engine.api_headers)
        assert status == 400, (path, body)
        assert body["error"]["code"] == "invalid_query", path
        assert body["error"]["path"] == where, (path, body)


# -- what counting costs ----------------------------------------------------------------

COUNTED = ("pfadd", "sadd", "scard", "srem", "del", "expire", "hincrby", "hexists", "hdel")


def _callback(i: int, now: int, campaign: str = "spring") -> dict[str, Any]:
    return {
        "id": f"t{i}",
        "kind": "callback",
        "channel": "callback",
        "rule": "adviser_call",
        "created_ms": now,
        "attribution": {"campaign": campaign},
        "segments": ["mortgage_askers", "returning"],
        "branch": "b12",
        "customer_value": 80.0,
    }


async def test_the_same_trigger_again_that_day_costs_one_hincrby_per_counter(
    settings: Settings, redis: aioredis.Redis
) -> None:
    store = open_store(settings)
    try:
        now = int(time.time() * 1000)
        await count_fired(store, _callback(0, now), now)  # lists its names, sets the TTLs
        await reset_commands(redis)
        await count_fired(store, _callback(1, now), now)
        # fired and due, for the rule, the campaign, two segments, the branch, the band:
        # no EXPIRE (this worker set them today), no check of names it knows; and all
        # twelve in one command from the engine (a day's hashes share a slot).
        assert await commands_run(redis, COUNTED) == {"hincrby": 12}
        assert await commands_run(redis, ("fcall", "hincrby")) == {"fcall": 1, "hincrby": 12}
        day = day_of(now)
        for kind, name in [
            ("rule", "adviser_call"),
            ("campaign", "spring"),
            ("segment", "returning"),
        ]:
            key = keys.report_funnel(day, kind)
            assert await redis.hget(key, f"{name}|due") == "2"
            assert await redis.ttl(key) > 0

        # Another worker (its own Store) counts beside it; its first trigger sets the
        # TTLs again, its second costs what this one's does.
        other = open_store(settings)
        try:
            await count_fired(other, _callback(2, now), now)
            await reset_commands(redis)
            await count_fired(other, _callback(3, now), now)
            assert await commands_run(redis, COUNTED) == {"hincrby": 12}
        finally:
            await other.close()
        assert await redis.hget(keys.report_funnel(day, "segment"), "returning|fired") == "4"
    finally:
        await store.close()


async def test_a_campaign_past_the_cap_pays_its_check_once_then_counts_as_other(
    settings: Settings, redis: aioredis.Redis
) -> None:
    store = open_store(settings)
    try:
        now = int(time.time() * 1000)
        day = day_of(now)
        for i in range(MAX_VALUES + 5):
            await count_fired(store, _callback(i, now, f"c{i}"), now)
            await count_decision(
                store, "adviser_call", now, False, f"d{i}", [("campaign", f"c{i}")]
            )
        late = f"c{MAX_VALUES + 4}"  # past the cap: counted as OTHER
        funnel = keys.report_funnel(day, "campaign")
        assert await redis.hget(funnel, f"{late}|fired") is None
        assert not await redis.sismember(keys.uplift_dim_values(day, "campaign"), late)
        others = int(await redis.hget(funnel, f"{OTHER}|fired") or 0)
        assert others >= 4

        await reset_commands(redis)
        await count_fired(store, _callback(999, now, late), now)
        await count_decision(store, "adviser_call", now, False, "d999", [("campaign", late)])
        # As a name under the cap costs: one HINCRBY a counter (fired, due; 6 names),
        # one PFADD a cohort (the rule's, the campaign's): no SADD, SCARD, SREM, DEL.
        assert await commands_run(redis, COUNTED) == {"hincrby": 12, "pfadd": 2}
        assert int(await redis.hget(funnel, f"{OTHER}|fired") or 0) == others + 1
        assert await redis.hget(funnel, f"{late}|fired") is None
        other_cohort = keys.uplift_dim_counts("campaign", OTHER, day, "t")
        assert await redis.pfcount(other_cohort) >= 5
    finally:
        await store.close()
