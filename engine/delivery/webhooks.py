"""Signed webhooks to bank systems (CTI, e-mail/SMS gateways), delivered at least once.

Every target in config has its own consumer group on every triggers shard, its own
tasks and its own concurrency limit, so one slow or dead target never delays the
others (or the dashboard, which reads the streams separately). Requests follow the
Standard Webhooks specification, so receivers verify them with the off-the-shelf
`standardwebhooks` libraries:

    webhook-id:        the trigger's id; stable across retries (the idempotency key)
    webhook-timestamp: unix seconds of this attempt
    webhook-signature: "v1,<base64 HMAC-SHA256 of id.timestamp.body>" per secret
                       (several during a rotation, space separated)

A failed attempt is retried with exponential backoff and jitter; after
`max_attempts` the trigger goes to the target's dead-letter stream, from where
`ringback webhooks replay` puts it back in line. If a dispatcher dies mid-delivery
the entry stays pending in the group and another dispatcher claims it
(XAUTOCLAIM) once it has been idle for `reclaim_idle_s`.

Erasure reaches webhooks too: a trigger whose customer was erased after it was made
(the profile's erasure marker says so) is acknowledged, not sent, before every attempt
and before dead-lettering; an entry deleted from its stream comes back from the group
with no fields and is acknowledged. A trigger that merely expired (its record gone
two days after expiry, during a long outage) still goes to the dead-letter stream.
Copies in the dead-letter and replay streams are recorded in the profile's index,
with the same erasure check: a copy written while its customer was erased deletes
itself.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import logging
import os
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from redis.exceptions import ResponseError

from engine.core.metrics import Metrics
from engine.core.vocabulary import Channel, TriggerKind
from engine.delivery.records import index_entry
from engine.valkey import keys, refs, streams
from engine.valkey.store import Store
from engine.valkey.streams import xrange, xreadgroup

__all__ = ["Dispatcher", "WebhookTarget", "sign", "webhook_body"]

log = logging.getLogger("ringback.webhooks")


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    name: str
    url: str
    # "whsec_<base64>"; the first signs new deliveries too. Never in a repr (logs,
    # tracebacks, debuggers): anyone holding one can forge deliveries.
    secrets: tuple[str, ...] = field(repr=False)
    kinds: tuple[str, ...] = (TriggerKind.CALLBACK, TriggerKind.NOTIFY)
    # The channels this target serves (an e-mail gateway: ("email",)); empty: every one.
    # Values of `Channel`; config gives plain strings, which compare equal.
    channels: tuple[str, ...] = ()
    timeout_s: float = 5.0
    max_attempts: int = 8
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    concurrency: int = 8
    reclaim_idle_s: float = 30.0


def _secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secrets: tuple[str, ...], msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,<sig>` per secret.

    >>> sign(("whsec_" + base64.b64encode(b"k" * 24).decode(),), "msg_1", 1, b"{}")[:3]
    'v1,'
    """
    to_sign = f"{msg_id}.{timestamp_s}.".encode() + body
    sigs = [
        "v1,"
        + base64.b64encode(hmac.new(_secret_bytes(s), to_sign, hashlib.sha256).digest()).decode()
        for s in secrets
    ]
    return " ".join(sigs)


# What a trigger carries for the bank's own reports (campaign attribution, segments,
# branch, customer value) is not sent out: an e-mail or SMS gateway, or a dialler,
# needs whom to contact and why, not the customer's value score or search keyword.
_KEPT_INSIDE = frozenset({"attribution", "segments", "branch", "customer_value"})


def webhook_body(trigger: dict[str, Any]) -> bytes:
    """Standard Webhooks payload shape: {type, timestamp, data}.

    >>> import orjson
    >>> sorted(orjson.loads(webhook_body({"id": "d1", "kind": "notify",
    ...                                   "customer_value": 80.0, "segments": ["a"]}))["data"])
    ['id', 'kind']
    """
    created = int(trigger.get("created_ms", 0) or 0)
    return orjson.dumps(
        {
            "type": f"ringback.{trigger.get('kind', 'trigger')}",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created / 1000)),
            "data": {k: v for k, v in trigger.items() if k not in _KEPT_INSIDE},
        }
    )


