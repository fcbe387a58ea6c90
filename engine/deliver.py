"""Delivery writes: the triggers stream for the contact center, audit records.

Triggers (callbacks, notifications) go to `rb:{t:<shard>}:triggers`, sharded by the
customer so one customer's triggers stay in order and a cluster spreads the load;
consumers read them with consumer groups. Every decision also gets an audit record
under its own hash tag, readable by id for 30 days (`GET /v1/decisions/{id}`).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import orjson

from engine import keys
from engine.store import Store

__all__ = [
    "AUDIT_TTL_S",
    "TRIGGERS_MAXLEN",
    "new_decision_id",
    "publish_event",
    "read_audit",
    "write_audit",
    "write_trigger",
]

AUDIT_TTL_S = 30 * 86400
TRIGGERS_MAXLEN = 100_000


def new_decision_id(now_ms: int | None = None) -> str:
    """Time-ordered and unguessable: 12 hex of ms, then 12 random hex.

    >>> len(new_decision_id(1_700_000_000_000)), new_decision_id(1)[:12]
    (24, '000000000001')
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{now_ms:012x}{os.urandom(6).hex()}"


def flat_fields(values: dict[str, Any]) -> list[Any]:
    """A stream entry's fields: nested values as JSON (decoded by `decode_fields`)."""
    out: list[Any] = []
    for k, v in values.items():
        # JSON for nested values and booleans ("true", not Python's "True"), so every
        # reader - Python, the dashboard's JS, a webhook receiver - gets a boolean back.
        out += (k, orjson.dumps(v) if isinstance(v, dict | list | bool) else str(v))
    return out


def decode_fields(fields: dict[str, str]) -> dict[str, Any]:
    """The inverse of `flat_fields`: JSON-looking values decoded, `*_ms` as integers.

    >>> flat = flat_fields({"vip": True, "expires_ms": 5, "context": {"a": 1}, "r": "x"})
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


async def write_trigger(store: Store, profile_prefix: str, trigger: dict[str, Any]) -> str:
    """Publish a trigger: its record (claim state) and its entry on the customer's shard.

    `trigger` needs `id`, `kind` and `expires_ms`; the record lives two days past expiry.
    Both writes are queued in the same loop tick, so they share one pipeline.
    """
    shard = keys.trigger_shard(profile_prefix)
    fields = flat_fields(trigger)
    record = keys.trigger_record(str(trigger["id"]))
    expires_ms = int(trigger.get("expires_ms") or int(time.time() * 1000) + 600_000)
    rec = store.call(
        "HSET",
        record,
        "data",
        orjson.dumps(trigger),
        "expires_ms",
        expires_ms,
        "prefix",
        profile_prefix,
        "shard",
        shard,
        writes=True,
    )
    ttl = store.call("PEXPIREAT", record, expires_ms + 2 * 86_400_000, writes=True)
    add = store.call(
        "XADD",
        keys.trigger_stream(shard),
        "MAXLEN",
        "~",
        TRIGGERS_MAXLEN,
        "*",
        *fields,
        writes=True,
    )
    _, _, entry_id = await asyncio.gather(rec, ttl, add)  # every failure taken, not just one
    return str(entry_id)


async def publish_event(store: Store, shard: int, event: dict[str, Any]) -> None:
    """A state change (claimed, completed, withdrawn) on the trigger's shard stream, so
    every gateway shows it at once; webhook targets skip kinds they don't subscribe to."""
    fields = flat_fields(event)
    await store.call(
        "XADD",
        keys.trigger_stream(shard),
        "MAXLEN",
        "~",
        TRIGGERS_MAXLEN,
        "*",
        *fields,
        writes=True,
    )


async def write_audit(store: Store, decision_id: str, record: dict[str, Any]) -> None:
    await store.call(
        "SET", keys.decision_key(decision_id), orjson.dumps(record), "EX", AUDIT_TTL_S, writes=True
    )


async def read_audit(store: Store, decision_id: str) -> dict[str, Any] | None:
    raw = await store.call("GET", keys.decision_key(decision_id))
    return None if raw is None else orjson.loads(raw)
