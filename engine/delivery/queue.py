"""The floor's queue of open phone callbacks: a sorted set scored by expiry.

Delivery puts a callback on it; a claim or an erasure takes it off; the capacity
monitor (engine/contact_center/capacity.py) counts it against the agents online.
"""

from __future__ import annotations

from engine.valkey import keys
from engine.valkey.store import Store

__all__ = ["dequeue", "enqueue"]


async def enqueue(store: Store, trigger_id: str, expires_ms: int) -> None:
    """Put a phone callback on the floor's queue (callers check `is_phone_work`)."""
    await store.call("ZADD", keys.CALLBACK_QUEUE, expires_ms, trigger_id, writes=True)


async def dequeue(store: Store, trigger_id: str) -> None:
    await store.call("ZREM", keys.CALLBACK_QUEUE, trigger_id, writes=True)
