"""Typed reads of Valkey streams.

The engine's client decodes replies (`decode_responses=True`), so stream entries are
`(id, {field: value})` of strings; redis-py's annotations can't know that and say
`bytes | str | None` everywhere. These wrappers state what we actually get, once, so
the code reading streams stays typed without a cast at every use.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis

__all__ = ["Entry", "xrange", "xread", "xreadgroup", "xrevrange"]

Entry = tuple[str, dict[str, str]]


async def xrange(client: aioredis.Redis, stream: str, *, count: int) -> list[Entry]:
    """Oldest first."""
    return cast(list[Entry], await client.xrange(stream, count=count))


async def xrevrange(client: aioredis.Redis, stream: str, *, count: int) -> list[Entry]:
    """Newest first."""
    return cast(list[Entry], await client.xrevrange(stream, count=count))


async def xread(
    client: aioredis.Redis, positions: dict[str, str], *, count: int, block_ms: int
) -> list[tuple[str, list[Entry]]]:
    """Entries after each stream's position; [] when the block timed out."""
    streams = cast(dict[Any, Any], positions)
    reply = await client.xread(streams, count=count, block=block_ms)
    return cast(list[tuple[str, list[Entry]]], reply or [])


async def xreadgroup(
    client: aioredis.Redis,
    group: str,
    consumer: str,
    streams: list[str],
    *,
    count: int,
    block_ms: int,
) -> list[tuple[str, list[Entry]]]:
    """New entries for this consumer of the group; [] when the block timed out."""
    reply = await client.xreadgroup(
        group,
        consumer,
        dict.fromkeys(streams, ">"),
        count=count,
        block=block_ms,
    )
    return cast(list[tuple[str, list[Entry]]], reply or [])
