"""Ending background tasks without hanging shutdown.

Our read loops stop by flag at their next short block instead of being cancelled
mid-command (cancelling redis-py inside XREAD BLOCK could hang app cleanup); a loop
that does not end in time is cancelled after all, so shutdown stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["finish"]


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
