"""Profiles have a documented worst-case size, whatever a client sends (issue 9).

Each distinct product, intent key and category used to add fields forever: 60 batches
of 100 products made a 2.35 MB profile that every later batch and decision paid for.
These tests drive the worst case through the real ingest path (and the anonymous ->
known merge) and read the stored profile back from Valkey.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from conftest import EngineClient, calc, event, new_anon, now_ms, open_store

from engine.core.settings import Settings
from engine.profile import layout
from engine.profile.segments_store import apply_segment_changes
from engine.valkey import keys

MAX_PROFILE_BYTES = 24 * 1024  # ringback.lua "Bounded size": 21,067 B at worst
KEPT_CALC_PRODUCTS = 10
KEPT_INTEREST_PRODUCTS = 10
KEPT_INTENT_KEYS = 16
KEPT_CATEGORIES = 16

# Longest names the schema allows (products) and settings allow (categories): 32 chars.
N_CATEGORIES = 40
CATEGORIES = [f"k{i:02d}" + "c" * 29 for i in range(N_CATEGORIES)]
# Client strings at their schema limits, made of the characters cjson escapes the most.
CONTROL = "\u0001"
LONG_PAGE = ("/" + CONTROL) * 1024  # 2048 chars
LONG_UTM = CONTROL * 256
LONG_REFERRER = "https://" + '"' * 300 + "/path?q=1"  # a host of 128 B once encoded
# Segment ids come from config (rule-pack ids: <= 64 characters); more than are kept.
SEGMENT_IDS = [f"s{i:02d}" + "g" * 61 for i in range(layout.SEGMENT_SPACE.cap + 8)]
LONG_FORM = CONTROL * 64

PACK = """
offers:
  - {id: latest_offer, title: Latest, product: mortgage, value: 100, channels: [web]}
  - {id: evicted_offer, title: Evicted, product: cards, value: 900, channels: [web]}
rules:
  - id: latest_product
    when: profile.calc.LATEST.count >= 3
    action: {type: offer, offer: latest_offer, slot: hero}
  - id: evicted_product
    when: profile.calc.EVICTED.count >= 1
    action: {type: offer, offer: evicted_offer, slot: side}
