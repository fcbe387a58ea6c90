"""Outcomes flow back: to the outcomes stream (what the learner learns from) and to the
customer's contact history (what the next agent and the rules see).

Every source of an outcome writes through `record_outcome`: an agent completing a
callback (engine/contact_center/claims.py), a bank system (`POST /v1/outcomes`), the
page (offer clicks, impressions left unclicked) and conversions the bank's systems see
(engine/learning/labels.py). One writer, so every outcome entry has the same fields and
is indexed for erasure the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from engine.core.vocabulary import Channel, Outcome
from engine.delivery.records import index_entry
from engine.delivery.reports import count_converted, dims_of
from engine.delivery.uplift import count_conversion
from engine.profile.contact_history import ANONYMOUS_HISTORY_TTL_S, HISTORY_MAX
from engine.valkey import keys, refs, streams
from engine.valkey.store import Store

__all__ = ["OUTCOMES_MAXLEN", "born_ms", "record_outcome"]

OUTCOMES_MAXLEN = 1_000_000  # and trimmed by age (refs.STREAM_KEEP_MS)
# Outcomes that count as a conversion of the decision's cohort (uplift reports).
_CONVERSIONS = (Outcome.CONVERTED, Outcome.APPLIED)


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

    `trigger` is a trigger or a decision's audit record (its `id`, `prefix`, `rule`,
    `channel`, and `created_ms` or `at_ms`). The agent's note goes to both, so the next
    agent reads it and erasure removes it with the customer: the outcome entry is
    recorded in the profile's index. Raises `refs.Erased` (having deleted what it
    wrote) when the customer was erased after the trigger or decision was made: an
    erasure running alongside cannot see this write, so the write checks the erasure
    marker itself (`rb_refs`, `rb_history`).
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
    rule = str(trigger.get("rule") or "")
    if outcome in _CONVERSIONS and rule:  # proof of value: the decision's cohort converted
        holdout = trigger.get("holdout") is True
        decision_id = str(trigger.get("id") or "")
        await asyncio.gather(
            count_conversion(store, rule, born, holdout, decision_id, dims=dims_of(trigger)),
            count_converted(store, trigger, born),  # the trigger's funnel, once
        )


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
