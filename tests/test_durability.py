"""Accepted means durable: what a 200 promises when valkey-server is killed with -9.

Each test gets its own valkey-server (AOF on, in tmp_path, on a port of its own) so
it can kill it, restart it on the same port and data dir, and watch the engine, which
is never restarted, find its way back on its own. Restarts run in a thread: the
engine shares the test's event loop and keeps answering while Valkey comes back.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import CLUSTER, EngineClient, event

from engine.core.settings import Settings
from engine.valkey.embedded import EmbeddedValkey, free_port

pytestmark = [
    pytest.mark.slow,
    # Single-node by nature: each test kills and restarts a valkey-server of its own.
    # On a cluster the same promise (a failover loses nothing acknowledged, the engine
    # recovers by itself) is tested in test_cluster_engine.py and test_cluster_store.py.
    pytest.mark.skipif(CLUSTER, reason="kills and restarts its own single valkey-server"),
]

_serial = itertools.count()

Batch = tuple[str, dict[str, Any]]  # (customer, POST /v1/events body)


@pytest.fixture
async def own_valkey(tmp_path: Path) -> AsyncIterator[Callable[..., EmbeddedValkey]]:
    """Start a dedicated valkey-server (not the session one); stopped after the test."""
    servers: list[EmbeddedValkey] = []

    def start(appendfsync: str = "everysec") -> EmbeddedValkey:
        server = EmbeddedValkey(
            tmp_path / f"own-valkey-{next(_serial)}", port=free_port(), appendfsync=appendfsync
        )
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


async def _engine(
    make_engine: Any, settings: Settings, valkey: EmbeddedValkey, durability: str
) -> EngineClient:
    client: EngineClient = await make_engine(
        replace(
            settings,
            redis_url=valkey.url,
            durability=durability,
            limits=replace(settings.limits, batches_per_minute_per_visitor=100_000),
        )
    )
    return client


def _batches(engine: EngineClient, customers: list[str], n: int, tag: str) -> list[Batch]:
    """n batches of 3 page views over the customers, each from a device of its own."""
    tokens = {c: engine.token(c) for c in customers}
    out = []
    for i in range(n):
        customer = customers[i % len(customers)]
        body = engine.batch(
            [event("page_view", id=f"{tag}-{i}-{j}", page="/loans/personal") for j in range(3)],
            anonymous_id=f"anon-{tag}-{i:04d}",
            identity=tokens[customer],
        )
        out.append((customer, body))
    return out


async def _send(engine: EngineClient, batches: list[Batch]) -> list[tuple[int, Any, Any]]:
    return await asyncio.gather(*[engine.post_events(body) for _, body in batches])


def _events_per_customer(batches: list[Batch], customers: list[str]) -> dict[str, int]:
    out = dict.fromkeys(customers, 0)
    for customer, body in batches:
        out[customer] += len(body["events"])
    return out


async def _page_views(engine: EngineClient, customers: list[str]) -> dict[str, int]:
    out = {}
    for c in customers:
        status, body = await engine.get_json(f"/v1/profiles/{c}", headers=engine.api_headers)
        assert status in (200, 404), body
        out[c] = body["profile"]["counts"].get("page_view", 0) if status == 200 else 0
    return out


async def _wait_ready(engine: EngineClient, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while (await engine.get_json("/readyz"))[0] != 200:
        assert time.monotonic() < deadline, "engine never became ready again"
        await asyncio.sleep(0.05)


async def _waitaof_calls(valkey: EmbeddedValkey) -> int:
    client = aioredis.Redis.from_url(valkey.url, decode_responses=True)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_waitaof", {}).get("calls", 0))


def _assert_store_unavailable(status: int, body: Any, headers: Any) -> None:
    assert status == 503, (status, body)
    assert body["error"]["code"] == "store_unavailable", body
    assert int(headers["Retry-After"]) >= 1


@pytest.mark.parametrize("durability", ["aof", "fsync"])
async def test_acknowledged_batches_survive_kill_9_and_the_engine_recovers_by_itself(
    make_engine: Any,
    settings: Settings,
    own_valkey: Callable[..., EmbeddedValkey],
    durability: str,
) -> None:
    # everysec: Valkey itself fsyncs only once a second, so what survives the kill
    # below is what the ack promised (AOF write before reply; WAITAOF in fsync mode).
    valkey = own_valkey(appendfsync="everysec")
    engine = await _engine(make_engine, settings, valkey, durability)
    customers = [f"cust-{durability}-{k}" for k in range(4)]

    batches = _batches(engine, customers, 40, f"ack-{durability}")
    results = await _send(engine, batches)
    acked = [b for b, (status, _, _) in zip(batches, results, strict=True) if status == 200]
    assert len(acked) == 40, [r[:2] for r in results if r[0] != 200]
    waitaofs = await _waitaof_calls(valkey)
    valkey.kill()  # kill -9, right after the last 200

    if durability == "fsync":
        # Acknowledged only after WAITAOF, group-committed: fewer fsync waits than batches.
        assert 1 <= waitaofs < 40, waitaofs
    else:
        assert waitaofs == 0  # aof mode does not pay for fsyncs

    # Valkey is down: refuse honestly, so the snippet keeps the batch and retries.
    refused = _batches(engine, customers, 8, f"down-{durability}")
    for status, body, headers in await _send(engine, refused):
        _assert_store_unavailable(status, body, headers)
    status, body = await engine.get_json("/readyz")
    assert status == 503, body
    status, body = await engine.get_json(f"/v1/profiles/{customers[0]}", headers=engine.api_headers)
    assert status == 503 and body["error"]["code"] == "store_unavailable", body

    port = valkey.port
    await asyncio.to_thread(valkey.start)  # same data dir, same port: the AOF is replayed
    assert valkey.port == port
    await _wait_ready(engine)

    # The engine was never restarted, yet the next batch goes through...
    later = _batches(engine, customers, 4, f"later-{durability}")
    assert [r[0] for r in await _send(engine, later)] == [200] * 4
    # ...and every acknowledged event is there, exactly once.
    expected = Counter(_events_per_customer(acked, customers))
    expected.update(_events_per_customer(later, customers))
    assert await _page_views(engine, customers) == dict(expected)

    # The snippet's retries: the refused batches land once, the acked ones are duplicates.
    assert [r[0] for r in await _send(engine, refused)] == [200] * 8
    expected.update(_events_per_customer(refused, customers))
    again = await _send(engine, acked)
    assert all(
        st == 200 and body["accepted"] == 0 and body["duplicates"] == 3 for st, body, _ in again
    )
    assert await _page_views(engine, customers) == dict(expected)


async def test_kill_9_mid_load_loses_nothing_acknowledged_and_retries_land_once(
    make_engine: Any, settings: Settings, own_valkey: Callable[..., EmbeddedValkey]
) -> None:
    """The crash does not wait for a quiet moment: batches are in flight when it hits."""
    valkey = own_valkey()
    engine = await _engine(make_engine, settings, valkey, "aof")
    customers = [f"cust-midload-{k}" for k in range(3)]
    batches = _batches(engine, customers, 400, "mid")
    queue = list(reversed(batches))
    acked: list[Batch] = []
    unacked: list[Batch] = []
    killed = asyncio.Event()

    async def snippet() -> None:
        # One browser tab: batches one after another until the engine says 503.
        while queue:
            batch = queue.pop()
            status, body, headers = await engine.post_events(batch[1])
            if status == 200:
                acked.append(batch)
                if len(acked) >= 40 and not killed.is_set():
                    killed.set()
                    valkey.kill()
            else:
                _assert_store_unavailable(status, body, headers)
                unacked.append(batch)
                if killed.is_set():
                    return

    await asyncio.gather(*[snippet() for _ in range(8)])
    assert killed.is_set() and unacked
    unsent = list(reversed(queue))

    await asyncio.to_thread(valkey.start)
    await _wait_ready(engine)
    counts = await _page_views(engine, customers)
    floor = _events_per_customer(acked, customers)
    ceiling = _events_per_customer(acked + unacked, customers)
    # Nothing acknowledged is missing; an unacknowledged batch may or may not have landed.
    assert all(floor[c] <= counts[c] <= ceiling[c] for c in customers), (floor, counts, ceiling)

    for status, _, _ in await _send(engine, unacked + unsent):  # the snippets retry
        assert status == 200
    assert await _page_views(engine, customers) == _events_per_customer(batches, customers)


async def test_fsync_mode_never_acknowledges_what_valkey_cannot_fsync(
    make_engine: Any, settings: Settings, own_valkey: Callable[..., EmbeddedValkey]
) -> None:
    valkey = own_valkey()
    engine = await _engine(make_engine, settings, valkey, "fsync")
    admin = aioredis.Redis.from_url(valkey.url, decode_responses=True)
    try:
        await admin.config_set("appendonly", "no")  # an operator "tuning" the server
        [(status, body, headers)] = await _send(engine, _batches(engine, ["cust-nofsync"], 1, "nf"))
        _assert_store_unavailable(status, body, headers)
        await admin.config_set("appendonly", "yes")
        deadline = time.monotonic() + 10
        while (await admin.info("persistence"))["aof_rewrite_in_progress"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        [(status, body, _)] = await _send(engine, _batches(engine, ["cust-nofsync"], 1, "yes"))
        assert status == 200, body
    finally:
        await admin.aclose()


async def test_a_valkey_that_restarts_empty_gets_the_function_library_back(
    make_engine: Any, settings: Settings, own_valkey: Callable[..., EmbeddedValkey]
) -> None:
    """A replacement server without our data (failover to a blank node) still works."""
    valkey = own_valkey()
    engine = await _engine(make_engine, settings, valkey, "aof")
    [(status, body, _)] = await _send(engine, _batches(engine, ["cust-blank"], 1, "before"))
    assert status == 200, body
    await asyncio.to_thread(valkey.stop)
    for f in valkey.data_dir.rglob("*"):
        if f.is_file():
            f.unlink()
    await asyncio.to_thread(valkey.start)
    await _wait_ready(engine)
    [(status, body, _)] = await _send(engine, _batches(engine, ["cust-blank"], 1, "after"))
    assert status == 200, body
    assert await _page_views(engine, ["cust-blank"]) == {"cust-blank": 3}  # a fresh start