"""


def _product(kind: str, i: int) -> str:
    return f"{kind}{i:03d}" + "p" * 27  # 32 chars: the schema's longest


def _settings(settings: Settings, rules_dir: Path | None = None) -> Settings:
    categories = tuple((name, re.compile(f"/{name}/.*")) for name in CATEGORIES)
    return replace(settings, categories=categories, rules_dir=rules_dir)


async def _post(engine: EngineClient, events: list[dict[str, Any]], anon: str, **kw: Any) -> None:
    status, body, _ = await engine.post_events(engine.batch(events, anonymous_id=anon, **kw))
    assert status == 200, body


async def _drive_worst_case(
    engine: EngineClient, anon: str, tag: str, t0_ms: int, **kw: Any
) -> list[str]:
    """40 batches of new calc and interest products and categories, then long strings;
    returns the calc products in the order sent (oldest first)."""
    calc_products: list[str] = []
    t = t0_ms
    for b in range(40):
        events: list[dict[str, Any]] = []
        for j in range(3):
            n = b * 3 + j
            t += 10
            product = _product(f"c{tag}", n)
            calc_products.append(product)
            for k in (1, 0):  # two scenarios: the first becomes c:<product>:was
                events.append(
                    calc(
                        product,
                        1234567.89123456 + n + k,
                        360,
                        ts=t - k,
                        props={"rate": 12.3456789012345, "monthly_payment": 98765.4321098765},
                    )
                )
            events.append(
                event("interest", ts=t, props={"product": _product(f"x{tag}", n), "call_me": True})
            )
            events.append(event("page_view", ts=t, page=f"/{CATEGORIES[n % N_CATEGORIES]}/x"))
        await _post(engine, events, anon, **kw)
    for _ in range(12):  # 24 long pages, campaigns and abandoned forms (in 64 KB bodies)
        events = []
        for _ in range(2):
            t += 10
            events.append(
                event(
                    "page_view",
                    ts=t,
                    page=LONG_PAGE,
                    props={
                        **{f"utm_{k}": LONG_UTM for k in _UTM},
                        "referrer": LONG_REFERRER,
                    },
                )
            )
            events.append(
                event(
                    "form", ts=t, props={"field": LONG_FORM, "action": "abandon", "form": LONG_FORM}
                )
            )
        events += [event("click", ts=t), event("heartbeat", ts=t, props={"dwell_ms": 3_600_000})]
        await _post(engine, events, anon, **kw)
    return calc_products


_UTM = ("source", "medium", "campaign", "term", "content")


async def _worst_segments(settings: Settings, prefix: str, t0_ms: int) -> None:
    """Every segment entered, most left and entered again: both objects full."""
    store = open_store(settings)
    try:
        every = {s: t0_ms + i for i, s in enumerate(SEGMENT_IDS)}
        await apply_segment_changes(store, prefix, every, {})
        await apply_segment_changes(store, prefix, {}, {s: ms + 1 for s, ms in every.items()})
        await apply_segment_changes(store, prefix, every, {})
        await apply_segment_changes(store, prefix, {}, {s: ms + 2 for s, ms in every.items()})
        await apply_segment_changes(store, prefix, every, {})
    finally:
        await store.close()


async def _profile_bytes(redis: aioredis.Redis, prefix: str) -> int:
    return int(await redis.strlen(keys.profile_keys(prefix)[0]))


async def test_worst_case_anonymous_profile_stays_under_16_kb_and_keeps_the_newest_products(
    make_engine: Any, settings: Settings, redis: aioredis.Redis, tmp_path: Path
) -> None:
    probe = await make_engine(_settings(settings))
    anon = new_anon()
    sent = await _drive_worst_case(probe, anon, "a", now_ms() - 3_600_000)
    await _worst_segments(settings, keys.anonymous_prefix("demo-bank", anon), now_ms())

    size = await _profile_bytes(redis, keys.anonymous_prefix("demo-bank", anon))
    assert size <= MAX_PROFILE_BYTES, size
    stored = orjson.loads(
        await redis.get(keys.profile_keys(keys.anonymous_prefix("demo-bank", anon))[0])
    )
    assert len(stored[layout.SEGMENTS]) == len(stored[layout.SEGMENTS_EXITED]) == 32
    assert all(stored.get(c) for c in (*layout.LAST_TOUCH, *layout.FIRST_TOUCH))
    assert sum(1 for k in stored if k.endswith(":" + layout.CALC_WAS)) == KEPT_CALC_PRODUCTS
    status, body = await probe.get_json(f"/v1/decisions?site=demo-bank&anonymous_id={anon}")
    assert status == 200, body

    # A rule on the newest product still fires; one on an evicted product does not.
    latest, evicted = sent[-1], sent[0]
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "pack.yaml").write_text(PACK.replace("LATEST", latest).replace("EVICTED", evicted))
    engine = await make_engine(_settings(settings, rules))
    t = now_ms()
    await _post(engine, [calc(latest, 250_000, 300, ts=t - 100 + i) for i in range(3)], anon)
    status, body = await engine.get_json(f"/v1/decisions?site=demo-bank&anonymous_id={anon}")
    assert status == 200, body
    assert [d["offer"]["id"] for d in body["decisions"]] == ["latest_offer"], body

    raw = await redis.get(keys.profile_keys(keys.anonymous_prefix("demo-bank", anon))[0])
    assert raw is not None and len(raw.encode()) <= MAX_PROFILE_BYTES
    kept = sorted({k.split(":")[1] for k in _fields(raw) if k.startswith(layout.CALC)})
    assert kept == sorted(sent[-KEPT_CALC_PRODUCTS:])
    assert len({k.split(":")[1] for k in _fields(raw) if k.startswith(layout.INTEREST)}) == (
        KEPT_INTEREST_PRODUCTS
    )
    assert len([k for k in _fields(raw) if k.startswith(layout.INTENT_TS)]) == KEPT_INTENT_KEYS
    assert len([k for k in _fields(raw) if k.startswith(layout.CATEGORY)]) == KEPT_CATEGORIES


def _fields(raw: str) -> list[str]:
    return list(orjson.loads(raw))


async def test_merging_a_worst_case_visitor_into_a_worst_case_customer_stays_under_16_kb(
    make_engine: Any, settings: Settings, redis: aioredis.Redis
) -> None:
    engine = await make_engine(_settings(settings))
    customer = "cust-" + "w" * 123  # the longest customer id: 128 chars
    token = engine.token(customer)
    t0 = now_ms() - 3_600_000

    # The customer's own history, through a first anonymous id that identified first.
    first = new_anon()
    await _post(engine, [event("page_view", page="/", ts=t0)], first, identity=token)
    await _drive_worst_case(engine, first, "k", t0 + 1, identity=token)
    await _worst_segments(settings, keys.customer_prefix(customer), t0)
    # A second device, anonymous, worst case too (its products are newer).
    second = new_anon()
    newer = await _drive_worst_case(engine, second, "b", t0 + 100_000)
    await _worst_segments(settings, keys.anonymous_prefix("demo-bank", second), t0 + 50)
    assert await _profile_bytes(redis, keys.anonymous_prefix("demo-bank", second)) <= (
        MAX_PROFILE_BYTES
    )

    await _post(engine, [event("page_view", page="/", ts=now_ms())], second, identity=token)

    prefix = keys.customer_prefix(customer)
    size = await _profile_bytes(redis, prefix)
    assert size <= MAX_PROFILE_BYTES, size
    assert len(await redis.smembers(keys.profile_keys(prefix)[2])) == 2  # both merged
    body = await engine.profile(customer)
    assert sorted(body["profile"]["calc"]) == sorted(newer[-KEPT_CALC_PRODUCTS:])
    # The union of both sides' segments, capped: the longest-standing members stay.
    members = body["profile"]["segments"]
    assert len(members) == len(body["profile"]["segments_exited"]) == layout.SEGMENT_SPACE.cap
    assert members == {s: t0 + i for i, s in enumerate(SEGMENT_IDS[: len(members)])}
