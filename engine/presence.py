""" "Online now" for the contact center: presence of the customers behind open callbacks.

A callback is worth most while the customer is still on the site, so the agent's queue
shows, for each open trigger, whether its customer is online now. Presence lives in the
profile (`online_until`, moved forward by every event, heartbeats included, see
`profile_delta.py`); this watcher reads it for the open triggers only, once per
`poll_s`, and pushes a `presence` message to the dashboards when it flips.

Why poll rather than push from ingest: going *offline* is the absence of events, which
only a clock can notice; and the hot path stays as it is (one Valkey round trip per
batch). The cost is one pipelined GET per open trigger per second per worker, paid
only while agents are connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from engine.metrics import Metrics
from engine.store import Store
from engine.tasks import finish

__all__ = ["PresenceWatcher", "online_from_profile"]

log = logging.getLogger("ringback.presence")

# Open triggers older than this are dropped from the watch even if no event closed
# them (a lost "completed" must not make the watcher grow forever).
_MAX_WATCH_MS = 2 * 86_400_000


def online_from_profile(raw: bytes | str | None, now_ms: int) -> tuple[bool, int | None]:
    """(online now, last seen ms) from a stored profile value.

    >>> online_from_profile(b'{"online_until": 2000, "last_ts": 1500}', 1000)
    (True, 1500)
    >>> online_from_profile(b'{"online_until": 2000}', 3000), online_from_profile(None, 0)
    ((False, None), (False, None))
    """
    if not raw:
        return False, None
    try:
        fields = orjson.loads(raw)
        until = float(fields.get("online_until") or 0)
        seen = fields.get("last_ts")
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return False, None
    return now_ms < until, int(seen) if isinstance(seen, int | float) else None


@dataclass(slots=True)
class _Watched:
    profile_key: str
    expires_ms: int
    online: bool | None


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
        if kind in ("callback", "notify") and msg.get("prefix"):
            online = msg.get("online")
            self._open[str(msg.get("id"))] = _Watched(
                f"{msg['prefix']}:p",
                int(msg.get("expires_ms") or 0),
                online if isinstance(online, bool) else None,
            )
        elif kind in ("completed", "withdrawn"):
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
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("presence poll failed; retrying at the next tick")
                if self._metrics is not None:
                    self._metrics.background_failures.labels("presence").inc()

    async def poll(self) -> int:
        """Read presence for every open trigger; push the ones that changed. Returns pushes."""
        now_ms = int(time.time() * 1000)
        for tid in [t for t, w in self._open.items() if w.expires_ms < now_ms - _MAX_WATCH_MS]:
            del self._open[tid]
        live = [(t, w) for t, w in self._open.items() if w.expires_ms > now_ms]
        if not live:
            return 0
        # All GETs are queued in one tick, so the store sends them as one pipeline.
        raws = await asyncio.gather(*(self.store.call("GET", w.profile_key) for _, w in live))
        pushed = 0
        for (tid, w), raw in zip(live, raws, strict=True):
            online, last_seen = online_from_profile(raw, now_ms)
            if online != w.online:
                w.online = online
                pushed += 1
                await self._broadcast(
                    {
                        "kind": "presence",
                        "trigger_id": tid,
                        "online": online,
                        "last_seen": last_seen,
                    }
                )
        return pushed
