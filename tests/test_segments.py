"""Real-time segments: declared beside the rules, evaluated per batch before them, kept in
the profile with entry and exit times, usable in rule conditions and as model features,
counted per segment and day (distinct members, entries, exits) and in /metrics.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import RULES_DIR, EngineClient, calc, event, new_anon, write_pack

from engine.core.settings import Settings
from engine.decisions.inputs import Capacity, DecisionInput
from engine.decisions.loader import RuleSetError, load_rules
from engine.decisions.plan import decide
from engine.delivery.reports import dims_of
from engine.delivery.segment_counts import segment_sizes
from engine.http.state import DECIDER, STORE
from engine.profile.profiles import ProfileStore, decode_profile
from engine.valkey import keys

PACK = """
offers:
  - {id: adviser, title: Adviser, product: mortgage, value: 900, channels: [web]}
segments:
  - id: calculator_users
    description: Used the mortgage calculator at least twice
    when: profile.calc.mortgage.count >= 2
  - id: big_mortgage
    description: Priced a mortgage of 400k or more, last time they looked
    when: default(profile.calc.mortgage.amount, 0) >= 400000
rules:
  - id: researcher_offer
    when: '"calculator_users" in segments'
    action: {type: offer, offer: adviser, slot: hero}
"""

# Segments only: no rule, so no decision is counted and every PFADD is a segment's.
SEGMENTS_ONLY = """
segments:
  - id: browsers
    when: profile.counts.page_view >= 1
  - id: card_browsers
    when: profile.categories.cards >= 1
