"""The live queue: every worker follows the triggers shard streams and fans entries
out to its agents' WebSockets, with who is online now (engine/contact_center/presence.py).
Each callback goes out with its call guide (engine/contact_center/quote.py): the bank's
quote for the visitor's calculator, in the site's locale and currency, and the offer
and why, worked out here from the trigger's own context, so a rate changed in the
config shows on the next trigger without touching those already written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from engine.contact_center.presence import PresenceWatcher
from engine.contact_center.quote import site_guide
from engine.core.metrics import Metrics
from engine.core.settings import Settings
from engine.core.tasks import finish
from engine.core.vocabulary import EntryKind, is_phone_work
from engine.valkey import keys, streams
from engine.valkey.store import Store

__all__ = ["Gateway"]

log = logging.getLogger("ringback.triggers")


class Gateway:
    """Follows every triggers shard and fans entries out to this worker's WebSockets."""

    def __init__(
        self,
        store: Store,
        shards: int = keys.TRIGGER_SHARDS,
        *,
        presence_poll_s: float = 1.0,
        metrics: Metrics | None = None,
        settings: Settings | None = None,  # None: triggers go out without a call guide
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.streams = [keys.trigger_stream(i) for i in range(shards)]
        self.sockets: set[web.WebSocketResponse] = set()
        # "Online now" for the open triggers, polled only while an agent is connected.
        self.presence = PresenceWatcher(
            store,
            self.broadcast,
            poll_s=presence_poll_s,
            active=lambda: bool(self.sockets),
            metrics=metrics,
        )
        self.ready = asyncio.Event()  # following from known positions
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="trigger-gateway")
        await self.presence.start()

    async def stop(self) -> None:
        """Let the read loop end at its next short block rather than cancel a command
        mid-flight (cancelling redis-py inside XREAD BLOCK could hang app cleanup)."""
        self._stopping = True
        await self.presence.stop()
        await finish(self._task)
        for ws in list(self.sockets):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.close(), 2.0)

    async def _follow(self) -> None:
        # Resolve "$" once: re-sending "$" on every XREAD would miss entries added
        # between two reads of an idle stream.
        client = self.store.client
        last: dict[str, str] = {}
        while not last and not self._stopping:
            try:
                for stream in self.streams:
                    newest = await streams.xrevrange(client, stream, count=1)
                    last[stream] = newest[0][0] if newest else "0-0"
            except asyncio.CancelledError:
                raise
            except Exception:
                last = {}
                log.exception("trigger gateway cannot read the streams; retrying in 1 s")
                self._failed()
                await asyncio.sleep(1)
        # What was open before this worker started is watched too.
        with contextlib.suppress(Exception):
            for msg in await self._open_triggers():
                self.presence.observe(msg)
        self.ready.set()
        # One read loop per shard on a cluster (the shards live on different nodes, and
        # one XREAD cannot span slots); one for every shard on a single node.
        if self.store.is_cluster:
            await asyncio.gather(*(self._read({s: pos}) for s, pos in last.items()))
        else:
            await self._read(last)

    async def _read(self, last: dict[str, str]) -> None:
        """Broadcast what arrives on `last`'s streams (stream -> last entry id seen)."""
        client = self.store.client
        while not self._stopping:
            try:
                reply = await streams.xread(client, last, block_ms=_READ_BLOCK_MS, count=100)
                for stream, entries in reply:
                    for entry_id, fields in entries:
                        last[stream] = entry_id
                        msg = self._decode(entry_id, fields)
                        if not _for_agents(msg):
                            continue  # an e-mail/SMS notification: webhooks' work, not agents'
                        self.presence.observe(msg)
                        await self.broadcast(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("trigger gateway read failed; retrying in 1 s")
                self._failed()
                await asyncio.sleep(1)

    def _failed(self) -> None:
        if self.metrics is not None:
            self.metrics.background_failures.labels("trigger_gateway").inc()

    async def broadcast(self, message: dict[str, Any]) -> None:
        data = orjson.dumps(message).decode()
        for ws in list(self.sockets):
            try:
                await ws.send_str(data)
            except (ConnectionError, RuntimeError):
                self.sockets.discard(ws)

    async def snapshot(self, limit: int = 500) -> list[dict[str, Any]]:
        """Open triggers for a newly connected dashboard, with presence as of now."""
        triggers = await self._open_triggers(limit)
        for t in triggers:
            online = self.presence.online(str(t.get("id")))
            if online is not None:
                t["online"] = online
        return triggers

    async def _open_triggers(self, limit: int = 500) -> list[dict[str, Any]]:
        """Open triggers: the recent entries of every shard, folded by trigger id."""
        client = self.store.client
        open_: dict[str, dict[str, Any]] = {}
        now_ms = int(time.time() * 1000)
        for stream in self.streams:
            for entry_id, fields in reversed(await streams.xrevrange(client, stream, count=limit)):
                msg = self._decode(entry_id, fields)
                kind = msg.get("kind")
                if kind in _NEW:
                    if is_phone_work(msg):  # only phone work is claimable
                        open_[str(msg.get("id"))] = msg
                elif kind == EntryKind.CLAIMED and msg.get("trigger_id") in open_:
                    open_[msg["trigger_id"]]["claimed_by"] = msg.get("by")
                elif kind in _CLOSED:
                    open_.pop(str(msg.get("trigger_id")), None)
        return [t for t in open_.values() if int(t.get("expires_ms") or 0) > now_ms]

    def _decode(self, entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
        """A stream entry as the dashboards get it: a new trigger with its call guide."""
        msg = _decode(entry_id, fields)
        if self.settings is not None and msg.get("kind") in _NEW:
            ctx = msg.get("context")
            ctx = ctx if isinstance(ctx, dict) else {}
            calc = ctx.get("calc")
            factors = msg.get("factors")
            offer = ctx.get("offer")
            msg["call_guide"] = site_guide(
                self.settings,
                str(msg.get("site") or ""),
                calc if isinstance(calc, dict) else {},
                offer=offer if isinstance(offer, dict) else None,
                rule=str(msg.get("rule") or ""),
                reason=str(msg.get("reason") or ""),
                factors=factors if isinstance(factors, dict) else None,
            )
        return msg


# Entry kinds that open a trigger, and those that take one off the floor. Nothing
# writes `withdrawn` when a trigger expires unclaimed: dashboards drop it by
# `expires_ms` (here, in the dashboard's JS and in the presence watcher).
# Tuples, not sets: a value read back from a stream is compared, never hashed.
_NEW = (EntryKind.CALLBACK, EntryKind.NOTIFY)
_CLOSED = (EntryKind.COMPLETED, EntryKind.WITHDRAWN)


def _for_agents(msg: dict[str, Any]) -> bool:
    """Stream entries the dashboards get: phone callbacks and state changes, never an
    e-mail/SMS notification (a do-not-call customer's "call me" must not be claimable)."""
    return msg.get("kind") not in _NEW or is_phone_work(msg)


# How long one XREAD waits for new triggers. Stopping waits for the read in flight to
# end (cancelling redis-py inside XREAD BLOCK could hang shutdown), so this bounds how
# long a worker's stop takes; an idle worker pays 10 cheap reads a second for it.
_READ_BLOCK_MS = 100


def _decode(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    return {"entry": entry_id, **streams.decode_fields(fields)}
