"""Proof of value: treated and holdout cohorts per rule and day, and their conversions.

A rule's holdout (`holdout_pct`) keeps a stable share of customers out of its contacts
and offers; their decisions are still recorded (`holdout: true`), so a conversion can
be attributed to either group. Cohorts are counted by the day the decision was made,
as HyperLogLogs of decision ids: idempotent (a decision counted twice counts once,
whichever worker writes it), 12 KB at most per rule, day and group, and no id can be
read back. Each decision also joins the cohorts of its report dimensions (campaign,
segment, branch, value band: `dims`), across rules, for the reports by dimension
(engine/delivery/reports.py). The report's uplift is the difference of conversion
rates with a 95% normal-approximation interval; HyperLogLog's ~0.8% count error is
far inside it.

Cost: a counter is one command in steady state. Each worker remembers (`Store.written`, a
bounded LRU kept with its `Store`) the keys whose TTL it has set and the values it
knows are listed in the day's set, or pooled as "(other)" past the cap; what it
remembers it does not write again. A value new to this worker that day costs a SADD,
a SCARD and the EXPIREs, in the same pipeline; a value over the cap, one more round
trip, once per worker and day.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from engine.valkey import keys
from engine.valkey.store import Store
from engine.valkey.written import Seen

__all__ = [
    "MAX_DAYS",
    "Cohort",
    "Uplift",
    "clean",
    "cohort",
    "count_conversion",
    "count_decision",
    "day_of",
    "days",
    "expire_once",
    "interval",
    "report",
    "seen_of",
]

DAY_MS = 86_400_000
MAX_DAYS = 366  # one report covers at most a year of daily cohorts
MAX_DIM_VALUES = 200  # values of one dimension kind a day keeps; more count as OTHER
OTHER = "(other)"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.()-]")


def seen_of(store: Store) -> Seen:
    """This worker's memory of what it already wrote to the day's report keys: the
    store's own (`Store.written`), since the counters are called from delivery, claims
    and outcomes, which all hold the Store and nothing else in common."""
    return store.written


def expire_once(store: Store, seen: Seen, key: str, ttl_s: int) -> list[asyncio.Future[Any]]:
    """EXPIRE `key`, issued now, unless this worker already did since it was created;
    remembered once Valkey says the TTL is set (a key not there yet is tried again)."""
    if seen.get(("ttl", key)) is not None:
        return []
    fut = store.call("EXPIRE", key, ttl_s, writes=True)

    def done(f: asyncio.Future[Any]) -> None:
        if not f.cancelled() and f.exception() is None and f.result() == 1:
            seen.put(("ttl", key), True)

    fut.add_done_callback(done)
    return [fut]


def clean(value: str) -> str:
    """A dimension value as counted: safe in a key's hash tag and a field name (no
    braces, no `|`), at most 64 characters.

    >>> clean("spring mortgage{x}|y"), clean(""), len(clean("a" * 100))
    ('spring_mortgage_x__y', '', 64)
    """
    return _UNSAFE.sub("_", value)[:64]


def day_of(ms: int) -> str:
    """The UTC day a decision belongs to.

    >>> day_of(0), day_of(86_400_000 - 1), day_of(86_400_000)
    ('1970-01-01', '1970-01-01', '1970-01-02')
    """
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).date().isoformat()


def _add(store: Store, seen: Seen, key: str, decision_id: str) -> list[asyncio.Future[Any]]:
    """PFADD (+ EXPIRE the first time), issued now: they join the caller's pipeline."""
    return [
        store.call("PFADD", key, decision_id, writes=True),
        *expire_once(store, seen, key, keys.UPLIFT_TTL_S),
    ]


async def _count(
    store: Store,
    seen: Seen,
    key: str,
    day: str,
    group: str,
    decision_id: str,
    dims: Sequence[tuple[str, str]],
) -> None:
    """The decision joins its rule's cohort and each dimension value's cohort of its
    day; a value this worker does not know yet also joins the day's set of values of
    its kind (what the report reads), with SCARD beside it for the cap."""
    writes = _add(store, seen, key, decision_id)
    listing: list[tuple[str, str, str, asyncio.Future[Any], asyncio.Future[Any]]] = []
    done: set[tuple[str, str]] = set()
    for kind, raw in dims:
        value = clean(raw)
        if not value or (kind, value) in done:
            continue
        done.add((kind, value))
        values = keys.uplift_dim_values(day, kind)
        counted = seen.get((values, value))
        if counted is None:  # new to this worker today: listed, and checked after
            listed = store.call("SADD", values, value, writes=True)
            size = store.call("SCARD", values)
            writes += expire_once(store, seen, values, keys.UPLIFT_TTL_S)
            listing.append((kind, value, values, listed, size))
            counted = value
        writes += _add(store, seen, keys.uplift_dim_counts(kind, counted, day, group), decision_id)
    await asyncio.gather(*writes, *(f for *_, listed, size in listing for f in (listed, size)))
    over = []
    for kind, value, values, listed, size in listing:
        # New to the set (its first decision that day, anywhere) and past the cap:
        # campaign names come from URLs, so they must not grow the key space unbounded.
        if int(listed.result()) == 1 and value != OTHER and int(size.result()) > MAX_DIM_VALUES:
            over.append((kind, value))
        else:  # listed, by this decision or by another worker's before
            seen.put((values, value), value)
    if over:  # rare: once per worker, value and day
        await asyncio.gather(*(_cap(store, seen, day, group, decision_id, k, v) for k, v in over))