"""


async def _engine(make_engine: Any, settings: Settings, rules: Path) -> EngineClient:
    return await make_engine(replace(settings, rules_dir=rules))  # type: ignore[no-any-return]


def _ms() -> int:
    return int(time.time() * 1000)


async def _anonymous_profile(engine: EngineClient, anon: str) -> dict[str, Any]:
    app = engine.extra["app"]
    fields, *_ = await ProfileStore(app[STORE], engine.settings).read(
        keys.anonymous_prefix(engine.site, anon)
    )
    return decode_profile(fields, _ms(), engine.settings.profile.intent_half_life_s)


def _big_calcs() -> list[dict[str, Any]]:
    """Two mortgage calculations, the newest for 450k: in both segments of `PACK`."""
    now = _ms()
    return [calc(amount=200_000, ts=now - 1000), calc(amount=450_000, ts=now)]


def _counted(engine: EngineClient, name: str, segment: str) -> float:
    assert engine.metrics is not None
    return engine.metrics.registry.get_sample_value(name, {"segment": segment}) or 0.0


# -- through the engine --------------------------------------------------------------------


async def test_a_batch_enters_segments_with_their_time_and_a_later_batch_records_the_exit(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, write_pack(tmp_path, PACK))
    token = engine.token("c-seg")
    t0 = _ms()
    _, first, _ = await engine.post_events(engine.batch(_big_calcs(), identity=token))
    t1 = _ms()
    profile = (await engine.profile("c-seg"))["profile"]
    assert set(profile["segments"]) == {"calculator_users", "big_mortgage"}
    entered = profile["segments"]["calculator_users"]
    assert t0 <= entered <= t1 and profile["segments"]["big_mortgage"] == entered
    assert profile["segments_exited"] == {}
    # The rule reading `segments` saw the segment entered by the same batch.
    assert [d["rule"] for d in first["decisions"]] == ["researcher_offer"]

    await engine.post_events(engine.batch([calc(amount=200_000)], identity=token))
    t2 = _ms()
    profile = (await engine.profile("c-seg"))["profile"]
    assert profile["segments"] == {"calculator_users": entered}  # still in: time kept
    assert t1 <= profile["segments_exited"]["big_mortgage"] <= t2


async def test_an_anonymous_visitor_is_segmented_too(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, write_pack(tmp_path, PACK))
    anon = new_anon()
    await engine.post_events(engine.batch([calc(), calc()], anonymous_id=anon))
    profile = await _anonymous_profile(engine, anon)
    assert set(profile["segments"]) == {"calculator_users"}


async def test_entries_and_exits_reach_metrics_and_the_daily_sizes(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, write_pack(tmp_path, PACK))
    entries, exits = "ringback_segment_entries_total", "ringback_segment_exits_total"
    anon = new_anon()
    await engine.post_events(engine.batch(_big_calcs(), anonymous_id=anon))
    token = engine.token("c-sizes")
    await engine.post_events(engine.batch(_big_calcs(), identity=token))
    await engine.post_events(engine.batch([calc(amount=100_000)], identity=token))  # exits big
    await engine.post_events(engine.batch([calc(amount=100_000)], identity=token))  # no change

    assert _counted(engine, entries, "calculator_users") == 2
    assert _counted(engine, entries, "big_mortgage") == 2
    assert _counted(engine, exits, "big_mortgage") == 1
    assert _counted(engine, exits, "calculator_users") == 0

    today = dt.datetime.now(dt.UTC).date()
    sizes = await segment_sizes(
        engine.extra["app"][STORE],
        ["calculator_users", "big_mortgage"],
        today - dt.timedelta(days=1),
        today,
    )
    yesterday, now = sizes["calculator_users"]
    assert yesterday == {
        "day": (today - dt.timedelta(days=1)).isoformat(),
        "members": 0,
        "entered": 0,
        "exited": 0,
    }
    assert now == {"day": today.isoformat(), "members": 2, "entered": 2, "exited": 0}
    assert sizes["big_mortgage"][1] == {
        "day": today.isoformat(),
        "members": 2,
        "entered": 2,
        "exited": 1,
    }


async def test_a_browsing_visitor_costs_one_pfadd_per_segment_and_day(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, write_pack(tmp_path, SEGMENTS_ONLY))
    anon = new_anon()
    await redis.config_resetstat()
    for i in range(5):
        page = "/cards" if i else "/"
        await engine.post_events(engine.batch([event("page_view", page=page)], anonymous_id=anon))
    stats = await redis.info("commandstats")
    # 'browsers' from the first batch, 'card_browsers' from the second: once each.
    assert stats["cmdstat_pfadd"]["calls"] == 2
    profile = await _anonymous_profile(engine, anon)
    assert set(profile["segments"]) == {"browsers", "card_browsers"}


async def test_the_daily_member_count_cannot_be_tested_for_a_customer_id(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    """Someone with a copy of Valkey, but not the config's secrets, must not learn from
    the year-long member counts whether a (maybe since erased) customer was in one."""
    engine = await _engine(make_engine, settings, write_pack(tmp_path, SEGMENTS_ONLY))
    await engine.post_events(engine.batch([event("page_view")], identity=engine.token("c-hll")))
    day = dt.datetime.now(dt.UTC).date().isoformat()
    key = keys.segment_members("browsers", day)
    assert await redis.pfcount(key) == 1
    dump = await redis.dump(key)
    assert dump is not None
    for guess in (keys.customer_prefix("c-hll"), "c-hll"):
        await redis.restore("probe", 0, dump, replace=True)
        assert await redis.pfadd("probe", guess) == 1  # the id is not what was counted
    # What was counted is the keyed hash, which the engine reproduces.
    counter = engine.extra["app"][DECIDER].segments
    await redis.restore("probe", 0, dump, replace=True)
    assert await redis.pfadd("probe", counter.member(day, keys.customer_prefix("c-hll"))) == 0


async def test_segments_are_model_features_and_recorded_with_the_decision(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, write_pack(tmp_path, PACK))
    _, answer, _ = await engine.post_events(engine.batch(_big_calcs(), anonymous_id=new_anon()))
    (decision,) = answer["decisions"]
    status, audit = await engine.get_json(
        f"/v1/decisions/{decision['id']}", headers=engine.api_headers
    )
    assert status == 200, audit
    assert audit["segments"] == ["big_mortgage", "calculator_users"]
    assert audit["features"]["seg_calculator_users"] == 1.0
    assert audit["features"]["seg_big_mortgage"] == 1.0
    assert "segments" in audit["inputs"]  # what the rule read
    assert ("segment", "calculator_users") in dims_of(audit)  # what reports count it under


async def test_the_shipped_segments_find_a_researcher_coming_back_after_a_price_check(
    make_engine: Any, settings: Settings
) -> None:
    engine = await _engine(make_engine, settings, RULES_DIR)
    anon = new_anon()
    hours_ago = _ms() - 3 * 3_600_000
    await engine.post_events(engine.batch([calc(amount=300_000, ts=hours_ago)], anonymous_id=anon))
    profile = await _anonymous_profile(engine, anon)
    assert set(profile["segments"]) == {"mortgage_researchers"}  # anonymous: never high value

    await engine.post_events(engine.batch([event("page_view", page="/")], anonymous_id=anon))
    profile = await _anonymous_profile(engine, anon)  # a new session: back after the check
    assert set(profile["segments"]) == {"mortgage_researchers", "returning_after_price_check"}


# -- deciding (pure) -----------------------------------------------------------------------

NOW = 1_795_000_000_000


def _plan(rules: Path, profile: dict[str, Any]) -> Any:
    inp = DecisionInput("demo-bank", "a1", None, profile, {}, [], NOW)
    return decide(load_rules(rules), inp, NOW, Capacity(), b"k", lambda p: "other")


@pytest.mark.parametrize(
    ("stored", "calcs", "entered", "exited"),
    [
        ({}, {"count": 2, "amount": 500_000}, ("big_mortgage", "calculator_users"), ()),
        ({"calculator_users": 1, "big_mortgage": 1}, {"count": 2, "amount": 500_000}, (), ()),
        (
            {"calculator_users": 1, "big_mortgage": 1},
            {"count": 2, "amount": 1},
            (),
            ("big_mortgage",),
        ),
        ({"calculator_users": 1, "retired": 1}, {"count": 2, "amount": 1}, (), ("retired",)),
        ({}, {"count": 1, "amount": 1}, (), ()),
    ],
    ids=["enters", "stays", "exits", "undeclared_exits", "never_in"],
)
def test_the_plan_carries_only_changes_against_the_stored_membership(
    tmp_path: Path,
    stored: dict[str, int],
    calcs: dict[str, Any],
    entered: tuple[str, ...],
    exited: tuple[str, ...],
) -> None:
    plan = _plan(write_pack(tmp_path, PACK), {"calc": {"mortgage": calcs}, "segments": stored})
    assert (plan.entered, plan.exited) == (entered, exited)


# -- declaring segments --------------------------------------------------------------------


def _errors(tmp_path: Path, *files: str) -> list[str]:
    d = tmp_path / "r"
    d.mkdir()
    for i, text in enumerate(files):
        (d / f"f{i}.yaml").write_text(text)
    with pytest.raises(RuleSetError) as info:
        load_rules(d)
    return [e.message for e in info.value.errors]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            ("segments:\n  - {id: a, when: '\"b\" in segments'}\n",),
            "a segment's condition cannot read 'segments'",
        ),
        (
            (
                "offers:\n  - {id: o, title: O}\n"
                "rules:\n  - id: r\n    when: '\"nope\" in segments'\n"
                "    action: {type: offer, offer: o}\n",
            ),
            "unknown segment 'nope'",
        ),
        (
            ("segments:\n  - {id: a, when: 'true'}\n", "segments:\n  - {id: a, when: 'false'}\n"),
            "duplicate segment id 'a'",
        ),
        (("segments:\n  - {id: a, when: 'profile.x >'}\n",), "syntax error"),
        (("segments:\n  - {id: a, when: 'true', colour: red}\n",), "unknown key 'colour'"),
    ],
    ids=["reads_segments", "unknown_segment", "duplicate", "bad_expression", "unknown_key"],
)
def test_bad_segments_are_refused_with_a_reason(
    tmp_path: Path, files: tuple[str, ...], message: str
) -> None:
    errors = _errors(tmp_path, *files)
    assert any(message in e for e in errors), errors


def test_a_rule_set_declares_at_most_32_segments(tmp_path: Path) -> None:
    text = "segments:\n" + "".join(f"  - {{id: s{i}, when: 'true'}}\n" for i in range(33))
    assert _errors(tmp_path, text) == ["a rule set may declare at most 32 segments"]


def test_the_shipped_segments_load() -> None:
    rs = load_rules(RULES_DIR)
    assert rs.segments.ids >= {
        "mortgage_researchers",
        "high_value_digital",
        "returning_after_price_check",
    }
    assert all(s.description for s in rs.segments.segments)
