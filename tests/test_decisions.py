"""Decisions: rules, eligibility, contact policy, arbitration, audit — through the engine."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from conftest import REPO, RULES_DIR, EngineClient, calc, event, write_pack
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from engine.core.settings import Settings
from engine.decisions.calendar import Calendar
from engine.decisions.loader import RuleSetError, load_rules
from engine.decisions.plan import holdout
from engine.http.state import CAPACITY, GATEWAY
from engine.valkey import keys
from engine.valkey.keys import CAPACITY_AGENTS as AGENTS_KEY

ALWAYS = (
    '{mon: "00:00-24:00", tue: "00:00-24:00", wed: "00:00-24:00", '
    'thu: "00:00-24:00", fri: "00:00-24:00", sat: "00:00-24:00", sun: "00:00-24:00"}'
)

PACK = f"""
calendars:
  - name: open
    timezone: Europe/London
    hours: {ALWAYS}
  - name: closed
    timezone: Europe/London
    hours: {{}}
offers:
  - {{id: adviser, title: Adviser, text: "Call us", product: mortgage, value: 900,
      channels: [web, callback]}}
  - {{id: cheap, title: Cheap, product: cards, value: 10, channels: [web]}}
  - {{id: dear, title: Dear, product: savings, value: 500, channels: [web]}}
levers: {{savings: 1.0}}
rules:
  - id: call_me
    description: Mortgage calculator used 3 times
    when: profile.calc.mortgage.count >= 3
    action: {{type: callback, offer: adviser, channel: callback, fallback: email}}
    priority: 10
    policy: {{cooldown_s: 3600, channel_cooldown_s: 600, max_per_day: 2, calendar: open,
              expires_s: 600}}
  - id: cheap_offer
    when: profile.counts.page_view >= 1
    action: {{type: offer, offer: cheap, slot: hero}}
  - id: dear_offer
    when: profile.counts.page_view >= 1
    action: {{type: offer, offer: dear, slot: hero}}
