"""Delivery writes: the triggers stream for the contact center, audit records.

Triggers (callbacks, notifications) go to `rb:{t:<shard>}:triggers`, sharded by the
customer so one customer's triggers stay in order and a cluster spreads the load;
consumers read them with consumer groups. Every decision also gets an audit record
under its own hash tag, readable by id for 30 days (`GET /v1/decisions/{id}`).
"""

from __future__ import annotations

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


async def write_trigger(store: Store, profile_prefix: str, trigger: dict[str, Any]) -> str:
    """XADD one trigger to its customer's shard; returns the stream entry id."""
    stream = keys.trigger_stream(keys.trigger_shard(profile_prefix))
    fields: list[Any] = []
    for k, v in trigger.items():
        fields += (k, orjson.dumps(v) if isinstance(v, dict | list) else str(v))
    return str(
        await store.call("XADD", stream, "MAXLEN", "~", TRIGGERS_MAXLEN, "*", *fields, writes=True)
    )


async def write_audit(store: Store, decision_id: str, record: dict[str, Any]) -> None:
    await store.call(
        "SET", keys.decision_key(decision_id), orjson.dumps(record), "EX", AUDIT_TTL_S, writes=True
    )


async def read_audit(store: Store, decision_id: str) -> dict[str, Any] | None:
    raw = await store.call("GET", keys.decision_key(decision_id))
    return None if raw is None else orjson.loads(raw)
