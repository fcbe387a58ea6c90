"""Valkey streams: the one encoding of entries, and typed reads.

Encoding (`encode_fields`/`decode_fields`): flat string fields; nested values and
booleans as JSON, so every reader (Python, the dashboard's JS, a webhook receiver)
gets them back typed; `*_ms` fields read back as integers. The Lua functions that
add entries (`rb_claim`/`rb_complete` publish nothing themselves; `rb_erase` reads
only) follow the same rule: plain strings and integers, never nested values, so
`decode_fields` reads their entries too.

The engine's client decodes replies (`decode_responses=True`), so stream entries are
`(id, {field: value})` of strings; redis-py's annotations can't know that and say
`bytes | str | None` everywhere. These wrappers state what we actually get, once, so
the code reading streams stays typed without a cast at every use.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
import redis.asyncio as aioredis

__all__ = [
    "Entry",
    "decode_fields",
    "encode_fields",
    "xrange",
    "xread",
    "xreadgroup",
    "xrevrange",
]

Entry = tuple[str, dict[str, str]]


def encode_fields(values: dict[str, Any]) -> list[Any]:
    """A stream entry's fields: nested values as JSON (decoded by `decode_fields`)."""
    out: list[Any] = []
    for k, v in values.items():
        # JSON for nested values and booleans ("true", not Python's "True"), so every
        # reader - Python, the dashboard's JS, a webhook receiver - gets a boolean back.
        out += (k, orjson.dumps(v) if isinstance(v, dict | list | bool) else str(v))
    return out


def decode_fields(fields: dict[str, str]) -> dict[str, Any]:
    """The inverse of `encode_fields`: JSON-looking values decoded, `*_ms` as integers.

    >>> flat = encode_fields({"vip": True, "expires_ms": 5, "context": {"a": 1}, "r": "x"})
    >>> decode_fields(dict(zip(flat[::2], [v.decode() if isinstance(v, bytes) else v
    ...                                    for v in flat[1::2]])))
    {'vip': True, 'expires_ms': 5, 'context': {'a': 1}, 'r': 'x'}
    """
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if v in ("true", "false"):
            out[k] = v == "true"
            continue
        if v[:1] in ("{", "["):
            try:
                out[k] = orjson.loads(v)
                continue
            except orjson.JSONDecodeError:
                pass
        out[k] = int(v) if k.endswith("_ms") and v.isdigit() else v
    return out


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