"""


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return write_pack(tmp_path, PACK)


async def _engine(make_engine: Any, settings: Settings, rules: Path) -> EngineClient:
    return await make_engine(replace(settings, rules_dir=rules))  # type: ignore[no-any-return]


async def _set_attrs(engine: EngineClient, customer: str, **attrs: Any) -> None:
    async with engine.session.put(
        f"{engine.url}/v1/profiles/{customer}/attributes", json=attrs, headers=engine.api_headers
    ) as r:
        assert r.status == 200, await r.text()


def _three_calcs() -> list[dict[str, Any]]:
    return [calc("mortgage", 250_000 + i * 10_000, 300) for i in range(3)]


async def test_a_consenting_customer_gets_one_callback_then_cooldown(
    make_engine: Any, settings: Settings, pack: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, pack)
    await _set_attrs(engine, "c-yes", consent_call=True)
    token = engine.token("c-yes")
    _, first, _ = await engine.post_events(engine.batch(_three_calcs(), identity=token))
    _, second, _ = await engine.post_events(engine.batch(_three_calcs(), identity=token))

    calls = [d for d in first["decisions"] if d["action"] == "callback"]
    assert len(calls) == 1 and calls[0]["channel"] == "callback"
    assert not [d for d in second["decisions"] if d["action"] == "callback"]  # cooldown
    stream = keys.trigger_stream(keys.trigger_shard(keys.customer_prefix("c-yes")))
    entries = await redis.xrange(stream)
    assert len(entries) == 1
    trig = entries[0][1]
    assert trig["kind"] == "callback" and trig["customer_id"] == "c-yes"
    assert int(trig["expires_ms"]) - int(trig["created_ms"]) == 600_000
    audit = (await engine.get_json(f"/v1/decisions/{calls[0]['id']}", headers=engine.api_headers))[
        1
    ]
    assert audit["rule"] == "call_me" and "profile" in audit["inputs"]
    history = (await engine.profile("c-yes"))["contact_history"]
    assert [h["rule"] for h in history if h["kind"] == "decision"] == ["call_me"]


@pytest.mark.parametrize(
    ("attrs", "channel"),
    [
        ({"consent_call": False}, "email"),  # no consent: the rule's fallback channel
        ({"consent_call": True, "do_not_call": True}, "email"),
    ],
)
async def test_consent_and_do_not_call_move_the_contact_to_the_fallback(
    make_engine: Any, settings: Settings, pack: Path, attrs: dict[str, Any], channel: str
) -> None:
    engine = await _engine(make_engine, settings, pack)
    await _set_attrs(engine, "c-attr", **attrs)
    _, resp, _ = await engine.post_events(
        engine.batch(_three_calcs(), identity=engine.token("c-attr"))
    )
    contacts = [d for d in resp["decisions"] if d["action"] == "callback"]
    assert [d["channel"] for d in contacts] == [channel]


@pytest.mark.parametrize(
    ("asked_about", "channel"), [("mortgage", "callback"), ("savings", "email")]
)
async def test_asking_for_a_call_is_consent_only_for_a_call_about_that(
    make_engine: Any, settings: Settings, pack: Path, asked_about: str, channel: str
) -> None:
    engine = await _engine(make_engine, settings, pack)  # no CRM consent on file
    call_me = event("interest", props={"product": asked_about, "call_me": True})
    _, resp, _ = await engine.post_events(
        engine.batch([call_me, *_three_calcs()], identity=engine.token(f"c-ask-{asked_about}"))
    )
    # The pack's mortgage callback: a call request about savings is no consent to it.
    assert [d["channel"] for d in resp["decisions"] if d["action"] == "callback"] == [channel]


async def test_anonymous_visitors_are_never_called(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    _, resp, _ = await engine.post_events(engine.batch(_three_calcs()))
    assert not [d for d in resp["decisions"] if d["action"] == "callback"]


async def test_arbitration_gives_the_slot_to_the_higher_value_offer(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    _, resp, _ = await engine.post_events(engine.batch([event("page_view", page="/")]))
    offers = [d for d in resp["decisions"] if d["action"] == "offer"]
    assert [(d["slot"], d["offer"]["id"]) for d in offers] == [("hero", "dear")]
    audit = (await engine.get_json(f"/v1/decisions/{offers[0]['id']}", headers=engine.api_headers))[
        1
    ]
    cheap = next(t for t in audit["trace"] if t["rule"] == "cheap_offer")
    assert (cheap["result"], cheap["why"]) == ("suppressed", "slot_taken")


async def test_browsing_under_the_same_offer_is_one_decision_with_one_audit_record(
    make_engine: Any, settings: Settings, pack: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, pack)
    anon = "anon-same-offer"
    ids = []
    first_audit: dict[str, Any] = {}
    for page in ("/", "/loans", "/savings"):
        _, resp, _ = await engine.post_events(
            engine.batch([event("page_view", page=page)], anonymous_id=anon)
        )
        ids += [d["id"] for d in resp["decisions"] if d["action"] == "offer"]
        if not first_audit:
            _, first_audit = await engine.get_json(
                f"/v1/decisions/{ids[0]}", headers=engine.api_headers
            )
        await asyncio.sleep(0.01)  # later batches decide at a later ms
    assert len(ids) == 3 and len(set(ids)) == 1  # the snippet keeps the offer on show
    assert len([k async for k in redis.scan_iter("rb:{d:*")]) == 1
    status, audit = await engine.get_json(f"/v1/decisions/{ids[0]}", headers=engine.api_headers)
    # Written once: the record of the first decision, not rewritten by every batch.
    assert status == 200 and audit == first_audit and audit["offer"]["id"] == "dear"
    # Another worker of the same deployment (same config) decides the same id...
    second = await _engine(make_engine, settings, pack)
    _, again, _ = await second.post_events(
        second.batch([event("page_view", page="/cards")], anonymous_id=anon)
    )
    assert [d["id"] for d in again["decisions"] if d["action"] == "offer"] == ids[:1]
    assert len([k async for k in redis.scan_iter("rb:{d:*")]) == 1
    # ...and another visitor under the same offer is another decision.
    _, other, _ = await engine.post_events(engine.batch([event("page_view", page="/")]))
    assert [d["id"] for d in other["decisions"] if d["action"] == "offer"] != ids[:1]


async def test_outside_business_hours_a_callback_falls_back_or_is_dropped(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    d = tmp_path / "closed"
    d.mkdir()
    (d / "p.yaml").write_text(
        PACK.replace("calendar: open", "calendar: closed,\n              outside_hours: fallback")
    )
    engine = await _engine(make_engine, settings, d)
    await _set_attrs(engine, "c-late", consent_call=True)
    _, resp, _ = await engine.post_events(
        engine.batch(_three_calcs(), identity=engine.token("c-late"))
    )
    assert [x["channel"] for x in resp["decisions"] if x["action"] == "callback"] == ["email"]


async def test_two_workers_racing_on_one_customer_fire_one_callback(
    make_engine: Any, settings: Settings, pack: Path, redis: aioredis.Redis
) -> None:
    a = await _engine(make_engine, settings, pack)
    b = await _engine(make_engine, settings, pack)  # a second app: its own connections
    await _set_attrs(a, "c-race", consent_call=True)
    token = a.token("c-race")
    results = await asyncio.gather(
        *[
            engine.post_events(engine.batch(_three_calcs(), identity=token))
            for engine in (a, b) * 10
        ]
    )
    calls = [d for _, r, _ in results for d in r["decisions"] if d["action"] == "callback"]
    assert len(calls) == 1


async def test_a_broken_rule_file_is_rejected_and_the_old_rules_keep_deciding(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    (pack / "broken.yaml").write_text(
        "rules:\n  - id: bad\n    when: profile.__class__\n"
        "    action: {type: offer, offer: cheap}\n"
    )
    async with engine.session.post(
        f"{engine.url}/v1/admin/rules/reload", headers=engine.api_headers
    ) as r:
        assert r.status == 422
        body = await r.json()
    assert body["reloaded"] is False and "broken.yaml:3:11:" in body["error"]
    _, resp, _ = await engine.post_events(engine.batch([event("page_view", page="/")]))
    assert [d["offer"]["id"] for d in resp["decisions"]] == ["dear"]
    async with engine.session.get(f"{engine.url}/metrics") as r:
        assert "ringback_rules_load_errors_total 1.0" in await r.text()


async def test_hot_reload_under_continuous_load_fails_no_request(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    stop = asyncio.Event()
    statuses: list[int] = []
    seen_offers: set[str] = set()

    async def load() -> None:
        while not stop.is_set():
            status, resp, _ = await engine.post_events(engine.batch([event("page_view", page="/")]))
            statuses.append(status)
            seen_offers.update(d["offer"]["id"] for d in resp.get("decisions", []))

    workers = [asyncio.create_task(load()) for _ in range(8)]
    for value in (5000, 1, 7000, 2):  # flip which offer wins the slot, repeatedly
        (pack / "pack.yaml").write_text(PACK.replace("value: 10,", f"value: {value},"))
        async with engine.session.post(
            f"{engine.url}/v1/admin/rules/reload", headers=engine.api_headers
        ) as r:
            assert r.status == 200
        await asyncio.sleep(0.15)
    stop.set()
    await asyncio.gather(*workers)
    assert len(statuses) > 50
    assert set(statuses) == {200}
    assert seen_offers == {"cheap", "dear"}  # both rule versions served


ESCAPES = [
    "profile.__class__",
    "().__class__.__bases__",
    "__import__('os')",
    "open('/etc/passwd')",
    "10 ** 10 ** 10",
    "'a' * 10 ** 9",
    "lambda: 1",
    "[x for x in profile]",
    "profile['x']",
    "not " * 40 + "true",
    "getattr(profile, 'x')",
    "1" * 20,
    "'" + "a" * 2000 + "'",
]


@pytest.mark.parametrize("expr", ESCAPES)
def test_escape_attempts_are_rejected_at_load_with_a_position(tmp_path: Path, expr: str) -> None:
    (tmp_path / "r.yaml").write_text(
        "offers:\n  - {id: o, title: T}\nrules:\n  - id: r\n"
        f"    when: {orjson.dumps(expr).decode()}\n    action: {{type: offer, offer: o}}\n"
    )
    with pytest.raises(RuleSetError) as info:
        load_rules(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'r.yaml'}:5:")


def _ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


NY = Calendar(
    "ny", "America/New_York", {i: [(540, 1020)] for i in range(5)}, country="US", subdiv="NY"
)
LDN = Calendar(
    "ldn",
    "Europe/London",
    {i: [(480, 1200)] for i in range(6)},
    quiet=[(1260, 480)],
    country="GB",
    subdiv="ENG",
    closed=frozenset({dt.date(2026, 12, 24)}),
)


@pytest.mark.parametrize(
    ("cal", "instant", "open_"),
    [
        (NY, "2026-11-23T14:00+00:00", True),  # 09:00 in New York (EST)
        (NY, "2026-11-23T13:59+00:00", False),  # 08:59 in New York
        (NY, "2026-07-06T13:00+00:00", True),  # 09:00 EDT: same local hour, other UTC hour
        (NY, "2026-11-26T15:00+00:00", False),  # Thanksgiving
        (LDN, "2026-03-30T07:30+00:00", True),  # the Monday after the spring-forward: 08:30 BST
        (LDN, "2026-03-27T07:30+00:00", False),  # the Friday before it: 07:30 GMT
        (LDN, "2026-12-24T12:00+00:00", False),  # explicit closure
        (LDN, "2026-12-28T12:00+00:00", False),  # substitute bank holiday for Boxing Day
        (LDN, "2026-11-28T21:30+00:00", False),  # Saturday evening: quiet hours
        (NY, "2026-11-23T04:30+00:00", False),  # Monday in London, still Sunday night in NY
    ],
)
def test_calendars_follow_local_time_holidays_and_dst(
    cal: Calendar, instant: str, open_: bool
) -> None:
    assert cal.is_open(_ms(instant)) is open_


def test_scheduled_callbacks_go_to_the_next_opening() -> None:
    friday_evening = _ms("2026-11-27T22:00+00:00")
    nxt = LDN.next_open(friday_evening)
    assert nxt == _ms("2026-11-28T08:00+00:00")


def _walk_next_open(cal: Calendar, now_ms: int, horizon_days: int = 14) -> int | None:
    """The reference: `next_open` as it was, trying every quarter hour."""
    step = 15 * 60_000
    t = now_ms - now_ms % step + step
    for _ in range(horizon_days * 96):
        if cal.is_open(t):
            return t
        t += step
    return None


_MINUTES = st.integers(0, 1440)
_INTERVALS = st.lists(st.tuples(_MINUTES, _MINUTES), max_size=3)
_DAY_HOURS = st.one_of(
    st.just([(0, 1440)]),  # open all day
    st.just([(480, 1200)]),
    st.just([(60, 90)]),  # 01:00-01:30: skipped in spring, twice in autumn (London)
    st.just([(120, 180)]),  # 02:00-03:00: New York's skipped / repeated hour
    st.just([(0, 15)]),
    _INTERVALS.map(lambda xs: [(min(a, b), max(a, b)) for a, b in xs]),
)
# The 2026 DST changes (UTC) of each zone, and the Christmas holidays.
_CHANGES = {
    "Europe/London": ("2026-03-29T01:00+00:00", "2026-10-25T01:00+00:00"),
    "America/New_York": ("2026-03-08T07:00+00:00", "2026-11-01T06:00+00:00"),
    "Australia/Lord_Howe": ("2026-04-04T15:00+00:00", "2026-10-03T15:30+00:00"),  # 30 min
}


@st.composite
def _calendars(draw: st.DrawFn) -> tuple[Calendar, int]:
    """A calendar and a start: often within hours of a DST change, at any millisecond."""
    zone = draw(st.sampled_from(sorted(_CHANGES)))
    hours = {d: draw(_DAY_HOURS) for d in range(7) if draw(st.integers(0, 3))}  # some closed
    holidays = draw(st.sampled_from([(None, None), ("GB", "ENG"), ("US", "NY")]))
    closed = draw(st.frozensets(st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 31)), max_size=6))
    quiet = draw(st.sampled_from([[], [(1260, 480)], [(0, 120)], [(600, 615)]]))
    around = draw(st.sampled_from([*_CHANGES[zone], "2026-12-24T12:00+00:00"]))
    span = draw(st.sampled_from([4 * 3_600_000, 3 * 86_400_000]))
    start = st.integers(-span, span).map(lambda d: _ms(around) + d)
    anywhere = st.integers(_ms("2026-01-01T00:00+00:00"), _ms("2027-12-31T00:00+00:00"))
    now = draw(st.one_of(start, start, anywhere))
    return Calendar("c", zone, hours, quiet, *holidays, closed=closed), now


@hypothesis_settings(max_examples=400, deadline=None, database=None, derandomize=True)
@given(_calendars(), st.sampled_from([14, 14, 14, 3, 1, 0]))
def test_next_opening_is_the_first_open_quarter_hour_across_dst_and_holidays(
    case: tuple[Calendar, int], horizon_days: int
) -> None:
    """Computed from the hours, the next opening is the one trying every quarter hour
    finds: through skipped and repeated wall-clock hours, holidays, closures, closed
    days, quiet hours, calendars open all day or never."""
    cal, now = case
    assert cal.next_open(now, horizon_days) == _walk_next_open(cal, now, horizon_days)


@pytest.mark.parametrize(
    ("hours", "now", "expected"),
    [
        # Sunday 01:00-01:30 London on the autumn change: open in the repeated hour
        # (01:00 BST = 00:00 UTC and 01:00 GMT = 01:00 UTC), so 01:00 GMT after 00:50 UTC.
        ({6: [(60, 90)]}, "2026-10-25T00:50+00:00", "2026-10-25T01:00+00:00"),
        # closed at 01:45 BST, open again at 01:00 GMT a quarter of an hour later
        ({6: [(60, 90)]}, "2026-10-25T00:40+00:00", "2026-10-25T01:00+00:00"),
        # the spring change skips 01:00-02:00 local: open next Sunday, 01:00 BST (00:00 UTC)
        ({6: [(60, 90)]}, "2026-03-28T12:00+00:00", "2026-04-05T00:00+00:00"),
    ],
)
def test_next_opening_through_a_repeated_or_skipped_hour(
    hours: dict[int, list[tuple[int, int]]], now: str, expected: str
) -> None:
    cal = Calendar("c", "Europe/London", hours)
    assert cal.next_open(_ms(now)) == _ms(expected)


def test_holdout_is_stable_and_close_to_its_share() -> None:
    members = [holdout(f"cust-{i}", "rule_a", 10) for i in range(20_000)]
    assert members == [holdout(f"cust-{i}", "rule_a", 10) for i in range(20_000)]
    assert 0.09 < sum(members) / len(members) < 0.11
    assert members != [holdout(f"cust-{i}", "rule_b", 10) for i in range(20_000)]


def test_rules_check_cli_prints_positions_and_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "engine", "rules", "check", str(RULES_DIR)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and ok.stdout.startswith("ok:")
    (tmp_path / "bad.yaml").write_text(
        "rules:\n  - id: x\n    when: profile.a >\n    action: {type: offer, offer: nope}\n"
    )
    bad = subprocess.run(
        [sys.executable, "-m", "engine", "rules", "check", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert f"{tmp_path / 'bad.yaml'}:3:" in bad.stdout
    assert f"{tmp_path / 'bad.yaml'}:4:" in bad.stdout  # every problem, not the first


async def test_no_agents_for_the_queue_holds_callbacks_back(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    d = tmp_path / "capacity"
    d.mkdir()
    (d / "p.yaml").write_text(
        PACK.replace("expires_s: 600}", "expires_s: 600,\n              max_queue_per_agent: 2}")
    )
    engine = await _engine(make_engine, settings, d)
    await _set_attrs(engine, "c-cap", consent_call=True)
    monitor = engine.extra["app"][CAPACITY]
    assert (await monitor.refresh()).agents_online == 0  # nobody has the queue open
    _, resp, _ = await engine.post_events(
        engine.batch(_three_calcs(), identity=engine.token("c-cap"))
    )
    assert not [x for x in resp["decisions"] if x["action"] == "callback"]
    async with engine.session.get(f"{engine.url}/metrics") as r:
        assert (
            'ringback_rule_suppressed_total{reason="no_capacity",rule="call_me"} 1.0'
            in await r.text()
        )

    # An agent signs in and opens the queue: capacity appears, the callback goes out.
    agent, _ = await engine.agent()
    try:
        async with agent.ws_connect(f"{engine.url}/v1/triggers/ws") as ws:
            await ws.receive(timeout=5)
            assert (await monitor.refresh()).agents_online == 1
            _, resp, _ = await engine.post_events(
                engine.batch(_three_calcs(), identity=engine.token("c-cap"))
            )
            assert [x["channel"] for x in resp["decisions"] if x["action"] == "callback"] == [
                "callback"
            ]
    finally:
        await agent.close()


async def test_a_callback_reaches_the_live_queue_once_with_its_context(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    await _set_attrs(engine, "c-live", consent_call=True)
    agent, _ = await engine.agent()
    try:
        async with agent.ws_connect(f"{engine.url}/v1/triggers/ws") as ws:
            assert orjson.loads((await ws.receive(timeout=5)).data)["kind"] == "snapshot"
            await engine.extra["app"][GATEWAY].ready.wait()
            _, resp, _ = await engine.post_events(
                engine.batch(_three_calcs(), identity=engine.token("c-live"))
            )
            (call,) = [d for d in resp["decisions"] if d["action"] == "callback"]
            pushed = []
            with contextlib.suppress(TimeoutError):
                while True:  # everything the socket says for the next second
                    pushed.append(orjson.loads((await ws.receive(timeout=1.0)).data))
    finally:
        await agent.close()
    callbacks = [m for m in pushed if m.get("kind") == "callback"]
    # Exactly once, with what the agent needs to make the call personal.
    assert [m["id"] for m in callbacks] == [call["id"]]
    assert callbacks[0]["customer_id"] == "c-live" and callbacks[0]["entry"]
    assert callbacks[0]["context"]["calc"]["mortgage"]["count"] == 3
    assert isinstance(callbacks[0]["expires_ms"], int)


async def test_workers_that_stopped_long_ago_leave_the_capacity_count(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    monitor = engine.extra["app"][CAPACITY]
    await redis.hset(AGENTS_KEY, "old-host-123", "3:1000")  # a worker gone since 1970
    await redis.hset(AGENTS_KEY, "broken-entry", "not a reading")
    cap = await monitor.refresh()
    assert cap.agents_online == 0  # neither counts...
    assert not await redis.hexists(AGENTS_KEY, "old-host-123")  # ...nor stays behind
    assert not await redis.hexists(AGENTS_KEY, "broken-entry")
    assert await redis.hexists(AGENTS_KEY, monitor.worker)  # this worker's own reading
