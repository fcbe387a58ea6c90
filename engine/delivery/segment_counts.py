"""Real-time segments, delivered: membership written to the profile, sizes counted per day.

Deciding says which segments a visitor is in and which it entered or left
(`Plan.segments`, `Plan.entered`, `Plan.exited`; engine/decisions/segments.py). For a
batch of events, this module turns that into writes that ride in the same pipeline as
the batch's other deliveries (the executor gathers them in one loop tick):

- membership, through `engine.profile.segments_store.apply_segment_changes`, only when
  it changed: a visitor who stays in a segment costs no write;
- per segment and UTC day, the active members (distinct visitors with a batch in it;
  a HyperLogLog, ~0.8 % error, 12 KB at most) and the entries and exits (a hash), kept
  a year like the uplift cohorts
  (`keys.SEGMENT_COUNTS_TTL_S`). A HyperLogLog cannot be read back, but with a copy of
  it anyone could test "was customer X in it that day" (add the id, see whether it
  changed) long after X was erased; so it counts a keyed hash of the profile, keyed by
  the deployment's secret (the page-offer key) and salted with the day: counting still
  works across workers, testing needs the config's secrets;
- Prometheus `ringback_segment_entries_total{segment}` / `..._exits_total{segment}`,
  counted once the writes landed, so /metrics agrees with the daily counts (on one
  worker; summed across workers by the multiprocess collector).

A browsing visitor would add itself to the same HyperLogLog on every batch; a small
LRU per worker (like the executor's audited offers) remembers which (segment, day,
profile) it already added, so that costs one PFADD per segment, day and worker.
Entries and exits are counted for the segments the rule set declares (bounded labels);
leaving a segment the rules no longer declare is written to the profile, not counted.
Two batches of one visitor decided at once on two workers can both see an entry (the
profile keeps one, with the older time): rare, and it counts one entry twice.

Page loads and screen-pops read segments (rules see them) but write nothing: what the
visitor does moves membership, not who looks at the profile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Iterable
from typing import Any

from engine.core.metrics import Metrics
from engine.decisions.plan import Plan
from engine.delivery.uplift import MAX_DAYS, day_of, days
from engine.profile.segments_store import apply_segment_changes
from engine.valkey import keys
from engine.valkey.store import Store

__all__ = ["SEEN_MAX", "SegmentCounter", "segment_sizes"]

SEEN_MAX = 50_000  # (segment, day, profile) triples a worker remembers having counted


class SegmentCounter:
    """One worker's segment delivery: `deliveries(plan)` for each batch of events."""

    def __init__(
        self, store: Store, metrics: Metrics, key: bytes, seen_max: int = SEEN_MAX
    ) -> None:
        self.store = store
        self._key = hashlib.blake2b(key, digest_size=32, person=b"rb-segment-hll").digest()
        self.metrics = metrics
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_max = seen_max
        self._entries: dict[str, Any] = {}  # .labels() costs ~1 µs: bound once per segment
        self._exits: dict[str, Any] = {}

    def deliveries(self, plan: Plan) -> list[Awaitable[Any]]:
        """What to write for this batch's plan (nothing, most batches): to be gathered
        with the batch's other deliveries, so they share a pipeline."""
        out: list[Awaitable[Any]] = []
        now = plan.now_ms
        if plan.entered or plan.exited:
            out.append(
                apply_segment_changes(
                    self.store,
                    plan.prefix,
                    dict.fromkeys(plan.entered, now),
                    dict.fromkeys(plan.exited, now),
                )
            )
        if plan.segments or plan.entered or plan.exited:
            day = day_of(now)
            new: list[str] = []  # (segment, day, profile) not yet counted by this worker
            for s in plan.segments:
                seen = f"{s}\0{day}\0{plan.prefix}"
                if seen in self._seen:
                    self._seen.move_to_end(seen)
                else:
                    new.append(seen)
            declared = plan.rule_set.segments.ids
            entered = [s for s in plan.entered if s in declared]
            exited = [s for s in plan.exited if s in declared]
            if new or entered or exited:
                out.append(self._count(day, plan.prefix, new, entered, exited))
        return out

    async def _count(
        self, day: str, prefix: str, new: list[str], entered: list[str], exited: list[str]
    ) -> None:
        """Queue every write now (this tick's pipeline), then count what landed."""
        call, ttl = self.store.call, keys.SEGMENT_COUNTS_TTL_S
        writes: list[asyncio.Future[Any]] = []
        for seen in new:
            key = keys.segment_members(seen.partition("\0")[0], day)
            writes += [
                call("PFADD", key, self.member(day, prefix), writes=True),
                call("EXPIRE", key, ttl, writes=True),
            ]
        for field, ids in (("entered", entered), ("exited", exited)):
            for s in ids:
                key = keys.segment_flow(s, day)
                writes += [
                    call("HINCRBY", key, field, 1, writes=True),
                    call("EXPIRE", key, ttl, writes=True),
                ]
        await asyncio.gather(*writes)
        for seen in new:  # remembered once written, not before
            self._seen[seen] = None
            if len(self._seen) > self._seen_max:
                self._seen.popitem(last=False)
        for s in entered:
            self._counter(self._entries, self.metrics.segment_entries, s).inc()
        for s in exited:
            self._counter(self._exits, self.metrics.segment_exits, s).inc()

    def member(self, day: str, prefix: str) -> str:
        """What the day's HyperLogLog counts for a profile: its keyed, day-salted hash."""
        h = hashlib.blake2b(prefix.encode(), key=self._key, digest_size=12, salt=day.encode()[:16])
        return h.hexdigest()

    @staticmethod
    def _counter(bound: dict[str, Any], metric: Any, segment: str) -> Any:
        child = bound.get(segment)
        if child is None:
            child = bound[segment] = metric.labels(segment)
        return child


async def segment_sizes(
    store: Store, segment_ids: Iterable[str], from_day: dt.date, to_day: dt.date
) -> dict[str, list[dict[str, Any]]]:
    """Per segment, one row per UTC day from `from_day` to `to_day` (inclusive, at most
    `MAX_DAYS`): `{"day", "members", "entered", "exited"}`, where `members` is the
    distinct profiles seen in the segment that day (entering it, or in it while active),
    `entered` / `exited` how many entered or left it. Days with nothing are zeros.
    Every read is queued in one loop tick: one pipeline whatever the range."""
    span = days(from_day, to_day)
    if len(span) > MAX_DAYS:
        raise ValueError(f"a report covers at most {MAX_DAYS} days, not {len(span)}")
    ids = list(dict.fromkeys(segment_ids))
    reads: list[asyncio.Future[Any]] = []
    for s in ids:
        for day in span:
            reads.append(store.call("PFCOUNT", keys.segment_members(s, day)))
            reads.append(store.call("HMGET", keys.segment_flow(s, day), "entered", "exited"))
    got = iter(await asyncio.gather(*reads))
    out: dict[str, list[dict[str, Any]]] = {}
    for s in ids:
        rows = out[s] = []
        for day in span:
            members, (entered, exited) = next(got), next(got)
            rows.append(
                {
                    "day": day,
                    "members": int(members or 0),
                    "entered": int(entered or 0),
                    "exited": int(exited or 0),
                }
            )
    return out
