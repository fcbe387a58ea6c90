""" "Online now" for the contact center: presence of the customers behind open callbacks.

A callback is worth most while the customer is still on the site, so the agent's queue
shows, for each open trigger, whether its customer is online now. Presence lives in the
profile (`online_until`, moved forward by every event, heartbeats included, see
`profile_delta.py`); this watcher reads it (`rb_presence`: two integers, not the
profile) for the open triggers only, once per `poll_s`, skipping customers known to
be online past the next poll, and pushes a `presence` message when it flips.

Why poll rather than push from ingest: going *offline* is the absence of events, which
only a clock can notice; and the hot path stays as it is (one Valkey round trip per
batch). The cost is at most one pipelined call per open trigger per second per
worker, in chunks that yield to the event loop, paid only while agents are connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from engine.core.errors import StoreUnavailable
from engine.core.metrics import Metrics
from engine.core.tasks import finish
from engine.core.vocabulary import EntryKind, is_phone_work
from engine.valkey.store import Store

__all__ = ["PresenceWatcher", "needs_read"]

log = logging.getLogger("ringback.presence")

# Presence reads per pipeline before the watcher lets other work run.
_CHUNK = 64


@dataclass(slots=True)
class _Watched:
    profile_key: str
    expires_ms: int
    online: bool | None
    until_ms: int = 0  # the profile's online_until when last read


def needs_read(w: _Watched, now_ms: int, poll_ms: int) -> bool:
    """online_until only moves forward: a customer known to be online past the next
    poll needs no read now. Only the offline and the about-to-lapse are read.

    >>> needs_read(_Watched("p", 0, True, until_ms=10_000), 1_000, 1_000)
    False
    >>> needs_read(_Watched("p", 0, True, until_ms=1_500), 1_000, 1_000)
    True
    >>> needs_read(_Watched("p", 0, False), 1_000, 1_000)
    True
    """
    return not (w.online and w.until_ms - now_ms > poll_ms)


class PresenceWatcher:
    """Tracks open triggers (fed from the gateway's stream) and their customers' presence."""

    def __init__(
        self,
        store: Store,
        broadcast: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        poll_s: float = 1.0,
        active: Callable[[], bool] = lambda: True,
        metrics: Metrics | None = None,
    ) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be positive")
        self.store = store
        self.poll_s = poll_s
        self._broadcast = broadcast
        self._active = active  # only poll while someone is watching
        self._metrics = metrics
        self._open: dict[str, _Watched] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def observe(self, msg: dict[str, Any]) -> None:
        """A triggers-stream message: callbacks open a watch, completion ends it."""
        kind = msg.get("kind")
        if is_phone_work(msg) and msg.get("prefix"):  # notifications are no agent's work
            online = msg.get("online")
            until = str(msg.get("online_until") or "0")  # stream fields arrive as text
            self._open[str(msg.get("id"))] = _Watched(
                f"{msg['prefix']}:p",
                int(msg.get("expires_ms") or 0),
                online if isinstance(online, bool) else None,
                int(until) if until.isdigit() else 0,
            )
        elif kind in (EntryKind.COMPLETED, EntryKind.WITHDRAWN):
            self._open.pop(str(msg.get("trigger_id")), None)

    def online(self, trigger_id: str) -> bool | None:
        w = self._open.get(trigger_id)
        return None if w is None else w.online

    @property
    def watched(self) -> int:
        return len(self._open)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="presence-watcher")

    async def stop(self) -> None:
        self._stop.set()
        await finish(self._task)

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.poll_s)
            if self._stop.is_set():
                break
            try:
                if self._active():
                    await self.poll()
                else:  # nobody watching: nothing to read, but the watch must not grow
                    self.prune(int(time.time() * 1000))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("presence poll failed; retrying at the next tick")
                if self._metrics is not None:
                    self._metrics.background_failures.labels("presence").inc()

    def prune(self, now_ms: int) -> None:
        """Stop watching expired callbacks: they are off every dashboard (which drops
        them by expires_ms), and keeping them would grow the watch without end."""
        for tid in [t for t, w in self._open.items() if w.expires_ms <= now_ms]:
            del self._open[tid]

    async def poll(self) -> int:
        """Read presence for the open triggers that need it; push changes. Returns pushes."""
        now_ms = int(time.time() * 1000)
        self.prune(now_ms)
        poll_ms = int(self.poll_s * 1000)
        due = [(t, w) for t, w in self._open.items() if needs_read(w, now_ms, poll_ms)]
        pushed = 0
        # In chunks, each one pipeline (queued in one tick), yielding between them: a
        # long queue must not stall the event loop that serves ingest.
        for i in range(0, len(due), _CHUNK):
            chunk = due[i : i + _CHUNK]
            replies = await asyncio.gather(
                *(
                    self.store.fcall("rb_presence", [w.profile_key], [], writes=False)
                    for _, w in chunk
                ),
                return_exceptions=True,  # one broken profile must not blind the rest
            )
            for (tid, w), reply in zip(chunk, replies, strict=True):
                if isinstance(reply, BaseException):
                    if isinstance(reply, StoreUnavailable):
                        raise reply  # Valkey is down: the whole poll waits for the next tick
                    log.warning("presence of trigger %s unreadable: %s", tid, reply)
                    continue
                until_ms, last_ts = reply
                w.until_ms = int(until_ms)
                online = now_ms < w.until_ms
                if online != w.online:
                    w.online = online
                    pushed += 1
                    message = {
                        "kind": "presence",
                        "trigger_id": tid,
                        "online": online,
                        "last_seen": int(last_ts) or None,
                    }
                    await self._broadcast(message)
            await asyncio.sleep(0)
        return pushed