def _serves(target: WebhookTarget, trigger: dict[str, Any]) -> bool:
    """Whether `target` handles the trigger's channel: an e-mail fallback goes to the
    e-mail gateway, not to the CTI that dials phones. A trigger without a channel is a
    phone callback (older entries).

    >>> t = WebhookTarget("mail", "https://x", (), channels=("email",))
    >>> _serves(t, {"channel": "email"}), _serves(t, {"channel": "callback"}), _serves(t, {})
    (True, False, False)
    """
    if not target.channels:
        return True
    return str(trigger.get("channel") or Channel.CALLBACK) in target.channels


def dead_letter_stream(target: str) -> str:
    return keys.webhook_dead_letters(target)


def replay_stream(target: str) -> str:
    return keys.webhook_replay(target)


DEAD_LETTERS_MAXLEN = 100_000  # per target; and trimmed by age (refs.STREAM_KEEP_MS)


async def _index(store: Store, fields: dict[str, str], stream: str, entry_id: str) -> bool:
    """A copy of a trigger in a webhook stream is the customer's data too: recorded in
    the profile's index, so erasure deletes it. When the customer was erased after the
    trigger was made, the copy is deleted instead and the result is False."""
    prefix = fields.get("prefix", "")
    if not prefix:
        return True
    created = fields.get("created_ms", "")
    born = int(created) if created.isdigit() else 0
    if await index_entry(store, prefix, stream, entry_id, born):
        return True
    await store.call("XDEL", stream, entry_id, writes=True)
    return False


def group_name(target: str) -> str:
    return f"wh:{target}"


