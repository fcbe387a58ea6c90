"""Delivery writes: the triggers stream for the contact center, audit records.

Triggers (callbacks, notifications) go to `rb:{t:<shard>}:triggers`, sharded by the
customer so one customer's triggers stay in order and a cluster spreads the load;
consumers read them with consumer groups. Every decision also gets an audit record
under its own hash tag, readable by id for 30 days (`GET /v1/decisions/{id}`).

Each of these writes lands outside the profile's slot, so each also records where it
went in the profile's index (engine/refs.py), which `DELETE /v1/profiles/{id}` follows:
the index write is queued with the data's own writes (same pipeline, no round trip);
a stream entry's id exists only once XADD answers, so its reference follows it, still
before the caller answers. The triggers stream is trimmed by age as well as length, so
a reference can say when its entry is gone.

A trigger's index writes check the profile's erasure marker (`rb_refs`): when the
customer was erased while the trigger was being written, the trigger deletes itself
(record, entry, place in the callback queue) and is withdrawn from the dashboards.
A page-offer audit is indexed with a plain ZADD (hot path); an erasure's second sweep
catches one in flight (engine/profile.py).

A trigger also counts as fired in its day's funnel (engine/delivery/reports.py), in the
same pipeline; a trigger withdrawn because its customer was erased stays counted, as
it does in `ringback_rule_triggers_total` (a count holds no personal data).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import orjson

from engine.core.vocabulary import EntryKind
from engine.decisions.loader import RuleSet
from engine.decisions.model import Trigger
from engine.delivery import audit_codec
from engine.delivery.queue import dequeue
from engine.delivery.reports import count_fired
from engine.valkey import keys, refs, streams
from engine.valkey.store import Store

__all__ = [
    "AUDIT_TTL_S",
    "TRIGGERS_MAXLEN",
    "TRIGGER_RECORD_KEEP_MS",
    "decision_ids",
    "index_entry",
    "publish_event",
    "read_audit",
    "unwrite_trigger",
    "write_audit",
    "write_trigger",
]

AUDIT_TTL_S = 30 * 86400
log = logging.getLogger("ringback.records")
TRIGGERS_MAXLEN = 100_000
TRIGGER_RECORD_KEEP_MS = 2 * 86_400_000  # a trigger's record lives this long past expiry


async def write_trigger(
    store: Store, profile_prefix: str, trigger: Trigger | dict[str, Any]
) -> str:
    """Publish a trigger: its record (claim state) and its entry on the customer's shard.

    The same JSON goes to the record's `data` and, field by field, to the stream
    entry (`streams.encode_fields`). A dict (tools, tests: a partial trigger) needs
    `id`, `kind` and `expires_ms`; the record lives two days past expiry.
    The record, the stream entry, the stream's age trim and the record's reference in
    the profile's index are queued in the same loop tick, so they share one pipeline:
    the gateway can read the entry as soon as that pipeline lands. The entry's own
    reference needs its id, so it goes right after. Returns the entry's id, or "" when
    the customer was erased meanwhile (then nothing of the trigger is left).
    """
    if isinstance(trigger, Trigger):
        trigger = trigger.wire()
    now_ms = int(time.time() * 1000)
    shard = keys.trigger_shard(profile_prefix)
    stream = keys.trigger_stream(shard)
    fields = streams.encode_fields(trigger)
    trigger_id = str(trigger["id"])
    record = keys.trigger_record(trigger_id)
    expires_ms = int(trigger.get("expires_ms") or now_ms + 600_000)
    born_ms = int(trigger.get("created_ms") or now_ms)
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
    record_until_ms = expires_ms + TRIGGER_RECORD_KEEP_MS
    ttl = store.call("PEXPIREAT", record, record_until_ms, writes=True)
    add = store.call("XADD", stream, "MAXLEN", "~", TRIGGERS_MAXLEN, "*", *fields, writes=True)
    trim = refs.stream_trim(store, stream, now_ms)
    index = refs.add(
        store, profile_prefix, [(refs.trigger_ref(trigger_id), record_until_ms)], born_ms, now_ms
    )
    # The day's funnel (reports): issued now, so it rides in the same pipeline.
    fired = count_fired(store, trigger, now_ms)
    # gather: every failure taken, not just one
    _, _, entry_id, _, indexed, _ = await asyncio.gather(rec, ttl, add, trim, index, fired)
    if indexed:
        indexed = await refs.add(
            store,
            profile_prefix,
            [(refs.entry_ref(stream, str(entry_id)), refs.stream_until_ms(now_ms))],
            born_ms,
            now_ms,
        )
    if not indexed:
        await unwrite_trigger(store, shard, trigger_id, str(entry_id))
        return ""
    return str(entry_id)


async def unwrite_trigger(store: Store, shard: int, trigger_id: str, entry_id: str) -> None:
    """Undo a trigger whose customer was erased while it was written: the erasure could
    not see it, so it deletes itself and is withdrawn from the dashboards."""
    stream = keys.trigger_stream(shard)
    await asyncio.gather(
        store.call("XDEL", stream, entry_id, writes=True),
        store.call("DEL", keys.trigger_record(trigger_id), writes=True),
        dequeue(store, trigger_id),
        publish_event(
            store,
            shard,
            {"kind": EntryKind.WITHDRAWN, "trigger_id": trigger_id, "reason": "erased"},
        ),
    )


async def publish_event(store: Store, shard: int, event: dict[str, Any]) -> str:
    """A state change (claimed, completed, withdrawn) on the trigger's shard stream, so
    every gateway shows it at once; webhook targets skip kinds they don't subscribe to.
    Returns the entry's id (for the profile's index: `index_entry`)."""
    fields = streams.encode_fields(event)
    stream = keys.trigger_stream(shard)
    add = store.call("XADD", stream, "MAXLEN", "~", TRIGGERS_MAXLEN, "*", *fields, writes=True)
    entry_id, _ = await asyncio.gather(add, refs.stream_trim(store, stream))
    return str(entry_id)


async def index_entry(store: Store, prefix: str, stream: str, entry_id: str, born_ms: int) -> bool:
    """Record a shared stream's entry in the profile's index (erased with it). False
    when the profile was erased at or after `born_ms`: the caller deletes the entry."""
    if not prefix:
        return True
    ref = [(refs.entry_ref(stream, entry_id), refs.stream_until_ms())]
    return await refs.add(store, prefix, ref, born_ms)


async def write_audit(
    store: Store, decision_id: str, record: dict[str, Any], rule_set: RuleSet | None = None
) -> None:
    """The decision's audit record; indexed under `record["prefix"]` when it names one
    (every engine decision does), in the same pipeline, with plain commands (most
    batches of new visitors write one: no function call here).

    With the `rule_set` that decided, the record is deflated against that set's own
    dictionary (engine/delivery/audit_codec.py, format 3), which a reader needs for the
    record's whole TTL, after reloads and restarts: so it is stored too, in the same
    pipeline, on this process's first use and then at most hourly, each time for 2 days
    more than a record's TTL. It stays while any process writes records that use it and
    outlives the last of them. Rule-pack words only, no personal data."""
    key = keys.decision_key(decision_id)
    rsd = audit_codec.rule_set_dictionary(rule_set) if rule_set is not None else None
    stored = audit_codec.encode(record, rsd)
    put = store.call("SET", key, stored, "EX", AUDIT_TTL_S, writes=True)
    writes = [put]
    # The dictionary, when this record needs it and this process has not stored it in
    # the last hour (`due`); kept 2 days past the TTL of the records it stores it for.
    fresh = None
    if rsd is not None and audit_codec.dictionary_id(stored) is not None and rsd.due():
        fresh = rsd
        dict_key = keys.audit_dictionary(fresh.id.hex())
        ttl = AUDIT_TTL_S + 2 * 86400
        writes.append(store.call("SET", dict_key, fresh.data, "EX", ttl, writes=True))
    prefix = record.get("prefix")
    try:
        if not isinstance(prefix, str) or not prefix:
            await asyncio.gather(*writes)
            return
        until_ms = int(time.time() * 1000) + AUDIT_TTL_S * 1000 + refs.SLACK_MS
        await asyncio.gather(*writes, *refs.add_plain(store, prefix, refs.key_ref(key), until_ms))
    except BaseException:
        if fresh is not None:
            fresh.undue()  # maybe not stored: the next write stores it
        raise


async def read_audit(store: Store, decision_id: str) -> dict[str, Any] | None:
    """The decision's audit record, None when there is none. A format-3 record's
    dictionary comes from this process's cache, else from Valkey (then cached); if it
    is gone the record cannot be read: None, with a warning, not an error."""
    stored = await store.call("GET", keys.decision_key(decision_id), raw=True)
    if stored is None:
        return None
    did = audit_codec.dictionary_id(stored)
    if did is None:
        return audit_codec.decode(stored)
    dictionary = audit_codec.known_dictionary(did)
    if dictionary is None:
        found = await store.call("GET", keys.audit_dictionary(did.hex()), raw=True)
        if found is None or audit_codec.remember_dictionary(found) != did:
            store.metrics.audit_unreadable.inc()
            log.warning(
                "audit record %s: its dictionary %s is %s",
                decision_id,
                did.hex(),
                "gone" if found is None else "not the one it names",
            )
            return None
        dictionary = found
    return audit_codec.decode(stored, dictionary)


_AUDIT_KEY = re.compile(r"^rb:\{d:([0-9a-f]{24})\}$")  # keys.decision_key


async def decision_ids(store: Store, prefixes: Sequence[str], since_ms: int = 0) -> list[str]:
    """The decisions audited for these profiles (a customer and its linked anonymous
    profiles) at or after about `since_ms`, newest write first, found through the
    profiles' indexes, not by a scan.

    An audit's reference is scored by when its record is surely gone (written +
    AUDIT_TTL_S + slack), so references of older decisions are not read at all; a few
    from up to the slack earlier may be in the answer, and ids whose record has expired
    since: callers read the records (`read_audit`) and check their `at_ms`."""
    lowest = since_ms + AUDIT_TTL_S * 1000
    found = await asyncio.gather(
        *[
            store.call(
                "ZRANGE", keys.profile_refs(p), "+inf", lowest, "BYSCORE", "REV", "WITHSCORES"
            )
            for p in prefixes
        ]
    )
    scored: dict[str, float] = {}
    for reply in found:
        for ref, score in _pairs(reply or []):
            found_keys = refs.parse([str(ref)])[0]
            match = _AUDIT_KEY.match(found_keys[0]) if found_keys else None
            if match is not None:
                scored[match[1]] = max(scored.get(match[1], 0.0), float(score))
    return sorted(scored, key=lambda d: (scored[d], d), reverse=True)


def _pairs(reply: list[Any]) -> list[tuple[Any, Any]]:
    """WITHSCORES as (member, score) pairs, flat (RESP2) or paired (RESP3)."""
    if reply and isinstance(reply[0], list | tuple):
        return [(m, s) for m, s in reply]
    return list(zip(reply[::2], reply[1::2], strict=True))
