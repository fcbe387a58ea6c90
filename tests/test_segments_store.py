"""Segment membership lives in the profile: entry and exit times, capped, never creating
a profile (engine/profile/segments_store.py, `rb_segments`), through a real Valkey."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from conftest import StoreTarget, now_ms

from engine.core.settings import Settings
from engine.ingest.schema import Event, decode_batch
from engine.privacy.erasure import Eraser
from engine.profile import layout
from engine.profile.profiles import ProfileStore, decode_profile
from engine.profile.segments_store import apply_segment_changes
from engine.valkey import keys
from engine.valkey.store import Store

SITE = "demo-bank"


@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[Store]:
    s = store_target.store()
    await s.load_library()
    yield s
    await s.close()


def _events(anon: str, n: int = 1) -> list[Event]:
    evs = [
        {"id": uuid.uuid4().hex[:12], "type": "page_view", "ts": now_ms() - 1000 + i, "page": "/"}
        for i in range(n)
    ]
    body = {"site": SITE, "anonymous_id": anon, "events": evs}
    return list(decode_batch(orjson.dumps(body)).events)


async def _visitor(store: Store, settings: Settings) -> tuple[ProfileStore, str, str]:
    profiles = ProfileStore(store, settings)
    anon = "anon" + uuid.uuid4().hex[:16]
    prefix = keys.anonymous_prefix(SITE, anon)
    await profiles.apply_batch(prefix, SITE, _events(anon), anonymous=True)
    return profiles, anon, prefix


async def _decoded(profiles: ProfileStore, prefix: str) -> dict[str, Any]:
    fields, *_ = await profiles.read(prefix)
    return decode_profile(fields, now_ms(), 86_400)


async def test_entering_and_leaving_segments_shows_in_the_profile_with_their_times(
    store: Store, settings: Settings
) -> None:
    profiles, _, prefix = await _visitor(store, settings)
    await apply_segment_changes(
        store, prefix, {"mortgage_researchers": 1_000, "high_value": 2_000}, {}
    )
    p = await _decoded(profiles, prefix)
    assert p["segments"] == {"mortgage_researchers": 1_000, "high_value": 2_000}
    assert p["segments_exited"] == {}

    await apply_segment_changes(store, prefix, {}, {"high_value": 5_000})
    p = await _decoded(profiles, prefix)
    assert p["segments"] == {"mortgage_researchers": 1_000}
    assert p["segments_exited"] == {"high_value": 5_000}


async def test_a_member_entering_again_keeps_its_first_entry_time(
    store: Store, settings: Settings
) -> None:
    profiles, _, prefix = await _visitor(store, settings)
    await apply_segment_changes(store, prefix, {"s": 1_000}, {})
    await apply_segment_changes(store, prefix, {"s": 9_000}, {})
    assert (await _decoded(profiles, prefix))["segments"] == {"s": 1_000}


async def test_repeating_a_change_is_idempotent(store: Store, settings: Settings) -> None:
    profiles, _, prefix = await _visitor(store, settings)
    await apply_segment_changes(store, prefix, {"a": 1_000, "b": 1_000}, {})
    await apply_segment_changes(store, prefix, {}, {"a": 2_000})
    raw = await store.call("GET", keys.profile_keys(prefix)[0])
    await apply_segment_changes(store, prefix, {}, {"a": 3_000})  # no longer a member
    await apply_segment_changes(store, prefix, {"b": 1_500}, {})  # already, earlier
    assert await store.call("GET", keys.profile_keys(prefix)[0]) == raw
    p = await _decoded(profiles, prefix)
    assert p["segments"] == {"b": 1_000} and p["segments_exited"] == {"a": 2_000}


async def test_re_entering_keeps_the_last_exit_and_a_later_exit_replaces_it(
    store: Store, settings: Settings
) -> None:
    profiles, _, prefix = await _visitor(store, settings)
    await apply_segment_changes(store, prefix, {"s": 1_000}, {})
    await apply_segment_changes(store, prefix, {}, {"s": 2_000})
    await apply_segment_changes(store, prefix, {"s": 3_000}, {})
    p = await _decoded(profiles, prefix)
    assert p["segments"] == {"s": 3_000} and p["segments_exited"] == {"s": 2_000}
    await apply_segment_changes(store, prefix, {}, {"s": 4_000})
    p = await _decoded(profiles, prefix)
    assert p["segments"] == {} and p["segments_exited"] == {"s": 4_000}


async def test_a_profile_that_does_not_exist_is_not_created(store: Store) -> None:
    prefix = keys.anonymous_prefix(SITE, "anon" + uuid.uuid4().hex[:16])
    await apply_segment_changes(store, prefix, {"s": 1_000}, {})
    assert await store.call("EXISTS", keys.profile_keys(prefix)[0]) == 0


async def test_an_erased_customer_stays_erased_when_segments_arrive_late(
    store: Store, settings: Settings
) -> None:
    profiles = ProfileStore(store, settings)
    customer = "cust-" + uuid.uuid4().hex[:8]
    prefix = keys.customer_prefix(customer)
    anon = "anon" + uuid.uuid4().hex[:16]
    await profiles.apply_batch(prefix, SITE, _events(anon), anonymous=False)
    await apply_segment_changes(store, prefix, {"s": 1_000}, {})
    eraser = Eraser(store, settings)
    try:
        await eraser.erase_customer(customer)
    finally:
        await eraser.close()

    # A decision made before the erasure writes its segment changes after it.
    await apply_segment_changes(store, prefix, {"t": 2_000}, {"s": 3_000})
    assert await store.call("EXISTS", *keys.profile_keys(prefix)) == 0


async def test_an_anonymous_profile_keeps_its_expiry(store: Store, settings: Settings) -> None:
    _, _, prefix = await _visitor(store, settings)
    ttl = await store.call("TTL", keys.profile_keys(prefix)[0])
    await apply_segment_changes(store, prefix, {"s": 1_000}, {})
    assert 0 < await store.call("TTL", keys.profile_keys(prefix)[0]) <= ttl


async def test_membership_is_capped_keeping_the_longest_standing_and_latest_exits(
    store: Store, settings: Settings
) -> None:
    profiles, _, prefix = await _visitor(store, settings)
    cap = layout.SEGMENT_SPACE.cap
    n = cap + 8
    await apply_segment_changes(store, prefix, {f"s{i:02d}": 1_000 + i for i in range(n)}, {})
    p = await _decoded(profiles, prefix)
    assert p["segments"] == {f"s{i:02d}": 1_000 + i for i in range(cap)}

    # All leave, then the 8 turned away enter and leave: 40 exits, the latest 32 kept.
    await apply_segment_changes(store, prefix, {}, {f"s{i:02d}": 5_000 + i for i in range(cap)})
    late = {f"s{i:02d}": 6_000 + i for i in range(cap, n)}
    await apply_segment_changes(store, prefix, late, {})
    await apply_segment_changes(store, prefix, {}, {k: v + 3_000 for k, v in late.items()})
    p = await _decoded(profiles, prefix)
    assert p["segments"] == {}
    want = {f"s{i:02d}": 5_000 + i for i in range(n - cap, cap)}
    want |= {k: v + 3_000 for k, v in late.items()}
    assert p["segments_exited"] == want


async def test_merging_takes_the_union_the_earliest_entry_and_the_latest_exit(
    store: Store, settings: Settings
) -> None:
    profiles = ProfileStore(store, settings)
    customer = "cust-" + uuid.uuid4().hex[:8]
    c_prefix = keys.customer_prefix(customer)
    await profiles.apply_batch(c_prefix, SITE, _events("anon" + "c" * 16), anonymous=False)
    await apply_segment_changes(store, c_prefix, {"both": 5_000, "c_only": 6_000, "x": 1}, {})
    await apply_segment_changes(store, c_prefix, {}, {"x": 7_000})

    _, anon, a_prefix = await _visitor(store, settings)
    await apply_segment_changes(store, a_prefix, {"both": 2_000, "a_only": 3_000, "x": 2}, {})
    await apply_segment_changes(store, a_prefix, {}, {"x": 8_000})

    assert await profiles.merge(SITE, anon, customer) == "merged"
    p = await _decoded(profiles, c_prefix)
    assert p["segments"] == {"both": 2_000, "c_only": 6_000, "a_only": 3_000}
    assert p["segments_exited"] == {"x": 8_000}
