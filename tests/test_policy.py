"""Contact policy in Valkey: cooldowns, daily caps, and racing workers fire once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from conftest import StoreTarget

from engine.profile.contact_history import Reservation, reserve
from engine.valkey import keys
from engine.valkey.store import Store

PREFIX = keys.customer_prefix("cust-policy")
T0 = 1_795_000_000_000


@pytest.fixture
async def store(store_target: StoreTarget, redis: aioredis.Redis) -> AsyncIterator[Store]:
    s = store_target.store()
    await s.load_library()
    yield s
    await s.close()


def _entry(n: int = 0) -> dict[str, object]:
    return {"kind": "decision", "rule": "mortgage_callback", "n": n}


async def test_rule_cooldown_suppresses_until_it_passes(store: Store) -> None:
    r = Reservation("mortgage_callback", "callback", rule_cooldown_s=3600)
    assert await reserve(store, PREFIX, r, _entry(), T0) is None
    assert await reserve(store, PREFIX, r, _entry(), T0 + 3_599_000) == "cooldown_rule"
    assert await reserve(store, PREFIX, r, _entry(), T0 + 3_600_001) is None


async def test_channel_cooldown_spans_rules(store: Store) -> None:
    a = Reservation("mortgage_callback", "callback", channel_cooldown_s=600)
    b = Reservation("retention_callback", "callback", channel_cooldown_s=600)
    other_channel = Reservation("retention_email", "email", channel_cooldown_s=600)
    assert await reserve(store, PREFIX, a, _entry(), T0) is None
    assert await reserve(store, PREFIX, b, _entry(), T0 + 1000) == "cooldown_channel"
    assert await reserve(store, PREFIX, other_channel, _entry(), T0 + 1000) is None


async def test_daily_cap_counts_per_day_in_the_calendar_zone(store: Store) -> None:
    def r(day: str) -> Reservation:
        return Reservation("card_email", "email", max_per_day=2, day=day)

    results = [await reserve(store, PREFIX, r("2026-11-24"), _entry(i), T0 + i) for i in range(3)]
    assert results == [None, None, "daily_cap"]
    assert await reserve(store, PREFIX, r("2026-11-25"), _entry(), T0 + 10) is None


async def test_reservations_append_to_the_contact_history(
    store: Store, redis: aioredis.Redis
) -> None:
    r = Reservation("mortgage_callback", "callback", rule_cooldown_s=60)
    await reserve(store, PREFIX, r, _entry(1), T0)
    await reserve(store, PREFIX, r, _entry(2), T0 + 1)  # suppressed: not in history
    hist = await redis.xrange(f"{PREFIX}:hist")
    assert [fields["n"] for _, fields in hist] == ["1"]


async def test_two_workers_racing_on_one_customer_fire_one_callback(
    store_target: StoreTarget, redis: aioredis.Redis
) -> None:
    """Separate Store objects = separate connections, as two worker processes have."""
    stores = [store_target.store() for _ in range(8)]
    await stores[0].load_library()
    r = Reservation("mortgage_callback", "callback", rule_cooldown_s=3600, channel_cooldown_s=600)
    try:
        results = await asyncio.gather(
            *[reserve(s, PREFIX, r, _entry(i), T0) for i, s in enumerate(stores * 5)]
        )
    finally:
        for s in stores:
            await s.close()
    assert results.count(None) == 1
    assert set(results) - {None} == {"cooldown_rule"}
    assert await redis.xlen(f"{PREFIX}:hist") == 1
