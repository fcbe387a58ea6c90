"""Ending background tasks without hanging shutdown.

Our read loops stop by flag at their next short block instead of being cancelled
mid-command (cancelling redis-py inside XREAD BLOCK could hang app cleanup); a loop
that does not end in time is cancelled after all, so shutdown stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

__all__ = ["Periodic", "finish"]

log = logging.getLogger("ringback.tasks")


class Periodic:
    """A background loop that calls `tick()` every `interval_s` (the first after
    `first_delay_s`). A tick that fails is logged and counted in
    `ringback_background_failures_total{task=name}`, and the next interval tries
    again: a background task is never silently dead. Stopping cancels it (ticks are
    short store round trips, safe to cancel, unlike a blocked XREAD)."""

    name = "periodic"

    def __init__(self, interval_s: float, metrics: Any = None, first_delay_s: float = 0.0):
        self.interval_s = interval_s
        self.metrics = metrics
        self.first_delay_s = first_delay_s
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        await asyncio.sleep(self.first_delay_s)
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Valkey down, say: keep going, say so
                log.warning("%s failed: %s", self.name, exc)
                if self.metrics is not None:
                    self.metrics.background_failures.labels(self.name).inc()
            await asyncio.sleep(self.interval_s)


async def finish(task: asyncio.Task[None] | None, timeout_s: float = 2.0) -> None:
    """Wait up to `timeout_s` for a task told to stop; cancel it if it is still running.

    >>> async def demo():
    ...     t = asyncio.create_task(asyncio.sleep(10))
    ...     await finish(t, 0.01)
    ...     return t.cancelled()
    >>> asyncio.run(demo())
    True
    """
    if task is None:
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout_s)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
