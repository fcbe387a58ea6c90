"""The engine's Valkey access on a real Valkey Cluster (issue 13).

`Store(cluster=True)` keeps the single node's coalescing (one pipeline per node per
loop tick), routes each call by its key's slot, loads the function library on every
primary, and rides out a primary's failover: calls owned by the dead node fail as
`StoreUnavailable` (503 + Retry-After, never a 500) and succeed again once a replica
has taken over, without a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import new_anon
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError

from engine.core.errors import StoreUnavailable
from engine.core.metrics import Metrics
from engine.core.settings import load_settings
from engine.ingest.schema import CalcEvent, CalcProps, PageViewEvent
from engine.profile.profiles import ProfileStore
from engine.valkey import keys
from engine.valkey.embedded_cluster import EmbeddedCluster
from engine.valkey.store import Store

pytestmark = pytest.mark.cluster


@pytest.fixture
async def store(
    valkey_cluster: EmbeddedCluster, cluster_redis: RedisCluster
) -> AsyncIterator[Store]:
    s = Store(",".join(valkey_cluster.urls), Metrics(), cluster=True, socket_timeout_s=2.0)
    await s.load_library()
    yield s
    await s.close()


def _tags_on_every_primary(cluster: EmbeddedCluster, n: int = 60) -> list[str]:
    """Hash tags spread over the primaries (so a test touches every node)."""
    tags = [f"{{t{i}}}" for i in range(n)]
    owners = {cluster.primary_for_key(t).index for t in tags}
    assert len(owners) == len(cluster.primaries())
    return tags


async def test_one_tick_of_calls_goes_out_as_one_pipeline_per_node(
    store: Store, valkey_cluster: EmbeddedCluster, cluster_redis: RedisCluster
) -> None:
    tags = _tags_on_every_primary(valkey_cluster)
    await asyncio.gather(*(store.call("SET", f"k:{t}", t, writes=True) for t in tags))
    got = await asyncio.gather(*(store.call("GET", f"k:{t}") for t in tags))
    assert got == tags
    # Written where the cluster says each key lives, readable by any cluster client.
    assert await cluster_redis.get(f"k:{tags[0]}") == tags[0]
    # Two ticks, two flushes (each one pipeline per node): not one round trip per call.
    flushes = store.metrics.registry.get_sample_value("ringback_valkey_pipeline_calls_count")
    assert flushes == 2


async def test_the_function_library_is_on_every_primary_and_comes_back_when_lost(
    store: Store, valkey_cluster: EmbeddedCluster
) -> None:
    for node in valkey_cluster.primaries():
        libs = valkey_cluster.client(node).execute_command("FUNCTION", "LIST")
        assert any("ringback" in str(lib) for lib in libs), node
    settings = load_settings(None)
    profiles = ProfileStore(store, settings)
    victim = valkey_cluster.primaries()[1]
    valkey_cluster.client(victim).execute_command("FUNCTION", "FLUSH")
    # A visitor whose profile lives on the node that lost the library still counts.
    aid = next(a for a in (new_anon() for _ in range(500)) if _owner(valkey_cluster, a) is victim)
    now = int(time.time() * 1000)
    result, _ = await profiles.ingest("demo-bank", aid, None, [_page(now)], now)
    assert result.accepted == 1


async def test_profiles_on_every_node_count_each_event_once(
    store: Store, valkey_cluster: EmbeddedCluster
) -> None:
    profiles = ProfileStore(store, load_settings(None))
    now = int(time.time() * 1000)
    visitors = [new_anon() for _ in range(60)]
    assert {_owner(valkey_cluster, a).index for a in visitors} == {
        n.index for n in valkey_cluster.primaries()
    }
    batches = {a: [_page(now, f"{a}-1"), _calc(now, f"{a}-2")] for a in visitors}
    first = await asyncio.gather(
        *(profiles.ingest("demo-bank", a, None, evs, now) for a, evs in batches.items())
    )
    again = await asyncio.gather(
        *(profiles.ingest("demo-bank", a, None, evs, now) for a, evs in batches.items())
    )
    assert [r.accepted for r, _ in first] == [2] * len(visitors)
    assert [(r.accepted, r.duplicates) for r, _ in again] == [(0, 2)] * len(visitors)


async def test_a_cross_slot_call_is_refused_loudly(store: Store) -> None:
    """What the engine must never do: a multi-key command across hash tags."""
    with pytest.raises(ClusterCrossSlotError):
        await store.call("MGET", "a:{one}", "a:{two}")


async def test_a_primary_failing_over_is_unavailable_then_served_again(
    store: Store, valkey_cluster: EmbeddedCluster
) -> None:
    tags = _tags_on_every_primary(valkey_cluster)
    victim = valkey_cluster.primaries()[0]
    on_victim = [t for t in tags if valkey_cluster.primary_for_key(t) is victim]
    elsewhere = [t for t in tags if valkey_cluster.primary_for_key(t) is not victim]
    # Written and on the victim's replica before the kill (WAIT on the same connection).
    pipe = valkey_cluster.client(victim).pipeline(transaction=False)
    for t in on_victim:
        pipe.set(f"k:{t}", "v")
    pipe.execute_command("WAIT", 1, 2000)
    assert (await asyncio.to_thread(pipe.execute))[-1] == 1
    await asyncio.gather(*(store.call("SET", f"k:{t}", "v", writes=True) for t in elsewhere))
    seen = store.metrics.registry.get_sample_value
    assert seen("ringback_valkey_nodes", {"node": _name(victim), "role": "primary"}) == 1
    valkey_cluster.kill(victim)

    with pytest.raises(StoreUnavailable):
        await store.call("GET", f"k:{on_victim[0]}")
    # The other nodes keep serving meanwhile.
    assert await store.call("GET", f"k:{elsewhere[0]}") == "v"

    failover = await asyncio.to_thread(valkey_cluster.wait_for_failover, victim, 20.0)
    print(f"failover took {failover.elapsed_s:.2f} s")
    deadline = time.monotonic() + 10
    while True:  # the store finds the new primary by itself
        try:
            got = await store.call("GET", f"k:{on_victim[0]}")
            break
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    assert got == "v"
    # The metrics say which node now serves those slots.
    promoted = _name(failover.promoted)
    assert seen("ringback_valkey_nodes", {"node": promoted, "role": "primary"}) == 1
    assert seen("ringback_valkey_nodes", {"node": promoted, "role": "replica"}) is None
    assert await asyncio.gather(*(store.call("GET", f"k:{t}") for t in on_victim)) == ["v"] * len(
        on_victim
    )


def _name(node: Any) -> str:
    return f"127.0.0.1:{node.port}"


def _owner(cluster: EmbeddedCluster, anonymous_id: str) -> object:
    return cluster.primary_for_key(keys.anonymous_prefix("demo-bank", anonymous_id))


def _page(now: int, eid: str | None = None) -> PageViewEvent:
    return PageViewEvent(id=eid or new_anon(), ts=now - 1000, page="/mortgages")


def _calc(now: int, eid: str) -> CalcEvent:
    props = CalcProps(product="mortgage", amount=250_000.0, term_months=300)
    return CalcEvent(id=eid, ts=now - 500, page="/mortgages/calculator", props=props)


async def test_a_replica_alone_as_seed_finds_the_cluster_and_its_death_changes_nothing(
    valkey_cluster: EmbeddedCluster, cluster_redis: RedisCluster
) -> None:
    primary = valkey_cluster.primaries()[0]
    (seed,) = valkey_cluster.replicas_of(primary)
    store = Store(seed.url, Metrics(), cluster=True, socket_timeout_s=2.0)
    try:
        await store.load_library()
        tags = _tags_on_every_primary(valkey_cluster)
        await asyncio.gather(*(store.call("SET", f"k:{t}", t, writes=True) for t in tags))
        valkey_cluster.kill(seed)  # the only address it was given
        # Writes to the seed's primary now have no replica to wait for (none asked here:
        # replica_acks 0), so every node keeps answering reads and writes.
        assert await asyncio.gather(*(store.call("GET", f"k:{t}") for t in tags)) == tags
        await asyncio.gather(*(store.call("SET", f"k:{t}", "again", writes=True) for t in tags))
        assert await cluster_redis.get(f"k:{tags[-1]}") == "again"
        # A failover elsewhere makes it re-read the topology, from nodes it learnt.
        other = valkey_cluster.primaries()[1]
        key = f"k:{next(t for t in tags if valkey_cluster.primary_for_key(t) is other)}"
        valkey_cluster.kill(other)
        await asyncio.to_thread(valkey_cluster.wait_for_failover, other, 20.0)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert await store.call("GET", key) == "again"
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "never found the promoted replica"
                await asyncio.sleep(0.2)
    finally:
        await store.close()
