"""The Valkey connection: coalesced calls, function loading, durability.

The field notes measured the redis.asyncio client, not Valkey, as the hot path's
bottleneck (~53 µs of client CPU per unpipelined call vs ~23 µs in pipelines; ~10 µs
in our own lean pipeline, `_pipeline`). So
every call made within one event-loop tick is queued and sent as ONE pipeline,
flushed by `call_soon`; each caller awaits its own future. Under load this turns
N concurrent requests into one round trip, without any request waiting on a timer.
Once `flush_at` (8) calls are queued they go out at once, so Valkey works on them
while the engine parses the tick's other requests (one 20-call pipeline a tick made
the two take turns). Single node, no TLS: pipelines are written on the coalescer's
own connections (engine/valkey/wire.py) the moment they are cut, and their replies
settle the futures as they arrive; otherwise on redis-py's.

Durability: with `appendonly yes` Valkey appends to its AOF before it replies, so
an acknowledged batch survives a Valkey crash. In `fsync` mode each flushed
pipeline that wrote also ends in `WAITAOF 1 0`, so one fsync acknowledges every
batch in it (group commit) and the batch survives a machine crash too.

Cluster (`cluster=True`, seeds `redis://a:1,redis://b:2`): the same coalescing, one
pipeline per node per loop tick. Each call goes to the primary that owns its first
key's slot (every key of one call shares a hash tag, so one slot); a MOVED or ASK
reply refreshes the slot map and resends that call once; failover-time errors
(CLUSTERDOWN, TRYAGAIN, MASTERDOWN, a node that cannot be reached) become
`StoreUnavailable`, which the HTTP layer answers 503 + Retry-After. The function
library is loaded on every primary, and again on a node that lost it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from functools import partial
from importlib import resources
from typing import Any, NamedTuple, cast
from urllib.parse import unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MaxConnectionsError,
    MovedError,
    OutOfMemoryError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.core.errors import StoreUnavailable
from engine.core.metrics import Metrics
from engine.valkey.wire import Pipelines
from engine.valkey.written import Seen

__all__ = ["Store", "library_source"]

log = logging.getLogger("ringback.store")

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, ConnectionError)
# A cluster between topologies (a primary failing over, a slot without an owner): retry
# later, never a 500.
_FAILOVER = (
    ClusterDownError,
    TryAgainError,
    MasterDownError,
    SlotNotCoveredError,
    MaxConnectionsError,
)
# Commands that name no key: sent to any primary.
_KEYLESS = frozenset({"PING", "INFO", "TIME", "FUNCTION", "DBSIZE", "CONFIG", "WAITAOF", "WAIT"})
_KEYS_AT_3 = frozenset({"FCALL", "FCALL_RO", "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO"})


class Seeds(NamedTuple):
    """A cluster's seed nodes and how to talk to every node (the first URL's)."""

    nodes: list[tuple[str, int]]
    username: str | None
    password: str | None
    tls: bool


def seed_nodes(url: str) -> Seeds:
    """`redis://h1:p1,redis://h2:p2` (or bare `h:p` items) -> the nodes, with the
    credentials and scheme of the URLs (`rediss://` = TLS): one user and password for
    the whole cluster, as Valkey's ACLs are per node but deployed alike.

    >>> seed_nodes("redis://127.0.0.1:7000,127.0.0.1:7001").nodes
    [('127.0.0.1', 7000), ('127.0.0.1', 7001)]
    >>> s = seed_nodes("rediss://rb:s%40cret@vk-0:6380,rediss://rb:s%40cret@vk-1:6380")
    >>> s.nodes, s.username, s.password, s.tls
    ([('vk-0', 6380), ('vk-1', 6380)], 'rb', 's@cret', True)
    """
    nodes: list[tuple[str, int]] = []
    username = password = None
    tls = False
    for item in url.split(","):
        item = item.strip()
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"redis://{item}")
        if not nodes:
            tls = parts.scheme == "rediss"
            username = unquote(parts.username) if parts.username else None
            password = unquote(parts.password) if parts.password else None
        nodes.append((parts.hostname or "127.0.0.1", parts.port or 6379))
    return Seeds(nodes, username, password, tls)


def first_key(args: tuple[Any, ...]) -> str | None:
    """The key a command is routed by (every key of one of our calls shares its slot).

    >>> first_key(("FCALL", "rb_ingest", 2, "rb:{a}:p", "rb:{a}:seen", "{}"))
    'rb:{a}:p'
    >>> first_key(("HSET", "rb:{c:1}:attrs", "tier", "vip")), first_key(("PING",))
    ('rb:{c:1}:attrs', None)
    """
    name = str(args[0]).upper()
    if name in _KEYLESS:
        return None
    if name in _KEYS_AT_3:
        return str(args[3]) if len(args) > 3 and int(args[2]) > 0 else None
    if name in ("XREAD", "XREADGROUP"):
        upper = [str(a).upper() for a in args]
        return str(args[upper.index("STREAMS") + 1]) if "STREAMS" in upper else None
    return str(args[1]) if len(args) > 1 else None


def library_source() -> str:
    return resources.files("engine").joinpath("valkey/lua/ringback.lua").read_text()


class _Call:
    __slots__ = ("args", "future", "raw", "writes")

    def __init__(
        self, args: tuple[Any, ...], future: asyncio.Future[Any], writes: bool, raw: bool = False
    ) -> None:
        self.args = args
        self.future = future
        self.writes = writes
        self.raw = raw


class Store:
    """Valkey access for the engine: `call` coalesces, `fcall` runs a library function."""

    def __init__(
        self,
        url: str,
        metrics: Metrics,
        *,
        fsync: bool = False,
        waitaof_timeout_ms: int = 2000,
        max_pipeline: int = 256,
        flush_at: int = 8,
        socket_timeout_s: float = 5.0,
        cluster: bool = False,
        replica_acks: int = 0,
        replica_timeout_ms: int = 500,
    ) -> None:
        self.url = url
        self.fsync = fsync
        # Writes acknowledged only once this many replicas have them (WAIT, or WAITAOF's
        # second count with fsync) on the same connection, per pipeline: a failover
        # then loses nothing the engine said yes to.
        self.replica_acks = replica_acks
        self._replica_timeout_ms = replica_timeout_ms
        self.metrics = metrics
        self._waitaof_timeout_ms = waitaof_timeout_ms
        self._max_pipeline = max_pipeline
        self._cluster: RedisCluster | None = None
        self._topology_stale = True  # the cluster's slot map must be (re)read first
        self._nodes_exported: set[tuple[str, str]] = set()  # ringback_valkey_nodes labels
        # What this worker already wrote once a day (TTLs, listed report names): the
        # report counters read it so steady state costs one command per counter.
        self.written = Seen()
        if cluster:
            seeds = seed_nodes(url)
            self._cluster = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in seeds.nodes],
                username=seeds.username,
                password=seeds.password,
                ssl=seeds.tls,
                decode_responses=True,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=1.0,
                max_connections=64,
            )
            # The same command methods as a single-node client (RedisCluster routes each
            # by its key); the engine's direct uses are single-key commands.
            self.client: aioredis.Redis = cast(aioredis.Redis, self._cluster)
        else:
            # A blocking pool: past 64 connections in use a pipeline waits for one to
            # come back instead of failing with "Too many connections" (a 503 under a
            # burst).
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=1.0,
                health_check_interval=0,
                retry_on_timeout=False,
                max_connections=64,
                timeout=socket_timeout_s,
                decode_responses=True,
            )
            self.client = aioredis.Redis(connection_pool=pool)
        # The coalesced calls' own connections (engine/valkey/wire.py); TLS keeps
        # redis-py's, as does a cluster.
        self._wire: Pipelines | None = None
        if not cluster:
            parsed = parse_url(url)
            if parsed.get("connection_class") is not SSLConnection:
                self._wire = Pipelines.from_kwargs(
                    parsed, timeout_s=socket_timeout_s, max_connections=64
                )
        # Early flushes pay only where the write is immediate (`_wire`); redis-py's
        # goes out a tick later anyway, so there a tick stays one pipeline (per node).
        self._flush_at = flush_at if self._wire is not None else max_pipeline
        self._wire_busy = 0  # pipelines written on `_wire`, not yet answered
        self._tick_conn: Any = None  # the connection this tick's pipelines went out on
        self._wire_drained: asyncio.Future[None] | None = None
        # Reply parsers by command name (HGETALL -> dict, ...), as redis-py applies them.
        self._callbacks: dict[Any, Any] = dict(self.client.response_callbacks)
        self._queue: list[_Call] = []
        self._flush_scheduled = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._library_loaded = False
        self._library_lock = asyncio.Lock()

    async def close(self) -> None:
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._wire is not None:
            if self._wire_busy:  # bounded: each pipeline times out after socket_timeout_s
                self._wire_drained = asyncio.get_running_loop().create_future()
                await self._wire_drained
            await self._wire.close()
        await self.client.aclose()

    # -- library -------------------------------------------------------------------

    @property
    def is_cluster(self) -> bool:
        return self._cluster is not None

    async def load_library(self) -> None:
        """FUNCTION LOAD REPLACE: idempotent, so every worker does it at startup; on a
        cluster, on every primary (a function runs on the node that owns its keys)."""
        async with self._library_lock:
            try:
                if self._cluster is not None:
                    # The primaries as nodes, not the PRIMARIES flag: redis-py 8.1 routes
                    # a flagged keyless command by slot once it knows a default node.
                    await self._initialize_cluster()
                    await self._cluster.execute_command(
                        "FUNCTION",
                        "LOAD",
                        "REPLACE",
                        library_source(),
                        target_nodes=self._cluster.get_primaries(),
                    )
                else:
                    await self.client.execute_command(
                        "FUNCTION", "LOAD", "REPLACE", library_source()
                    )
            except (*_UNAVAILABLE, *_FAILOVER) as exc:
                raise StoreUnavailable(str(exc)) from exc
            self._library_loaded = True
        if self._wire is not None:
            await self.call("PING")  # open the coalescer's first connection before serving

    async def eviction_policy(self) -> str | None:
        """Valkey's `maxmemory-policy`; None when the server refuses CONFIG (managed
        services often do) or cannot be reached. The engine needs `noeviction`: an
        evicting policy drops profiles, dedupe state, open callbacks and the audit
        dictionaries whole rule packs' records need (engine/delivery/audit_codec.py)."""
        try:
            if self._cluster is not None:
                await self._initialize_cluster()
                reply = await self._cluster.config_get("maxmemory-policy")
            else:
                reply = await self.client.config_get("maxmemory-policy")
        except Exception:  # CONFIG refused or unreachable: nothing to say
            return None
        policy = reply.get("maxmemory-policy") if isinstance(reply, dict) else None
        return str(policy) if policy else None

    async def fcall(
        self, name: str, keys: Sequence[str], args: Sequence[Any], *, writes: bool = True
    ) -> Any:
        """Run a library function, reloading the library once if the server lost it."""
        return await self.fcall_now(name, keys, args, writes=writes)

    def fcall_now(
        self, name: str, keys: Sequence[str], args: Sequence[Any], *, writes: bool = True
    ) -> Awaitable[Any]:
        """As `fcall`, but the call is queued before this returns, so it joins the
        caller's pipeline (a coroutine would only be queued when first awaited)."""
        first = self.call("FCALL", name, len(keys), *keys, *args, writes=writes)
        return self._reloading(first, name, keys, args, writes)

    async def _reloading(
        self,
        first: asyncio.Future[Any],
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        writes: bool,
    ) -> Any:
        try:
            return await first
        except ResponseError as exc:
            if "function not found" not in str(exc).lower() and "no such" not in str(exc).lower():
                raise
            log.warning("function %s missing on the server (restarted empty?); reloading", name)
            await self.load_library()
            return await self.call("FCALL", name, len(keys), *keys, *args, writes=writes)

    # -- coalescing ------------------------------------------------------------------

    def call(self, *args: Any, writes: bool = False, raw: bool = False) -> asyncio.Future[Any]:
        """Queue one command; it goes out with everything else queued in this loop tick,
        or at once when `flush_at` calls are queued: Valkey then starts on them while
        the engine is still parsing the rest of the tick's requests, instead of the two
        taking turns. `raw`: the reply as the server sent it, bytes not text."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        queue = self._queue
        queue.append(_Call(args, fut, writes, raw))
        if len(queue) >= self._flush_at:
            self._flush()  # the tick's scheduled flush sends whatever comes after
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush_tick)
        return fut

    def _flush_tick(self) -> None:
        self._flush_scheduled = False
        self._flush()
        self._tick_conn = None  # the next tick's pipelines may take any connection

    def _flush(self) -> None:
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), self._max_pipeline):
            chunk = queue[start : start + self._max_pipeline]
            if self._wire is not None:
                self._send_wire(chunk)
                continue
            task = asyncio.ensure_future(self._send(chunk))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    def _send_wire(self, calls: list[_Call]) -> None:
        """Write `calls` as one pipeline now (on an idle connection of `_wire`); the
        replies settle the callers' futures from the connection's `data_received`."""
        assert self._wire is not None
        ack = self._ack_command() if any(c.writes for c in calls) else None
        commands = [c.args for c in calls]
        if ack is not None:
            commands.append(ack)
        raw = frozenset([i for i, c in enumerate(calls) if c.raw])
        reply = partial(self._wire_replied, calls, raw, ack is not None, time.perf_counter())
        try:
            # Behind the tick's earlier pipelines, on their connection: calls made in one
            # tick run in the order they were made, as in one pipeline (a record's HSET
            # before its PEXPIREAT, before the XADD that announces it).
            self._tick_conn = self._wire.send(commands, raw, reply, self._tick_conn)
        except Exception as exc:  # an argument no command takes: nothing was sent
            for c in calls:
                if not c.future.done():
                    c.future.set_exception(exc)
            return
        self._wire_busy += 1

    def _wire_replied(
        self,
        calls: list[_Call],
        raw: frozenset[int],
        wait_aof: bool,
        started: float,
        outcome: list[Any] | BaseException,
    ) -> None:
        self._wire_busy -= 1
        if self._wire_busy == 0 and self._wire_drained is not None:
            if not self._wire_drained.done():
                self._wire_drained.set_result(None)
        if isinstance(outcome, BaseException):
            if isinstance(outcome, _UNAVAILABLE):
                self.metrics.valkey_errors.inc()
                # After a Valkey restart every idle connection is stale: close them so
                # only this burst fails and the next calls connect afresh.
                assert self._wire is not None
                self._wire.disconnect_idle()
                outcome = StoreUnavailable(f"Valkey unreachable: {outcome}")
            for c in calls:
                if not c.future.done():
                    c.future.set_exception(outcome)
            return
        try:
            callbacks = self._callbacks
            results = outcome
            for i, c in enumerate(calls):
                reply = results[i]
                if isinstance(reply, Exception) or (raw and i in raw):
                    continue
                parse = callbacks.get(c.args[0])
                if parse is not None:
                    results[i] = parse(reply)
            self._settle(calls, results, wait_aof, started)
        except Exception as exc:  # a reply no parser expected: its callers must not hang
            log.exception("settling a pipeline's replies failed")
            for c in calls:
                if not c.future.done():
                    c.future.set_exception(exc)

    def _ack_command(self) -> tuple[Any, ...] | None:
        """What ends a pipeline that wrote, so its replies mean durable: WAITAOF (fsync:
        on this node's disk, and on `replica_acks` replicas'), WAIT (in `replica_acks`
        replicas' memory), or nothing (the AOF append before the reply suffices)."""
        if self.fsync:
            timeout = max(self._waitaof_timeout_ms, self._replica_timeout_ms)
            return ("WAITAOF", 1, self.replica_acks, timeout)
        if self.replica_acks:
            return ("WAIT", self.replica_acks, self._replica_timeout_ms)
        return None

    def _acked(self, reply: Any) -> bool:
        if self.fsync:
            return _waitaof_ok(reply, self.replica_acks)
        return not isinstance(reply, Exception) and int(reply) >= self.replica_acks

    async def _send(self, calls: list[_Call]) -> None:
        ack = self._ack_command() if any(c.writes for c in calls) else None
        wait_aof = ack is not None
        started = time.perf_counter()
        try:
            commands = [c.args for c in calls]
            raw = [i for i, c in enumerate(calls) if c.raw]
            if self._cluster is not None:
                results = await self._cluster_send(calls)
                wait_aof = False  # per node, inside
            else:
                if ack is not None:
                    commands.append(ack)
                results = await self._pipeline(commands, frozenset(raw))
        except _UNAVAILABLE as exc:
            self.metrics.valkey_errors.inc()
            # After a Valkey restart every pooled connection is stale and would fail once;
            # drop them all so only this burst fails and the next calls connect afresh.
            await self.client.connection_pool.disconnect(inuse_connections=False)
            err = StoreUnavailable(f"Valkey unreachable: {exc}")
            for c in calls:
                if not c.future.done():
                    c.future.set_exception(err)
            return
        except BaseException as exc:  # never leave a caller hanging
            for c in calls:
                if not c.future.done():
                    c.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._settle(calls, results, wait_aof, started)

    def _settle(
        self, calls: list[_Call], results: list[Any], wait_aof: bool, started: float
    ) -> None:
        """Each caller gets its own reply; with a durability wait at the end, a write
        it did not confirm fails as unavailable (the client retries)."""
        self.metrics.valkey_seconds.observe(time.perf_counter() - started)
        self.metrics.valkey_pipeline_calls.observe(len(calls))
        if wait_aof:
            fsync_ok = self._acked(results[-1])
            results = results[:-1]
            if not fsync_ok:
                self.metrics.valkey_errors.inc()
                err = StoreUnavailable(_NOT_DURABLE)
                for c in calls:
                    if c.writes and not c.future.done():
                        c.future.set_exception(err)
        for c, result in zip(calls, results, strict=True):
            if c.future.done():
                continue
            if isinstance(result, _UNAVAILABLE):
                c.future.set_exception(StoreUnavailable(f"Valkey unreachable: {result}"))
            elif isinstance(result, _FAILOVER):
                c.future.set_exception(StoreUnavailable(f"Valkey cluster: {result}"))
            elif isinstance(result, OutOfMemoryError):
                # Full under `noeviction` (ops/README.md#valkey-memory): the write is
                # refused whole, so the client's retry loses nothing; a 503, not a 500.
                self.metrics.valkey_errors.inc()
                c.future.set_exception(StoreUnavailable(f"Valkey is full (maxmemory): {result}"))
            elif isinstance(result, Exception):
                c.future.set_exception(result)
            else:
                c.future.set_result(result)

    # -- cluster -------------------------------------------------------------------

    async def _cluster_send(self, calls: list[_Call]) -> list[Any]:
        """One pipeline per primary, concurrently; a call answered MOVED or ASK is sent
        again, once, where the answer points (after re-reading the slot map)."""
        cluster = self._cluster
        assert cluster is not None
        if self._topology_stale:
            await self._refresh_topology()
        results: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        asking: set[int] = set()
        targets: dict[int, ClusterNode] = {}
        for attempt in range(2):
            groups: dict[str, tuple[ClusterNode, list[int]]] = {}
            for i in pending:
                node = targets.get(i) or self._node_for(calls[i].args)
                groups.setdefault(node.name, (node, []))[1].append(i)
            replies = await asyncio.gather(
                *(
                    self._node_pipeline(node, [calls[i] for i in idx], [i in asking for i in idx])
                    for node, idx in groups.values()
                ),
                return_exceptions=True,
            )
            redo: list[int] = []
            for (node, idx), reply in zip(groups.values(), replies, strict=True):
                if isinstance(reply, BaseException):
                    if isinstance(reply, asyncio.CancelledError):
                        raise reply
                    # The node is gone (failing over, restarting): its calls fail now,
                    # and the next flush re-reads who owns what.
                    self._topology_stale = True
                    self.metrics.valkey_errors.inc()
                    err = StoreUnavailable(f"Valkey node {node.name} unreachable: {reply}")
                    for i in idx:
                        results[i] = err
                    continue
                for i, r in zip(idx, reply, strict=True):
                    results[i] = r
                    if attempt == 0 and isinstance(r, MovedError | AskError):
                        redo.append(i)
                        host, port = r.host, int(r.port)
                        target = cluster.nodes_manager.get_node(host, port)
                        if target is None:
                            target = ClusterNode(
                                host, port, **cluster.nodes_manager.connection_kwargs
                            )
                            cluster.nodes_manager.set_nodes(
                                cluster.nodes_manager.nodes_cache, {target.name: target}
                            )
                        targets[i] = target
                        if isinstance(r, AskError):
                            asking.add(i)
                        else:
                            self._topology_stale = True
            if not redo:
                break
            if self._topology_stale:
                await self._refresh_topology()
            pending = redo
        return results

    async def _refresh_topology(self) -> None:
        """Re-read who serves which slot (`RedisCluster.initialize` does it only once)."""
        cluster = self._cluster
        assert cluster is not None
        await self._initialize_cluster()
        if not self._topology_stale:
            return
        try:
            await cluster.nodes_manager.initialize()
        except (*_UNAVAILABLE, *_FAILOVER, ResponseError) as exc:
            raise StoreUnavailable(f"Valkey cluster topology unreadable: {exc}") from exc
        self._topology_stale = False
        self._export_topology()

    async def _initialize_cluster(self) -> None:
        """`RedisCluster.initialize`, failing as StoreUnavailable: with no seed answering
        redis-py raises a bare RedisClusterException, which would crash the engine's
        startup and answer 500 after, where one node down gives 503 until it is back."""
        cluster = self._cluster
        assert cluster is not None
        try:
            await cluster.initialize()
        except (*_UNAVAILABLE, *_FAILOVER, RedisClusterException) as exc:
            raise StoreUnavailable(f"Valkey cluster unreachable: {exc}") from exc

    def _export_topology(self) -> None:
        """`ringback_valkey_nodes{node, role}`: which nodes this worker now routes to, so
        ops see a failover (a replica's address turning primary) from the engine's side."""
        cluster = self._cluster
        assert cluster is not None
        seen = {
            (node.name, "primary" if node.server_type == "primary" else "replica")
            for node in cluster.nodes_manager.nodes_cache.values()
        }
        gauge = self.metrics.valkey_nodes
        for name, role in self._nodes_exported - seen:
            with contextlib.suppress(KeyError):
                gauge.remove(name, role)
        for name, role in seen:
            gauge.labels(name, role).set(1)
        self._nodes_exported = seen

    def _node_for(self, args: tuple[Any, ...]) -> ClusterNode:
        cluster = self._cluster
        assert cluster is not None
        key = first_key(args)
        if key is None:
            return cluster.get_random_primary_node()
        return cluster.nodes_manager.get_node_from_slot(cluster.keyslot(key))

    async def _node_pipeline(
        self, node: ClusterNode, calls: list[_Call], asking: list[bool]
    ) -> list[Any]:
        """`_pipeline` on one cluster node's connection, ending, when it wrote, in the
        durability wait (`_ack_command`) on that node: WAIT counts only the writes of
        its own connection, so each node's pipeline waits for itself."""
        commands: list[tuple[Any, ...]] = []
        positions: list[int] = []  # index in `commands` of each call's reply
        raw: set[int] = set()
        for c, ask in zip(calls, asking, strict=True):
            if ask:  # the slot is migrating: this node serves it for this one command
                commands.append(("ASKING",))
            positions.append(len(commands))
            if c.raw:
                raw.add(len(commands))
            commands.append(c.args)
        ack = self._ack_command() if any(c.writes for c in calls) else None
        if ack is not None:
            commands.append(ack)
        conn = node.acquire_connection()
        try:
            replies = await self._exchange(conn, commands, frozenset(raw))
        finally:
            node.release(conn)
        out = [replies[p] for p in positions]
        if ack is not None and not self._acked(replies[-1]):
            # Applied on the primary, not yet durable as configured: the client is told
            # to retry (every write of ours is idempotent: event ids, reservations).
            self.metrics.valkey_errors.inc()
            err = StoreUnavailable(f"{_NOT_DURABLE} ({node.name})")
            out = [err if c.writes else r for c, r in zip(calls, out, strict=True)]
        return out

    async def _pipeline(
        self, commands: list[tuple[Any, ...]], raw: frozenset[int] = frozenset()
    ) -> list[Any]:
        """Send commands in one write and read their replies: redis-py's pipeline with
        its machinery cut away. Packing by hiredis (C) and no per-command bookkeeping
        measured 23 -> 10 µs of client CPU per call in pipelines of 48. Replies go
        through redis-py's own response callbacks, so they read as they always did;
        a command's error is its result, not the pipeline's."""
        pool = self.client.connection_pool
        conn = await pool.get_connection()
        try:
            return await self._exchange(conn, commands, raw)
        finally:
            await pool.release(conn)

    async def _exchange(
        self, conn: Any, commands: list[tuple[Any, ...]], raw: frozenset[int]
    ) -> list[Any]:
        """One write of every command on `conn`, then every reply in order."""
        try:
            await conn.send_packed_command(
                b"".join(hiredis.pack_command(c) for c in commands), check_health=False
            )
            results: list[Any] = []
            for i, c in enumerate(commands):
                try:
                    if raw and i in raw:
                        results.append(await conn.read_response(disable_decoding=True))
                        continue
                    reply = await conn.read_response()
                except ResponseError as exc:
                    results.append(exc)
                    continue
                parse = self._callbacks.get(c[0])
                results.append(parse(reply) if parse is not None else reply)
        except BaseException:
            # Replies left unread would be read by the connection's next user.
            await conn.disconnect(nowait=True)
            raise
        return results

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), timeout=1.0))
        except (TimeoutError, RedisClusterException, *_UNAVAILABLE):  # cluster: no seed up
            return False


_NOT_DURABLE = "Valkey did not confirm the write durable in time (fsync or replicas)"


def _waitaof_ok(result: Any, replicas: int = 0) -> bool:
    """WAITAOF answers [local fsynced, replicas fsynced]: the local one, and as many
    replicas as asked for."""
    if isinstance(result, Exception) or not isinstance(result, list | tuple) or not result:
        return False
    return int(result[0]) >= 1 and (replicas == 0 or int(result[1]) >= replicas)
