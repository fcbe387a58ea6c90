"""Who is calling: a customer's CRM phone number, kept only as a keyed hash.

An inbound call arrives with the caller's number; the agent's screen-pop needs the
customer. The CRM sends the number with the customer's attributes (`phone`, E.164),
but Ringback never stores it: it stores HMAC-SHA256(number) under the phone key
(`[privacy] phone_key*`, else a random key generated once into the data dir; see
engine/core/settings.py), and the profile keeps only the hash (`attrs.phone_ref`). So
a copy of Valkey neither holds the numbers nor can test a list of numbers against
the index without the key.

The index `rb:{ph:<hash>}` is a SET of customer ids: a joint account or a household
landline is one number for several customers, and the inbound screen-pop asks the
agent to pick rather than guess. Each customer owns only their membership: a changed
number, a removed one, or an erasure SREMs that customer's id and never touches
another's (Valkey deletes a set with its last member, so nothing empty is left). The
membership is named in the profile's `refs` (`refs.member_ref`), which is how an
erasure finds it.

The key is independent of API tokens and identity secrets: rotating those changes
nothing here. Changing the phone key itself orphans every hash made before it:
numbers are found again once the CRM sends them again (`ringback import` re-indexes
them all).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated

import orjson
from msgspec import Meta
from redis.exceptions import ResponseError

from engine.core.settings import Settings
from engine.valkey import keys, refs
from engine.valkey.store import Store

__all__ = [
    "E164",
    "PHONE_REF_FIELD",
    "Phone",
    "find_customers",
    "phone_hash_key",
    "phone_ref",
    "stored_phone_ref",
    "update_phone_index",
]

E164 = r"^\+[1-9][0-9]{6,14}$"
"""A phone number in E.164: `+`, a country code and the number, digits only."""
Phone = Annotated[str, Meta(pattern=E164)]

PHONE_REF_FIELD = "phone_ref"  # in the stored attributes: the hash, never the number

# The membership's reference in the profile's `refs` needs an "until" (engine/valkey/
# refs.py); it lives as long as the CRM says the number is the customer's.
_FOREVER_MS = 100 * 365 * 86_400_000


def phone_hash_key(settings: Settings) -> bytes:
    """The key of phone hashes: the configured or generated phone key (the same in
    every worker, across restarts and for `ringback import` on the same data dir),
    never derived from API tokens, so rotating a token keeps every number found."""
    if settings.phone_key is None:
        raise ValueError("settings without a phone key (use load_settings)")
    return hashlib.blake2b(
        settings.phone_key.reveal().encode(), digest_size=32, person=b"rb-phones"
    ).digest()


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
    """Add the customer to `new_ref`'s set (and name the membership in the profile's
    `refs`); take them out of `old_ref`'s when the number changed, leaving any other
    customer who shares (or has since been given) that number.

    The membership is added before its reference, so an erasure either finds the
    reference (and removes the membership) or has left its marker (then the reference
    is refused and the membership removed here). Returns False in that case."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    prefix = keys.customer_prefix(customer_id)
    indexed = True
    if new_ref:
        entry = keys.phone_index(new_ref)
        await store.call("SADD", entry, customer_id, writes=True)
        member = refs.member_ref(entry, customer_id)
        ok = await refs.add(store, prefix, [(member, now_ms + _FOREVER_MS)], born_ms=now_ms)
        if not ok:
            await store.call("SREM", entry, customer_id, writes=True)
            indexed = False
    if old_ref and old_ref != new_ref:
        entry = keys.phone_index(old_ref)
        await _leave(store, entry, customer_id)
        stale = (refs.member_ref(entry, customer_id), refs.key_ref(entry))
        await store.call("ZREM", keys.profile_refs(prefix), *stale, writes=True)
    return indexed


async def _leave(store: Store, entry: str, customer_id: str) -> None:
    """Take the customer out of an index entry. An entry from before the index held
    sets (a plain string, one customer id, hashed under the old derived key) is
    deleted only if it is still this customer's."""
    try:
        await store.call("SREM", entry, customer_id, writes=True)
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise
        if await store.call("GET", entry) == customer_id:
            await store.call("DEL", entry, writes=True)


async def find_customers(store: Store, key: bytes, phone: str) -> list[str]:
    """Every customer whose CRM number this is (several for a shared number), sorted."""
    found = await store.call("SMEMBERS", keys.phone_index(phone_ref(key, phone)))
    return sorted(str(c) for c in found)
