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
from collections.abc import Callable

from engine.core.metrics import Metrics
from engine.core.tasks import Periodic
from engine.decisions.inputs import Capacity
from engine.valkey import keys
from engine.valkey.store import Store

__all__ = ["CapacityMonitor"]


STALE_MS = 5000
GONE_MS = 60_000


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
            "HSET", keys.CAPACITY_AGENTS, self.worker, f"{self.local_agents()}:{now}", writes=True
        )
        trim = st.call("ZREMRANGEBYSCORE", keys.CALLBACK_QUEUE, "-inf", now, writes=True)
        entries_f = st.call("HGETALL", keys.CAPACITY_AGENTS)
        queue_f = st.call("ZCARD", keys.CALLBACK_QUEUE)
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
            await st.call("HDEL", keys.CAPACITY_AGENTS, *gone, writes=True)
        self.current = Capacity(agents, int(queue), True)
        if self.metrics is not None:
            self.metrics.callback_queue.set(self.current.queue)
            self.metrics.agents_online.set(self.current.agents_online)
        return self.current
