"""Claiming, completing and recording the outcome of a trigger: the agent's side.

Claiming is one server-side call on the trigger's own slot (`rb_claim`): exactly one
agent wins; the others get 409 with who took it, and every dashboard hears about it
at once because the claim is published on the trigger's shard stream, which every
worker's gateway follows (engine/contact_center/gateway.py). Outcomes go to the
outcomes stream (for the learner) and to the customer's contact history (for the
next agent and the rules).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from engine.core.errors import Conflict, Forbidden, Gone, NotFound
from engine.core.metrics import Metrics
from engine.core.vocabulary import Channel, EntryKind, is_phone_work
from engine.delivery.queue import dequeue
from engine.delivery.records import index_entry, publish_event, read_audit
from engine.profile.contact_history import ANONYMOUS_HISTORY_TTL_S, HISTORY_MAX
from engine.valkey import keys, refs, streams
from engine.valkey.store import Store

__all__ = [
    "OUTCOMES_MAXLEN",
    "born_ms",
    "claim",
    "complete",
    "outcome_for_decision",
    "record_outcome",
]

OUTCOMES_MAXLEN = 1_000_000  # and trimmed by age (refs.STREAM_KEEP_MS)


async def claim(
    store: Store, trigger_id: str, agent: str, now_ms: int, metrics: Metrics | None = None
) -> None:
    """`agent` takes the callback, or this raises: 404 unknown, 410 expired, 409 taken
    or not phone work. Only phone work is claimable: an e-mail/SMS notification (a
    do-not-call customer's "call me") must never reach an agent's phone."""
    created = await store.call("HGET", keys.trigger_record(trigger_id), "data")
    if created is not None and not is_phone_work(orjson.loads(created)):
        raise Conflict("not_claimable", "this is an e-mail/SMS notification, not a callback")
    res = await store.fcall("rb_claim", [keys.trigger_record(trigger_id)], [agent, now_ms])
    if res[0] == "unknown":
        raise NotFound("not_found", "no such trigger")
    if res[0] == "expired":
        raise Gone("expired", "this callback has expired and was withdrawn")
    if res[0] == "taken":
        raise Conflict("already_claimed", f"already claimed by {res[1]}")
    shard = int(await store.call("HGET", keys.trigger_record(trigger_id), "shard") or 0)
    await dequeue(store, trigger_id)
    with contextlib.suppress(ValueError, TypeError, AttributeError, orjson.JSONDecodeError):
        created_ms = int(orjson.loads(created).get("created_ms") or 0)
        if created_ms and metrics is not None:
            metrics.trigger_to_claim_seconds.observe(max(0.0, (now_ms - created_ms) / 1000))
    await publish_event(
        store,
        shard,
        {"kind": EntryKind.CLAIMED, "trigger_id": trigger_id, "by": agent, "at_ms": now_ms},
    )


async def complete(
    store: Store,
    trigger_id: str,
    agent: str,
    outcome: str,
    now_ms: int,
    *,
    value: float | None = None,
    note: str | None = None,
    override: bool = False,
) -> None:
    """The claiming agent (or, with `override`, a supervisor) records how the call went:
    404 unknown or erased meanwhile, 409 not claimed or already done, 403 another's."""
    res = await store.fcall(
        "rb_complete",
        [keys.trigger_record(trigger_id)],
        [agent, outcome, now_ms, "1" if override else "0"],
    )
    if res[0] == "unknown":
        raise NotFound("not_found", "no such trigger")
    if res[0] == "not_claimed":
        raise Conflict("not_claimed", "claim the callback before completing it")
    if res[0] == "not_yours":
        raise Forbidden("not_yours", f"claimed by {res[1]}")
    if res[0] == "done":
        raise Conflict("already_completed", f"already completed: {res[1]}")
    trigger = orjson.loads(res[1])
    shard_s, prefix = await store.call("HMGET", keys.trigger_record(trigger_id), "shard", "prefix")
    prefix = prefix or str(trigger.get("prefix") or "")  # the record knows whose it is
    trigger["prefix"] = prefix
    shard = int(shard_s) if shard_s is not None else keys.trigger_shard(prefix or trigger_id)
    try:
        if shard_s is None:  # the record went right after rb_complete: erased
            raise refs.Erased(trigger_id)
        await record_outcome(store, trigger, outcome, value, agent, now_ms, note=note)
    except refs.Erased:
        # The customer was erased while this completion ran: nothing of it is kept, the
        # dashboards drop the callback, and the agent hears it no longer exists.
        await publish_event(
            store,
            shard,
            {"kind": EntryKind.WITHDRAWN, "trigger_id": trigger_id, "reason": "erased"},
        )
        raise NotFound("not_found", "no such trigger") from None
    await publish_event(
        store,
        shard,
        {
            "kind": EntryKind.COMPLETED,
            "trigger_id": trigger_id,
            "by": agent,
            "outcome": outcome,
            "at_ms": now_ms,
        },
    )


async def outcome_for_decision(
    store: Store, decision_id: str, outcome: str, value: float | None, by: str, now_ms: int
) -> None:
    """An outcome the bank's systems report for a decision (an offer clicked, a loan
    applied for); 404 when the decision is unknown, expired or its customer erased."""
    unknown = NotFound(
        "unknown_decision", "no decision with this id (or older than 30 days)", "$.decision_id"
    )
    audit = await read_audit(store, decision_id)
    if audit is None:
        raise unknown
    try:
        await record_outcome(store, audit, outcome, value, by, now_ms)
    except refs.Erased:  # erased while this ran: as if the decision never existed
        raise unknown from None


def born_ms(record: dict[str, Any]) -> int:
    """When a trigger (`created_ms`) or decision (`at_ms`) was made: what the erasure
    marker is compared with. 0 when unknown, so an erasure always wins.

    >>> born_ms({"created_ms": 5}), born_ms({"at_ms": "7"}), born_ms({})
    (5, 7, 0)
    """
    for name in ("created_ms", "at_ms"):
        value = record.get(name)
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return int(value)
    return 0


async def record_outcome(
    store: Store,
    trigger: dict[str, Any],
    outcome: str,
    value: float | None,
    by: str,
    now_ms: int,
    *,
    note: str | None = None,
) -> None:
    """Outcomes stream (learning) + the customer's contact history (context).

    The agent's note goes to both, so the next agent reads it and erasure removes it
    with the customer: the outcome entry is recorded in the profile's index. Raises
    `refs.Erased` (having deleted what it wrote) when the customer was erased after
    the trigger or decision was made: an erasure running alongside cannot see this
    write, so the write checks the erasure marker itself (`rb_refs`, `rb_history`).
    """
    prefix = str(trigger.get("prefix") or "")
    born = born_ms(trigger)
    entry: dict[str, Any] = {
        "kind": "outcome",
        "decision_id": trigger.get("id", ""),
        "rule": trigger.get("rule", ""),
        "channel": trigger.get("channel", Channel.CALLBACK),
        "outcome": outcome,
        "by": by,
        "ts": now_ms,
    }
    if value is not None:
        entry["value"] = value
    if note:
        entry["note"] = note
    stream = keys.outcome_stream(keys.trigger_shard(prefix or str(trigger.get("id"))))
    add = store.call(
        "XADD",
        stream,
        "MAXLEN",
        "~",
        OUTCOMES_MAXLEN,
        "*",
        *streams.encode_fields(entry),
        writes=True,
    )
    entry_id, _ = await asyncio.gather(add, refs.stream_trim(store, stream, now_ms))
    if prefix:
        indexed, kept = await asyncio.gather(
            index_entry(store, prefix, stream, str(entry_id), born),
            _append_history(store, prefix, entry, born),
        )
        if not (indexed and kept):
            await store.call("XDEL", stream, entry_id, writes=True)
            raise refs.Erased(prefix)


async def _append_history(store: Store, prefix: str, entry: dict[str, Any], born: int) -> bool:
    """`policy.append_history`, refused (False, nothing written) when the profile was
    erased at or after `born`: the function also gets the erasure marker (KEYS[8])."""
    arg = {"entry": entry, "max": HISTORY_MAX, "born": born}
    fn_keys = [*keys.profile_keys(prefix), keys.profile_erased(prefix)]
    if await store.fcall("rb_history", fn_keys, [orjson.dumps(arg)]) == "erased":
        return False
    if keys.is_anonymous(prefix):  # as policy.append_history: it goes with the profile
        hist = keys.profile_keys(prefix)[4]
        await store.call("EXPIRE", hist, ANONYMOUS_HISTORY_TTL_S, writes=True)
    return True