class Dispatcher:
    """Delivers triggers to every configured target; one instance per engine worker."""

    def __init__(
        self,
        store: Store,
        targets: list[WebhookTarget],
        metrics: Metrics,
        *,
        shards: int = keys.TRIGGER_SHARDS,
        consumer: str | None = None,
    ) -> None:
        self.store = store
        self.client = store.client
        self.targets = targets
        self.metrics = metrics
        self.streams = [keys.trigger_stream(i) for i in range(shards)]
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        for target in self.targets:
            for stream in [*self.streams, replay_stream(target.name)]:
                try:
                    await self.client.xgroup_create(
                        stream, group_name(target.name), id="0", mkstream=True
                    )
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
            self._tasks.append(asyncio.create_task(self._run(target), name=f"wh:{target.name}"))

    async def stop(self) -> None:
        """Read loops end at their next short block; deliveries still running are cancelled
        and stay pending in the group, so another dispatcher reclaims them."""
        self._stopping = True
        _, pending = await asyncio.wait(self._tasks, timeout=2.0) if self._tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()

    async def _run(self, target: WebhookTarget) -> None:
        """Read new entries and reclaim abandoned ones, forever; crashes are counted."""
        limit = asyncio.Semaphore(target.concurrency)
        inflight: set[asyncio.Task[None]] = set()
        streams = [*self.streams, replay_stream(target.name)]
        group = group_name(target.name)
        # One read loop per stream on a cluster (the shards live on different nodes, and
        # one XREADGROUP cannot span slots); one for every stream on a single node.
        parts = [[s] for s in streams] if self.store.is_cluster else [streams]
        try:
            await asyncio.gather(
                *(self._loop(target, limit, inflight, part, group, 0.0) for part in parts)
            )
        finally:
            for task in inflight:
                task.cancel()

    async def _loop(
        self,
        target: WebhookTarget,
        limit: asyncio.Semaphore,
        inflight: set[asyncio.Task[None]],
        streams: list[str],
        group: str,
        next_reclaim: float,
    ) -> None:
        while not self._stopping:
            try:
                batch: list[tuple[str, str, dict[str, str]]] = []
                if time.monotonic() >= next_reclaim:
                    # Entries another (dead) dispatcher took but never acknowledged.
                    next_reclaim = time.monotonic() + target.reclaim_idle_s / 2
                    batch += await self._reclaim(target, streams)
                reply = await xreadgroup(
                    self.client,
                    group,
                    self.consumer,
                    streams,
                    count=32,
                    block_ms=int(min(0.25, target.reclaim_idle_s / 2) * 1000),
                )
                for stream, entries in reply:
                    batch += [(stream, entry_id, fields) for entry_id, fields in entries]
                for stream, entry_id, fields in batch:
                    await limit.acquire()
                    task = asyncio.create_task(self._deliver(target, stream, entry_id, fields))
                    inflight.add(task)
                    task.add_done_callback(functools.partial(_finished, inflight, limit))
            except asyncio.CancelledError:
                for task in inflight:
                    task.cancel()
                raise
            except Exception:
                log.exception("webhook loop for %s failed; restarting in 1 s", target.name)
                self.metrics.background_failures.labels("webhooks").inc()
                await asyncio.sleep(1)

    async def _reclaim(
        self, target: WebhookTarget, streams: list[str]
    ) -> list[tuple[str, str, dict[str, str]]]:
        out = []
        idle_ms = int(target.reclaim_idle_s * 1000)
        for stream in streams:
            _, claimed, _ = await self.client.xautoclaim(
                stream, group_name(target.name), self.consumer, idle_ms, "0-0", count=100
            )
            out += [(stream, entry_id, fields) for entry_id, fields in claimed if fields]
        return out

    async def _withdrawn(self, trigger: dict[str, Any]) -> bool:
        """Whether the trigger's customer was erased after it was made: then it must not
        be sent, retried or dead-lettered. A record that is merely gone (expired two
        days ago, during a long outage) is no such sign: that trigger is dead-lettered,
        not dropped."""
        prefix = str(trigger.get("prefix") or "")
        if not prefix:
            return False
        created = trigger.get("created_ms")
        born = created if isinstance(created, int) else 0
        return await refs.erased_since(self.store, prefix, born)

    async def _deliver(
        self, target: WebhookTarget, stream: str, entry_id: str, fields: dict[str, str] | None
    ) -> None:
        group = group_name(target.name)
        if not fields:  # deleted (erased) after it was read: nothing left to send
            await self.client.xack(stream, group, entry_id)
            return
        trigger = streams.decode_fields(fields)
        if trigger.get("kind") not in target.kinds or not _serves(target, trigger):
            await self.client.xack(stream, group, entry_id)
            return
        msg_id = str(trigger.get("id") or entry_id)
        body = webhook_body(trigger)
        assert self._session is not None
        for attempt in range(1, target.max_attempts + 1):
            if await self._withdrawn(trigger):  # checked before every attempt
                self.metrics.webhook_deliveries.labels(target.name, "withdrawn").inc()
                await self.client.xack(stream, group, entry_id)
                return
            ok, detail = await self._post(target, msg_id, body)
            if ok:
                self.metrics.webhook_deliveries.labels(target.name, "delivered").inc()
                await self.client.xack(stream, group, entry_id)
                return
            self.metrics.webhook_deliveries.labels(target.name, "failed").inc()
            log.info("webhook %s to %s attempt %d failed: %s", msg_id, target.name, attempt, detail)
            if attempt < target.max_attempts:
                backoff = min(target.backoff_max_s, target.backoff_base_s * 2 ** (attempt - 1))
                await self._wait_holding(
                    target, stream, entry_id, backoff * random.uniform(0.5, 1.0)
                )
        if await self._withdrawn(trigger):
            self.metrics.webhook_deliveries.labels(target.name, "withdrawn").inc()
            await self.client.xack(stream, group, entry_id)
            return
        dead = dead_letter_stream(target.name)
        dead_id = await self.client.xadd(
            dead,
            {
                **fields,  # type: ignore[dict-item]  # redis-py's annotation is too narrow
                "webhook_id": msg_id,
                "failed_attempts": str(target.max_attempts),
                "last_error": detail[:500],
            },
            maxlen=DEAD_LETTERS_MAXLEN,
            approximate=True,
        )
        kept, _ = await asyncio.gather(
            _index(self.store, fields, dead, str(dead_id)), refs.stream_trim(self.store, dead)
        )
        await self.client.xack(stream, group, entry_id)
        if not kept:  # erased while it was being dead-lettered: the copy is gone
            self.metrics.webhook_deliveries.labels(target.name, "withdrawn").inc()
            return
        self.metrics.webhook_dead_letters.labels(target.name).inc()
        log.warning(
            "webhook %s to %s dead-lettered after %d attempts",
            msg_id,
            target.name,
            target.max_attempts,
        )

    async def _wait_holding(
        self, target: WebhookTarget, stream: str, entry_id: str, delay_s: float
    ) -> None:
        """Sleep through a backoff while keeping the entry ours: re-claiming resets its
        idle time, so no dispatcher (this one included) reclaims it as abandoned."""
        deadline = time.monotonic() + delay_s
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, target.reclaim_idle_s / 3))
            await self.client.xclaim(
                stream, group_name(target.name), self.consumer, 0, [entry_id], justid=True
            )

    async def _post(self, target: WebhookTarget, msg_id: str, body: bytes) -> tuple[bool, str]:
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(target.secrets, msg_id, ts, body),
            "user-agent": "Ringback-Webhooks/1",
        }
        assert self._session is not None
        try:
            async with self._session.post(
                target.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=target.timeout_s),
            ) as r:
                await r.read()
                return 200 <= r.status < 300, f"HTTP {r.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"


