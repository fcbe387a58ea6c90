"""Claiming, completing and recording the outcome of a trigger: the agent's side.

Claiming is one server-side call on the trigger's own slot (`rb_claim`): exactly one
agent wins; the others get 409 with who took it, and every dashboard hears about it
at once because the claim is published on the trigger's shard stream, which every
worker's gateway follows (engine/contact_center/gateway.py). Outcomes go to the
outcomes stream (for the learner) and to the customer's contact history (for the
next agent and the rules), through engine/delivery/outcomes.py. Claims and completions
count in the funnel of the trigger's day (engine/delivery/reports.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from engine.core.errors import Conflict, Forbidden, Gone, NotFound
from engine.core.metrics import Metrics
from engine.core.vocabulary import EntryKind, is_phone_work
from engine.delivery.outcomes import OUTCOMES_MAXLEN, born_ms, record_outcome
from engine.delivery.queue import dequeue
from engine.delivery.records import publish_event, read_audit
from engine.delivery.reports import count_claimed, count_completed
from engine.valkey import keys, refs
from engine.valkey.store import Store

__all__ = [
    "OUTCOMES_MAXLEN",
    "born_ms",
    "claim",
    "complete",
    "outcome_for_decision",
    "record_outcome",
]


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
    trigger: dict[str, Any] = {}
    with contextlib.suppress(ValueError, TypeError, orjson.JSONDecodeError):
        loaded = orjson.loads(created) if created is not None else None
        trigger = loaded if isinstance(loaded, dict) else {}
    # The funnel of the trigger's day (reports), with the SLA bucket of this claim:
    # issued now, in the same pipeline as the shard's read.
    counted = count_claimed(store, trigger, now_ms)
    shard = int(await store.call("HGET", keys.trigger_record(trigger_id), "shard") or 0)
    await asyncio.gather(dequeue(store, trigger_id), counted)
    with contextlib.suppress(ValueError, TypeError):
        created_ms = int(trigger.get("created_ms") or 0)
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
    counted = count_completed(store, trigger, outcome, now_ms)  # the funnel, as claim
    event = {
        "kind": EntryKind.COMPLETED,
        "trigger_id": trigger_id,
        "by": agent,
        "outcome": outcome,
        "at_ms": now_ms,
    }
    await asyncio.gather(publish_event(store, shard, event), counted)


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
