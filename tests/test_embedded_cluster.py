"""The embedded Valkey Cluster: formed right, sharding keys, surviving a dead primary.

The cluster fixture is what the cluster-aware Store is tested on, so these tests pin
the properties those tests lean on: every slot served, hash tags spreading keys over
primaries, cross-slot commands refused, and a killed primary replaced by its replica
without losing a write its replica acknowledged.
"""

from __future__ import annotations

import time

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError, RedisClusterException

from engine.valkey.embedded_cluster import SLOTS, ClusterNode, EmbeddedCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _tag_per_primary(cluster: EmbeddedCluster) -> dict[int, str]:
    """One hash tag per primary (by port): `{t0}`, `{t1}`, ... whichever land first."""
    tags: dict[int, str] = {}
    for i in range(1000):
        tag = f"{{t{i}}}"
        tags.setdefault(cluster.primary_for_key(tag).port, tag)
        if len(tags) == cluster.primaries_count:
            return tags
    raise AssertionError("no hash tags found for every primary")


def _write_acknowledged_by_replica(node: ClusterNode, cluster: EmbeddedCluster) -> None:
    """SET then WAIT on the same connection: the replica has the write when it returns."""
    pipe = cluster.client(node).pipeline(transaction=False)
    pipe.set("{fo}acked", "survives")
    pipe.execute_command("WAIT", 1, 2000)
    _, replicas = pipe.execute()
    assert replicas >= 1


def _read_on_replica(cluster: EmbeddedCluster, node: ClusterNode, key: str) -> str | None:
    """GET on a replica itself: READONLY and GET on one connection (else MOVED)."""
    pipe = cluster.client(node).pipeline(transaction=False)
    pipe.execute_command("READONLY")
    pipe.get(key)
    value: str | None = pipe.execute()[1]
    return value


async def test_bring_up_gives_three_primaries_with_a_replica_each_covering_every_slot(
    valkey_cluster: EmbeddedCluster,
) -> None:
    print(f"cluster bring-up: {valkey_cluster.bring_up_s:.2f}s")
    valkey_cluster.heal()
    primaries = valkey_cluster.primaries()
    assert len(primaries) == 3
    covered: list[int] = []
    for primary in primaries:
        replicas = valkey_cluster.replicas_of(primary)
        assert [r.role for r in replicas] == ["replica"]
        covered += [s for lo, hi in primary.slots for s in range(lo, hi + 1)]
    assert sorted(covered) == list(range(SLOTS))  # every slot once
    for node in valkey_cluster.nodes:
        info = valkey_cluster.cluster_info(node)
        assert info["cluster_state"] == "ok"
        assert info["cluster_known_nodes"] == "6"
        assert info["cluster_size"] == "3"
        assert info["cluster_slots_assigned"] == str(SLOTS)


async def test_keys_with_different_hash_tags_land_on_different_primaries(
    valkey_cluster: EmbeddedCluster, cluster_redis: RedisCluster
) -> None:
    tags = _tag_per_primary(valkey_cluster)
    for tag in tags.values():
        await cluster_redis.set(f"{tag}:profile", tag)
        await cluster_redis.set(f"{tag}:seen", "1")  # same tag, same slot, same node
    for primary in valkey_cluster.primaries():
        tag = tags[primary.port]
        direct = valkey_cluster.client(primary)
        # The data really lives there, and only the keys of its own tag.
        assert direct.get(f"{tag}:profile") == tag
        assert sorted(direct.keys("*")) == [f"{tag}:profile", f"{tag}:seen"]


async def test_a_multi_key_command_across_slots_is_refused(
    valkey_cluster: EmbeddedCluster, cluster_redis: RedisCluster
) -> None:
    a, b = "{left}k", "{right}k"
    assert key_slot(a.encode()) != key_slot(b.encode())
    await cluster_redis.set(a, "1")
    await cluster_redis.set(b, "2")
    # The server refuses it, whichever node gets it...
    node = valkey_cluster.primary_for_key(a)
    with pytest.raises(ClusterCrossSlotError):  # the server's CROSSSLOT reply
        valkey_cluster.client(node).mget(a, b)
    # ...so the cluster client refuses it before sending; a shared tag makes it legal.
    with pytest.raises(RedisClusterException, match="same key slot"):
        await cluster_redis.mget(a, b)
    await cluster_redis.set("{left}other", "3")
    assert await cluster_redis.mget(a, "{left}other") == ["1", "3"]


async def test_a_killed_primary_is_replaced_by_its_replica_and_keeps_acknowledged_writes(
    valkey_cluster: EmbeddedCluster, cluster_redis: RedisCluster
) -> None:
    owner = valkey_cluster.primary_for_key("{fo}acked")
    (replica,) = valkey_cluster.replicas_of(owner)
    _write_acknowledged_by_replica(owner, valkey_cluster)

    valkey_cluster.kill(owner)
    failover = valkey_cluster.wait_for_failover(owner, timeout_s=15)
    print(f"failover after kill -9: {failover.elapsed_s:.2f}s")

    assert failover.promoted.node_id == replica.node_id
    assert valkey_cluster.primary_for_key("{fo}acked").node_id == replica.node_id
    for node in valkey_cluster.nodes:
        if node.alive:
            assert valkey_cluster.cluster_info(node)["cluster_state"] == "ok"
    # The client finds the new primary by itself (its old connection is refused).
    assert await cluster_redis.get("{fo}acked") == "survives"
    await cluster_redis.set("{fo}after", "writable")
    assert await cluster_redis.get("{fo}after") == "writable"


async def test_a_restarted_former_primary_rejoins_as_a_replica_of_its_successor(
    valkey_cluster: EmbeddedCluster, cluster_redis: RedisCluster
) -> None:
    owner = valkey_cluster.primary_for_key("{fo}acked")
    _write_acknowledged_by_replica(owner, valkey_cluster)
    valkey_cluster.kill(owner)
    failover = valkey_cluster.wait_for_failover(owner, timeout_s=15)

    began = time.monotonic()
    valkey_cluster.restart(owner)
    print(f"rejoin after restart: {time.monotonic() - began:.2f}s")

    assert owner.role == "replica"
    assert owner.primary_id == failover.promoted.node_id
    assert owner.slots == ()
    direct = valkey_cluster.client(owner)
    assert direct.info("replication")["master_link_status"] == "up"
    assert _read_on_replica(valkey_cluster, owner, "{fo}acked") == "survives"
    assert await cluster_redis.get("{fo}acked") == "survives"


async def test_a_paused_replica_lags_until_resumed(
    valkey_cluster: EmbeddedCluster, cluster_redis: RedisCluster
) -> None:
    primary = valkey_cluster.primary_for_key("{lag}k")
    (replica,) = valkey_cluster.replicas_of(primary)
    writer = valkey_cluster.client(primary)
    writer.set("{lag}k", "old")
    assert writer.execute_command("WAIT", 1, 2000) == 1

    valkey_cluster.pause_replication(replica, duration_ms=10_000)
    writer.set("{lag}k", "new")
    assert writer.execute_command("WAIT", 1, 300) == 0  # not acknowledged while paused
    assert _read_on_replica(valkey_cluster, replica, "{lag}k") == "old"
    assert valkey_cluster.replication_offset(replica) < valkey_cluster.replication_offset(primary)
    assert valkey_cluster.cluster_info(primary)["cluster_state"] == "ok"  # nobody failed

    valkey_cluster.resume_replication(replica)
    assert writer.execute_command("WAIT", 1, 2000) == 1
    assert _read_on_replica(valkey_cluster, replica, "{lag}k") == "new"
