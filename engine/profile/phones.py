"""Who is calling: a customer's CRM phone number, kept only as a keyed hash.

An inbound call arrives with the caller's number; the agent's screen-pop needs the
customer. The CRM sends the number with the customer's attributes (`phone`, E.164),
but Ringback never stores it: it stores HMAC-SHA256(number) under a key derived from
the config's secrets (`phone_hash_key`), as an index `rb:{ph:<hash>}` -> customer id,
and the profile keeps only the hash (`attrs.phone_ref`). So a copy of Valkey does not
hold the numbers, and cannot test a list of numbers against the index without the
config. A changed (or removed) number drops the old index entry; the entry is named
in the profile's `refs` (engine/valkey/refs.py), so erasing the customer deletes it.

Rotating the secrets the key derives from (API tokens, site identity secrets) starts
a new key: numbers indexed before are no longer found until the CRM sends them again
(`ringback import` re-indexes them all).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated

import orjson
from msgspec import Meta

from engine.core.settings import Settings
from engine.valkey import keys, refs
from engine.valkey.store import Store

__all__ = [
    "E164",
    "PHONE_REF_FIELD",
    "Phone",
    "find_customer",
    "phone_hash_key",
    "phone_ref",
    "stored_phone_ref",
    "update_phone_index",
]

E164 = r"^\+[1-9][0-9]{6,14}$"
"""A phone number in E.164: `+`, a country code and the number, digits only."""
Phone = Annotated[str, Meta(pattern=E164)]

PHONE_REF_FIELD = "phone_ref"  # in the stored attributes: the hash, never the number

# The index entry's reference in the profile's `refs` needs an "until" (engine/valkey/
# refs.py); the entry lives as long as the CRM says the number is the customer's.
_FOREVER_MS = 100 * 365 * 86_400_000


def phone_hash_key(settings: Settings) -> bytes:
    """The key of phone hashes, the same in every worker, across restarts and for
    `ringback import`: derived from the config's secrets (API token hashes, per-site
    identity secrets), as the offer-decision and erasure-receipt keys are."""
    h = hashlib.blake2b(digest_size=32, person=b"rb-phones")
    for token in sorted(t.sha256 for t in settings.api_tokens):
        h.update(token.encode() + b"\0")
    for key in sorted(settings.sites):
        h.update(key.encode() + b"\0" + (settings.sites[key].identity_secret or "").encode())
        h.update(b"\0")
    return h.digest()


def phone_ref(key: bytes, phone: str) -> str:
    """The keyed hash of an E.164 number: what the index and the profile hold.

    >>> phone_ref(b"k", "+441632960001") == phone_ref(b"k", "+441632960001")
    True
    >>> phone_ref(b"k", "+441632960001") == phone_ref(b"other", "+441632960001")
    False
    >>> len(phone_ref(b"k", "+441632960001"))
    64
    """
    return hmac.new(key, phone.encode(), hashlib.sha256).hexdigest()


async def stored_phone_ref(store: Store, customer_id: str) -> str | None:
    """The phone hash the customer's stored attributes name, if any."""
    raw = await store.call("GET", keys.profile_keys(keys.customer_prefix(customer_id))[0])
    if not raw:
        return None
    try:
        attrs = orjson.loads(raw).get("attrs")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    ref = attrs.get(PHONE_REF_FIELD) if isinstance(attrs, dict) else None
    return ref if isinstance(ref, str) and ref else None


async def update_phone_index(
    store: Store,
    customer_id: str,
    old_ref: str | None,
    new_ref: str | None,
    now_ms: int | None = None,
) -> bool:
    """Point `new_ref`'s index entry at the customer (and name it in the profile's
    `refs`); drop `old_ref`'s when the number changed and the entry is still this
    customer's (a number the CRM gave to someone since is theirs now).

    The entry is written before its reference, so an erasure either finds the
    reference (and deletes the entry) or has left its marker (then the reference is
    refused and the entry deleted here). Returns False in that case."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    prefix = keys.customer_prefix(customer_id)
    indexed = True
    if new_ref:
        entry = keys.phone_index(new_ref)
        await store.call("SET", entry, customer_id, writes=True)
        ok = await refs.add(
            store, prefix, [(refs.key_ref(entry), now_ms + _FOREVER_MS)], born_ms=now_ms
        )
        if not ok:
            await store.call("DEL", entry, writes=True)
            indexed = False
    if old_ref and old_ref != new_ref:
        entry = keys.phone_index(old_ref)
        if await store.call("GET", entry) == customer_id:
            await store.call("DEL", entry, writes=True)
        await store.call("ZREM", keys.profile_refs(prefix), refs.key_ref(entry), writes=True)
    return indexed


async def find_customer(store: Store, key: bytes, phone: str) -> str | None:
    """The customer whose CRM number this is, if any."""
    found = await store.call("GET", keys.phone_index(phone_ref(key, phone)))
    return str(found) if found else None
