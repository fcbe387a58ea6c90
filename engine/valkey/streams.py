"""Valkey streams: the one encoding of entries, and typed reads.

Encoding (`encode_fields`/`decode_fields`): flat string fields; nested values and
booleans as JSON, so every reader (Python, the dashboard's JS, a webhook receiver)
gets them back typed; `*_ms` fields read back as integers.

Who writes which entries (engine/valkey/lua/ringback.lua is the only other writer):
  triggers shards   rb:{t:<n>}:triggers   Python only, with `encode_fields`: a new
                    trigger (engine.delivery.records.write_trigger: the fields of
                    `engine.decisions.model.Trigger`) and its changes of state
                    (`publish_event`: kind claimed|completed|withdrawn, trigger_id,
                    by, outcome, at_ms, reason; engine.contact_center.claims and
                    engine.privacy.erasure).
  outcome streams                         Python only (delivery.outcomes.record_outcome).
  webhook dead-letter and replay streams  redis-py XADD of the entry's own fields
                    as read, plus webhook_id, failed_attempts, last_error.
  contact history   KEYS[5] hist          Lua only: `append_history`, called by
                    `rb_reserve` (the plan's `Contact.history`: kind decision,
                    decision_id, rule, action, channel, offer, ts) and `rb_history`
                    (delivery.outcomes.record_outcome: kind outcome, decision_id, rule,
                    channel, outcome, by, ts, value?, note?; and
                    engine.profile.contact_history.append_history). Its encoding
                    matches this one for what is written there: a table as
                    `cjson.encode` (an empty list comes back as "{}"), anything else
                    `tostring` (booleans "true"/"false"; numbers with "%.14g", exact
                    for ms timestamps). `rb_read` returns the 50 newest, which
                    engine.profile.profiles.history_entry decodes (JSON-looking
                    values only: its `ts` stays a string).
`rb_claim`/`rb_complete` write fields of the trigger's record hash (claimed_by,
claimed_ms, outcome, completed_ms), never a stream entry; `rb_erase` deletes only.

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
