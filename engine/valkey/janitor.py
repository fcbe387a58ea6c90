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
import time
from collections.abc import Sequence

from engine.core.metrics import Metrics
from engine.core.tasks import Periodic
from engine.valkey import keys, refs
from engine.valkey.store import Store

__all__ = ["StreamJanitor", "shared_streams"]


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


class StreamJanitor(Periodic):
    """Runs `trim` every `interval_s` (first after one interval) in the background."""

    name = "stream_janitor"

    def __init__(
        self,
        store: Store,
        webhook_targets: Sequence[str],
        interval_s: float = 60.0,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(interval_s, metrics, first_delay_s=interval_s)
        self.store = store
        self.streams = shared_streams(webhook_targets)

    async def tick(self) -> None:
        await self.trim()

    async def trim(self, now_ms: int | None = None) -> int:
        """Trim every shared stream to `refs.STREAM_KEEP_MS`; returns entries removed."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        trimmed = await asyncio.gather(
            *[refs.stream_trim(self.store, stream, now_ms) for stream in self.streams]
        )
        return sum(int(n) for n in trimmed)