async def _cap(
    store: Store, seen: Seen, day: str, group: str, decision_id: str, kind: str, value: str
) -> None:
    """Move a value past the cap out of the day's set; its decision counts as OTHER,
    and so does every later one this worker sees of it that day."""
    values = keys.uplift_dim_values(day, kind)
    dropped = keys.uplift_dim_counts(kind, value, day, group)
    await asyncio.gather(
        store.call("SREM", values, value, writes=True),
        store.call("DEL", dropped, writes=True),
        store.call("SADD", values, OTHER, writes=True),
        *_add(store, seen, keys.uplift_dim_counts(kind, OTHER, day, group), decision_id),
    )
    seen.forget(("ttl", dropped))
    seen.put((values, value), OTHER)
    seen.put((values, OTHER), OTHER)


async def count_decision(
    store: Store,
    rule_id: str,
    decided_ms: int,
    holdout: bool,
    decision_id: str,
    dims: Sequence[tuple[str, str]] = (),
    seen: Seen | None = None,
) -> None:
    """A decision joins its rule's treated or holdout cohort of that day, and the
    cohort of each of its report dimensions (`plan.dims`: campaign, segment, ...).
    `seen`: what this worker already wrote (default: the Store's, `seen_of`)."""
    group = "h" if holdout else "t"
    day = day_of(decided_ms)
    key = keys.uplift_counts(rule_id, day, group)
    await _count(
        store, seen if seen is not None else seen_of(store), key, day, group, decision_id, dims
    )


async def count_conversion(
    store: Store,
    rule_id: str,
    decided_ms: int,
    holdout: bool,
    decision_id: str,
    dims: Sequence[tuple[str, str]] = (),
    seen: Seen | None = None,
) -> None:
    """A decision's customer converted: counted with the decision's own cohorts."""
    group = "hc" if holdout else "tc"
    day = day_of(decided_ms)
    key = keys.uplift_counts(rule_id, day, group)
    await _count(
        store, seen if seen is not None else seen_of(store), key, day, group, decision_id, dims
    )


class Cohort(msgspec.Struct, frozen=True):
    decisions: int
    conversions: int
    rate: float | None  # conversions / decisions; None when there are no decisions


class Uplift(msgspec.Struct, frozen=True):
    rule: str
    from_day: str
    to_day: str
    treated: Cohort
    holdout: Cohort
    uplift: float | None  # treated rate - holdout rate (absolute, 0.02 = 2 pp)
    ci95: tuple[float, float] | None  # normal approximation; None until both have data


def cohort(decisions: int, conversions: int) -> Cohort:
    conversions = min(conversions, decisions)  # HLL estimates may cross by one
    return Cohort(decisions, conversions, conversions / decisions if decisions else None)


def interval(t: Cohort, h: Cohort) -> tuple[float, float] | None:
    """95% interval of the difference of two proportions (Wald, unpooled).

    >>> lo, hi = interval(Cohort(1000, 150, 0.15), Cohort(1000, 100, 0.10))
    >>> round(lo, 4), round(hi, 4)
    (0.0211, 0.0789)
    """
    if t.rate is None or h.rate is None:
        return None
    se = math.sqrt(t.rate * (1 - t.rate) / t.decisions + h.rate * (1 - h.rate) / h.decisions)
    diff = t.rate - h.rate
    return (diff - 1.96 * se, diff + 1.96 * se)


def days(from_day: dt.date, to_day: dt.date) -> list[str]:
    n = (to_day - from_day).days + 1
    return [(from_day + dt.timedelta(days=i)).isoformat() for i in range(max(0, n))]


async def report(store: Store, rule_id: str, from_day: dt.date, to_day: dt.date) -> Uplift:
    """Treated vs holdout over the cohorts of `from_day`..`to_day` (inclusive)."""
    span = days(from_day, to_day)
    counts: dict[str, int] = {}
    for group in ("t", "h", "tc", "hc"):
        names: list[Any] = [keys.uplift_counts(rule_id, d, group) for d in span]
        counts[group] = int(await store.call("PFCOUNT", *names)) if names else 0
    treated, held = cohort(counts["t"], counts["tc"]), cohort(counts["h"], counts["hc"])
    uplift = None
    if treated.rate is not None and held.rate is not None:
        uplift = treated.rate - held.rate
    return Uplift(
        rule_id,
        from_day.isoformat(),
        to_day.isoformat(),
        treated,
        held,
        uplift,
        interval(treated, held),
    )
