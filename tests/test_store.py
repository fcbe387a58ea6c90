"""The coalescing Valkey client (engine.store) against a real valkey-server."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ResponseError

from engine.core.metrics import Metrics
from engine.valkey.embedded import EmbeddedValkey
from engine.valkey.store import Store


@pytest.fixture
async def store(valkey: EmbeddedValkey) -> Store:
    s = Store(valkey.url, Metrics())
    yield s  # type: ignore[misc]
    await s.close()


async def test_calls_in_one_tick_share_one_round_trip_and_read_as_redis_py_does(
    store: Store,
) -> None:
    await store.call("DEL", "st:h", "st:z")
    count = "ringback_valkey_pipeline_calls_count"
    before = store.metrics.registry.get_sample_value(count)
    calls = [
        store.call("HSET", "st:h", "a", "1", "b", "2", writes=True),
        store.call("HGETALL", "st:h"),
        store.call("ZADD", "st:z", 1, "m", writes=True),
        store.call("INCR", "st:h"),  # wrong type: this call's error, nobody else's
        store.call("ZSCORE", "st:z", "m"),
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[:3] == [2, {"a": "1", "b": "2"}, 1]
    assert isinstance(results[3], ResponseError) and "WRONGTYPE" in str(results[3])
    assert results[4] == 1.0  # parsed to a float, as redis-py does
    assert store.metrics.registry.get_sample_value(count) == before + 1  # one pipeline


async def test_a_pipeline_cut_off_mid_reply_does_not_poison_the_next_call(
    store: Store,
) -> None:
    await store.call("DEL", "st:list")
    slow = store.call("BLPOP", "st:list", 2)  # blocks on the server
    await asyncio.sleep(0.05)
    slow.cancel()  # the caller gave up (a timeout, shutdown)
    with pytest.raises(asyncio.CancelledError):
        await slow
    # The connection still owes BLPOP's reply (the RPUSH below ends the block); read
    # as the next caller's, it would poison it. Every later call reads its own reply.
    await store.call("RPUSH", "st:list", "x", writes=True)
    for n in range(5):
        assert await store.call("ECHO", f"n{n}") == f"n{n}"


async def test_more_concurrent_pipelines_than_connections_wait_instead_of_failing(
    store: Store,
) -> None:
    # 100 pipelines, each in its own loop tick and each holding its connection for
    # 0.2 s on the server: more than the pool's 64 at once.
    pending = []
    for i in range(100):
        pending.append(asyncio.ensure_future(store.call("BLPOP", f"st:none:{i}", 0.2)))
        await asyncio.sleep(0)
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert results == [None] * 100  # every one timed out server-side; none was refused


async def test_a_burst_leaves_in_pipelines_of_flush_at_calls_each_with_its_own_reply(
    store: Store,
) -> None:
    await store.call("SET", "st:bin", b"\xff\x00", writes=True)
    count = "ringback_valkey_pipeline_calls_count"
    before = store.metrics.registry.get_sample_value(count)
    # 21 calls in one tick: 8 leave at once, 8 more, then the tick's last 5.
    calls = [store.call("ECHO", f"m{i}") for i in range(20)]
    calls.append(store.call("GET", "st:bin", raw=True))
    results = await asyncio.gather(*calls)
    assert results == [f"m{i}" for i in range(20)] + [b"\xff\x00"]  # raw: bytes, undecoded
    assert store.metrics.registry.get_sample_value(count) == before + 3


async def test_a_ticks_pipelines_run_in_order_on_one_connection(valkey: EmbeddedValkey) -> None:
    """Calls made in one tick run in the order they were made, even when the burst is
    cut into several pipelines: a record's HSET, then its PEXPIREAT, then the XADD
    that announces it must not overtake each other on separate connections. Both when
    the tick must wait for a connection (a new store) and when one is idle."""
    store = Store(valkey.url, Metrics())
    try:
        for attempt in ("waiting for a connection", "on an idle connection"):
            key = f"st:order:{attempt[:7]}"
            pushes, client_ids = [], []
            for i in range(30):  # four pipelines of at most flush_at calls
                pushes.append(store.call("RPUSH", key, str(i), writes=True))
                if i % 7 == 3:
                    client_ids.append(store.call("CLIENT", "ID"))
            await asyncio.gather(*pushes)
            ids = set(await asyncio.gather(*client_ids))
            assert len(ids) == 1, (attempt, ids)  # the tick's pipelines on one connection
            assert await store.call("LRANGE", key, 0, -1) == [str(i) for i in range(30)]
    finally:
        await store.close()


async def test_an_argument_no_command_takes_fails_its_pipeline_and_nothing_hangs(
    valkey: EmbeddedValkey,
) -> None:
    store = Store(valkey.url, Metrics())
    calls = [store.call("ECHO", f"m{i}") for i in range(7)]
    calls.append(store.call("SET", "st:none", None, writes=True))  # None: no argument
    calls.append(store.call("ECHO", "next"))
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert all(isinstance(r, TypeError) for r in results[:8]), results
    assert results[8] == "next"  # the tick's next pipeline is not affected
    assert await store.call("ECHO", "after") == "after"
    await asyncio.wait_for(store.close(), 5)  # nothing left owed: closes at once


async def test_when_valkey_is_unreachable_every_waiting_call_fails_promptly() -> None:
    from engine.core.errors import StoreUnavailable
    from engine.valkey.embedded import free_port

    store = Store(f"redis://127.0.0.1:{free_port()}", Metrics())  # nobody listens there
    try:
        calls = [store.call("ECHO", str(i)) for i in range(200)]  # > 64 connections' worth
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
        assert all(isinstance(r, StoreUnavailable) for r in results), results[:3]
    finally:
        await asyncio.wait_for(store.close(), 5)