def _finished(
    inflight: set[asyncio.Task[None]], limit: asyncio.Semaphore, task: asyncio.Task[None]
) -> None:
    inflight.discard(task)
    limit.release()


async def replay_dead_letters(store: Store, target: str, limit: int = 1000) -> int:
    """Move dead letters back in line for `target` (only that target receives them)."""
    client = store.client
    entries = await xrange(client, dead_letter_stream(target), count=limit)
    for entry_id, fields in entries:
        clean = {
            k: v
            for k, v in fields.items()
            if k not in ("webhook_id", "failed_attempts", "last_error")
        }
        replay = replay_stream(target)
        replay_id = await client.xadd(
            replay,
            clean,  # type: ignore[arg-type]
            maxlen=DEAD_LETTERS_MAXLEN,
            approximate=True,
        )
        await asyncio.gather(
            _index(store, clean, replay, str(replay_id)), refs.stream_trim(store, replay)
        )
        await client.xdel(dead_letter_stream(target), entry_id)
    return len(entries)


def register(sub: Any, name: str) -> None:
    """`ringback webhooks dead-letters --target NAME [--replay]`."""
    p = sub.add_parser(name, help="inspect and replay webhook dead letters")
    p.add_argument("action", choices=["dead-letters"])
    p.add_argument("--target", required=True, help="webhook target name from the config")
    p.add_argument("--replay", action="store_true", help="put them back in line")
    p.add_argument("--redis", help="Valkey URL (default: REDIS_URL or the config's)")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="--redis lists seed nodes of a Valkey Cluster (also REDIS_CLUSTER=1)",
    )
    p.add_argument("--config")
    p.add_argument("--data-dir", default=".ringback")
    p.set_defaults(func=_run_cli)


def _run_cli(args: Any) -> int:
    import uvloop

    from engine.core.settings import load_settings

    settings = load_settings(
        args.config,
        data_dir=args.data_dir,
        overrides={"redis_url": args.redis, "redis_cluster": args.cluster or None},
    )
    if not settings.redis_url:
        print("ringback webhooks: give --redis (the engine's Valkey URL)")
        return 2

    async def run() -> int:
        store = Store(settings.redis_url, Metrics(), cluster=settings.redis_cluster)
        try:
            if args.replay:
                n = await replay_dead_letters(store, args.target)
                print(f"replayed {n} dead letter(s) to {args.target}")
                return 0
            entries = await xrange(store.client, dead_letter_stream(args.target), count=1000)
            for entry_id, fields in entries:
                print(orjson.dumps({"entry": entry_id, **fields}).decode())
            print(f"{len(entries)} dead letter(s) for {args.target}")
            return 0
        finally:
            await store.close()

    return uvloop.run(run())
