"""The stream janitor: trims every shared stream by age, once a minute.

Writers trim the stream they write to (`refs.stream_trim`), but a quiet stream - a
webhook target's dead letters after its outage ended, a shard nobody's triggers land
on - would then keep entries past `refs.STREAM_KEEP_MS`, and past the expiry of their
references in the profiles' indexes (after which an erasure no longer finds them).
So every worker also trims all of them every minute: an exact MINID trim that finds
nothing due costs one cheap call per stream, in one pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from engine import keys, refs
from engine.metrics import Metrics
from engine.store import Store

__all__ = ["StreamJanitor", "shared_streams"]

log = logging.getLogger("ringback.janitor")


def shared_streams(webhook_targets: Sequence[str], shards: int = keys.TRIGGER_SHARDS) -> list[str]:
    """Every stream that holds customers' data outside their profiles.

    >>> shared_streams(["cti"], shards=1)
    ['rb:{t:0}:triggers', 'rb:{o:0}:outcomes', 'rb:{wh:cti}:dead', 'rb:{wh:cti}:replay']
    """
    out = [keys.trigger_stream(i) for i in range(shards)]
    out += [keys.outcome_stream(i) for i in range(shards)]
    for target in webhook_targets:
        out += [keys.webhook_dead_letters(target), keys.webhook_replay(target)]
    return out


class StreamJanitor:
    """Runs `trim` every `interval_s` in the background; failures are logged, counted
    and retried at the next interval."""

    def __init__(
        self,
        store: Store,
        webhook_targets: Sequence[str],
        interval_s: float = 60.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.streams = shared_streams(webhook_targets)
        self.interval_s = interval_s
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-janitor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def trim(self, now_ms: int | None = None) -> int:
        """Trim every shared stream to `refs.STREAM_KEEP_MS`; returns entries removed."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        trimmed = await asyncio.gather(
            *[refs.stream_trim(self.store, stream, now_ms) for stream in self.streams]
        )
        return sum(int(n) for n in trimmed)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.trim()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Valkey down: the next minute tries again
                log.warning("stream janitor trim failed: %s", exc)
                if self.metrics is not None:
                    self.metrics.background_failures.labels("stream_janitor").inc()
