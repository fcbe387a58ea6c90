"""Live contact-center capacity: agents online and callbacks waiting, across workers.

Each worker's gateway reports its connected agents to one hash (`rb:{cap}:agents`,
field per worker with a timestamp, stale entries ignored); open callbacks sit in a
sorted set scored by their expiry (`rb:{cap}:queue`), removed when claimed. A monitor
in every worker reads both once a second, so the decision path pays no round trip:
a rule with `max_queue_per_agent` holds back callbacks the floor cannot answer in
time (falling back or scheduling like outside business hours).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.metrics import Metrics
from engine.store import Store
from engine.tasks import Periodic

__all__ = ["AGENTS_KEY", "QUEUE_KEY", "Capacity", "CapacityMonitor", "is_phone_work"]


AGENTS_KEY = "rb:{cap}:agents"
QUEUE_KEY = "rb:{cap}:queue"
STALE_MS = 5000
GONE_MS = 60_000


def is_phone_work(trigger: Mapping[str, Any]) -> bool:
    """Whether a trigger is agents' work: a phone callback. Only these go on the queue,
    to the dashboards and to claim; an e-mail or SMS fallback (a do-not-call customer's
    "call me", say) is a notification for webhooks, and an agent must never phone it.
    Checks the channel too, so an older entry that said `kind: callback` with an e-mail
    channel is still kept off the floor.

    >>> is_phone_work({"kind": "callback", "channel": "callback"})
    True
    >>> is_phone_work({"kind": "callback", "channel": "email"}), is_phone_work({"kind": "notify"})
    (False, False)
    """
    return trigger.get("kind") == "callback" and trigger.get("channel", "callback") == "callback"


@dataclass(frozen=True, slots=True)
class Capacity:
    agents_online: int = 0
    queue: int = 0
    measured: bool = False  # False until the first reading: don't hold calls back blind

    def overloaded(self, max_queue_per_agent: int) -> bool:
        if not self.measured or max_queue_per_agent <= 0:
            return False
        return self.queue >= self.agents_online * max_queue_per_agent


class CapacityMonitor(Periodic):
    """Reports this worker's agents and reads the floor's every `interval_s`. Stopping
    does no I/O: this worker's entry goes stale by itself."""

    name = "capacity"

    def __init__(
        self,
        store: Store,
        local_agents: Callable[[], int],
        interval_s: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(interval_s, metrics)
        self.store = store
        self.local_agents = local_agents
        self.worker = f"{socket.gethostname()}-{os.getpid()}"
        self.current = Capacity()

    async def tick(self) -> None:
        await self.refresh()

    async def refresh(self) -> Capacity:
        """One pipelined round trip (coalesced store calls, safe to cancel)."""
        now = int(time.time() * 1000)
        st = self.store
        report = st.call(
            "HSET", AGENTS_KEY, self.worker, f"{self.local_agents()}:{now}", writes=True
        )
        trim = st.call("ZREMRANGEBYSCORE", QUEUE_KEY, "-inf", now, writes=True)
        entries_f = st.call("HGETALL", AGENTS_KEY)
        queue_f = st.call("ZCARD", QUEUE_KEY)
        # gather: if Valkey is down every one of them fails, and each failure is taken.
        _, _, entries, queue = await asyncio.gather(report, trim, entries_f, queue_f)
        agents = 0
        gone = []
        for worker, value in (entries or {}).items():
            count, _, ts = str(value).partition(":")
            if ts.isdigit() and now - int(ts) < STALE_MS and count.isdigit():
                agents += int(count)
            elif not ts.isdigit() or now - int(ts) > GONE_MS:
                gone.append(worker)
        if gone:  # workers that stopped (or were replaced) long ago: forget them
            await st.call("HDEL", AGENTS_KEY, *gone, writes=True)
        self.current = Capacity(agents, int(queue), True)
        if self.metrics is not None:
            self.metrics.callback_queue.set(self.current.queue)
            self.metrics.agents_online.set(self.current.agents_online)
        return self.current


async def enqueue(store: Store, trigger_id: str, expires_ms: int) -> None:
    """Put a phone callback on the floor's queue (callers check `is_phone_work`)."""
    await store.call("ZADD", QUEUE_KEY, expires_ms, trigger_id, writes=True)


async def dequeue(store: Store, trigger_id: str) -> None:
    await store.call("ZREM", QUEUE_KEY, trigger_id, writes=True)
