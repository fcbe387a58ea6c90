"""Reports a marketing team reads: every trigger's funnel, and uplift by dimension.

The funnel of a trigger (fired -> claimed -> completed -> connected -> converted) is
counted by the UTC day it FIRED, whenever each stage happens, so a trigger's stages
all land in its own cohort day and a day's rates never exceed one. One hash per day
and kind (`keys.report_funnel`): by rule, and by each report dimension of the trigger
(campaign, segment, branch, value band; `dims_of`), field `<name>|<stage>`, HINCRBY.
The writes are issued synchronously by the caller beside the trigger's own writes
(engine/delivery/records.py, engine/contact_center/claims.py), so they ride in the
same pipeline. In steady state that is one `rb_funnel` call, every counter's HINCRBY
in it: each worker remembers (`Store.written`, engine/valkey/written.py) the hashes
whose TTL it set that day and the names it knows are counted under their own name or
pooled as "(other)".

SLA: phone work (a callback, `is_phone_work`) also counts as `due` when it fires; an
e-mail/SMS notification does not, as no agent may take it. A claim's delay is measured
from when the callback was due (its `scheduled_for` opening when it was decided outside
hours, else its creation) and counted in ONE bucket per claim, `claim_le<T>`, the
smallest of `SLA_THRESHOLDS_S` it fits in (none past the largest). "Claimed within N s"
for any N of the thresholds is the sum of the buckets up to N, so a report answers any
of them without a second counter. SLA attainment is claimed within the SLA / due: a
callback that expired unclaimed is a miss.

Bounded: rule ids come from the rule set; dimension values are cleaned to
`[A-Za-z0-9_.()-]`, at most 64 characters, and a day's hash of one kind takes at most
`MAX_VALUES` names; past that a new name counts as "(other)". Campaign names come from
page URLs, so anyone could otherwise mint fields. The check costs a round trip only
when a name is new to the day (its first trigger, anywhere), and a name past the cap
one more per worker that sees it; after that the worker counts it as "(other)" at once.

Conversions of a trigger's decision count once (`keys.decision_converted`, SET NX),
whoever reports them (the agent's "converted", then the bank's sale). Uplift by
dimension (engine/delivery/uplift.py) keeps its own HyperLogLog cohorts; the values
a day has are kept in a capped set per kind (`keys.uplift_dim_values`), read here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import msgspec

from engine.core.vocabulary import Action, Outcome, TriggerKind, is_phone_work
from engine.decisions.plan import dims as plan_dims
from engine.delivery.uplift import (
    MAX_DIM_VALUES,
    OTHER,
    Cohort,
    clean,
    cohort,
    day_of,
    days,
    expire_once,
    interval,
    seen_of,
)
from engine.valkey import keys
from engine.valkey.store import Store
from engine.valkey.written import Seen

__all__ = [
    "DEFAULT_SLA_S",
    "DIM_KINDS",
    "MAX_ROWS",
    "MAX_VALUES",
    "OTHER",
    "SLA_THRESHOLDS_S",
    "ConversionsReport",
    "ConversionsRow",
    "FunnelReport",
    "FunnelReportRow",
    "clean",
    "conversions",
    "count_claimed",
    "count_completed",
    "count_converted",
    "count_fired",
    "dims_of",
    "due_ms",
    "funnel",
    "is_trigger_record",
]

SLA_THRESHOLDS_S: tuple[int, ...] = (15, 30, 60, 120, 300, 600, 1800)  # as the claim histogram
DEFAULT_SLA_S = 60
DIM_KINDS: tuple[str, ...] = ("campaign", "segment", "branch", "value")
MAX_VALUES = MAX_DIM_VALUES  # names a day's hash of one kind takes; more are OTHER
MAX_ROWS = 500  # values a conversions report counts (4 multi-day PFCOUNTs each)
# Outcomes of a completed call in which the agent reached the customer.
REACHED = frozenset({Outcome.CONNECTED, Outcome.CONVERTED, Outcome.NOT_INTERESTED})
CONVERSIONS = frozenset({Outcome.CONVERTED, Outcome.APPLIED})

Dims = Sequence[tuple[str, str]]
_TRIGGER_KINDS = (TriggerKind.CALLBACK, TriggerKind.NOTIFY)
_CONTACT_ACTIONS = (Action.CALLBACK, Action.NOTIFY)
_NAMES = "|names"  # a capped hash's count of its names (no name: the reader skips it)


_DIM_FIELDS = ("attribution", "segments", "branch", "customer_value")


def dims_of(record: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The report dimensions of a trigger or audit record, as the decision's
    `Plan.dims` (engine/decisions/plan.py `dims`), rebuilt from what both records carry
    (attribution, segments, branch, customer_value): storing the dimensions as well
    would cost every audit record ~50 bytes for what these four already say. A record
    written before these fields existed has none. With declared campaigns the decision's
    attribution carries its `reported_campaign` (its declared id or "(other)"), so a
    conversion counts under the name its decision did without seeing the rule set.

    >>> dims_of({"attribution": {"campaign": "Spring"}, "segments": ["a"],
    ...          "branch": "b12", "customer_value": 80.0})
    (('campaign', 'spring'), ('segment', 'a'), ('branch', 'b12'), ('value', 'high'))
    >>> dims_of({"attribution": {"campaign": "x1", "reported_campaign": "(other)"}})[0]
    ('campaign', '(other)')
    >>> dims_of({"rule": "r"})
    ()
    """
    if not any(name in record for name in _DIM_FIELDS):
        return ()
    attribution = record.get("attribution")
    segments = record.get("segments")
    branch = record.get("branch")
    value = record.get("customer_value")
    return plan_dims(
        {str(k): str(v) for k, v in attribution.items()} if isinstance(attribution, dict) else {},
        frozenset(s for s in segments if isinstance(s, str))
        if isinstance(segments, list)
        else frozenset(),
        branch if isinstance(branch, str) else "",
        float(value) if isinstance(value, int | float) else 0.0,
    )


def is_trigger_record(record: Mapping[str, Any]) -> bool:
    """A trigger, or the audit record of the decision a trigger was made from (not a
    page offer's, not a holdout member's, not a suppressed contact's): what the funnel
    counts conversions of."""
    if record.get("holdout") is True or record.get("suppressed"):
        return False
    kind, action = record.get("kind"), record.get("action")
    return kind in _TRIGGER_KINDS or action in _CONTACT_ACTIONS


# -- counting --------------------------------------------------------------------------


def _names(rule: str, dims: Dims) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {"rule": [rule]}
    for kind, value in dims:
        if kind in DIM_KINDS and (v := clean(value)) and v not in names.get(kind, ()):
            names.setdefault(kind, []).append(v)
    return names


_Pending = tuple[str, str, list[tuple[str, int]]]  # key, name, (stage, index in the reply)


def _count(
    store: Store, seen: Seen | None, day: str, rule: str, dims: Dims, stages: Sequence[str]
) -> Awaitable[None]:
    """Issue the increments NOW (so they join the caller's pipeline) and return what
    settles them: a name this worker does not know yet for the day is counted under
    itself, then checked, and moved to "(other)" when the hash is full or its
    trigger's fire was counted there; a name it knows goes where it went before.
    A day's hashes share a slot, so every increment goes in one `rb_funnel` call
    (ten HINCRBYs for a callback with its four dimensions, in one command)."""
    seen = seen if seen is not None else seen_of(store)
    # What a name's check says holds for the stages checked alike: the fire (a cap
    # decision) or a later stage (which follows where the fire was counted).
    phase = "fired" if "fired" in stages else "later"
    pending: list[_Pending] = []
    writes: list[Awaitable[Any]] = []
    hashes: list[str] = []
    args: list[Any] = []
    at = 0  # each increment's index in rb_funnel's flat reply
    for kind, names in _names(rule, dims).items():
        key = keys.report_funnel(day, kind)
        fields: list[str] = []
        for name in names:
            known = name if kind == "rule" or name == OTHER else seen.get((key, name, phase))
            under = name if known is None else known
            fields += [f"{under}|{stage}" for stage in stages]
            if known is None:
                pending.append((key, name, [(s, at + i) for i, s in enumerate(stages)]))
            at += len(stages)
        hashes.append(key)
        args += [len(fields), *fields]
    counts = store.fcall_now("rb_funnel", hashes, args)
    for key in hashes:  # after the increments: EXPIRE on a hash not there yet is a no-op
        writes += expire_once(store, seen, key, keys.REPORT_TTL_S)
    return _settle(store, seen, pending, counts, writes)


async def _settle(
    store: Store,
    seen: Seen,
    pending: list[_Pending],
    counts: Awaitable[Any],
    writes: list[Awaitable[Any]],
) -> None:
    reply, *_ = await asyncio.gather(counts, *writes)
    checks = []
    for key, name, at in pending:
        by_stage = {stage: int(reply[i]) for stage, i in at}
        # A name whose fire was counted under it before is kept (whatever its other
        # stages say); a later stage counted under it before, likewise.
        fired = by_stage.get("fired")
        new = fired <= 1 if fired is not None else any(n <= 1 for n in by_stage.values())
        if new:  # rare: the first of a name (or a stage of it) this day, anywhere
            checks.append(_check_new(store, seen, key, name, list(by_stage)))
        else:
            _remember(seen, key, name, fired is not None, name)
    if checks:
        await asyncio.gather(*checks)


def _remember(seen: Seen, key: str, name: str, fired: bool, under: str) -> None:
    """Where `name` counts in hash `key` from now on; a fire's check holds for the
    later stages too (they follow the fire), not the other way round."""
    seen.put((key, name, "later"), under)
    if fired:
        seen.put((key, name, "fired"), under)


async def _check_new(store: Store, seen: Seen, key: str, name: str, stages: list[str]) -> None:
    if "fired" in stages:  # a new name: counted in the hash's own `|names` field
        keep = int(await store.call("HINCRBY", key, _NAMES, 1, writes=True)) <= MAX_VALUES
        if not keep:
            await store.call("HINCRBY", key, _NAMES, -1, writes=True)
    else:  # a later stage of a trigger whose fire was counted under its own name
        keep = bool(await store.call("HEXISTS", key, f"{name}|fired"))
    if keep:
        _remember(seen, key, name, "fired" in stages, name)
        return
    lefts = await asyncio.gather(
        *(store.call("HINCRBY", key, f"{name}|{stage}", -1, writes=True) for stage in stages),
        *(store.call("HINCRBY", key, f"{OTHER}|{stage}", 1, writes=True) for stage in stages),
    )
    emptied = [f"{name}|{s}" for s, n in zip(stages, lefts, strict=False) if int(n) <= 0]
    if emptied:
        await store.call("HDEL", key, *emptied, writes=True)
    _remember(seen, key, name, "fired" in stages, OTHER)


def _claim_bucket(delay_ms: int) -> str | None:
    """
    >>> _claim_bucket(0), _claim_bucket(60_000), _claim_bucket(60_001), _claim_bucket(10**9)
    ('claim_le15', 'claim_le60', 'claim_le120', None)
    """
    for t in SLA_THRESHOLDS_S:
        if delay_ms <= t * 1000:
            return f"claim_le{t}"
    return None


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def due_ms(trigger: Mapping[str, Any]) -> int:
    """When a callback was due: its scheduled opening, else its creation.

    >>> due_ms({"created_ms": 5, "scheduled_for": ""})
    5
    >>> due_ms({"created_ms": 5, "scheduled_for": 9})
    9
    """
    created = _int(trigger.get("created_ms"))
    scheduled = trigger.get("scheduled_for")
    return max(created, scheduled) if isinstance(scheduled, int) else created


def count_fired(
    store: Store, trigger: Mapping[str, Any], now_ms: int, seen: Seen | None = None
) -> Awaitable[None]:
    """A trigger fired: counted for its day, rule and dimensions (issued now); phone
    work also as `due`, what the SLA is measured against. `seen`: what this worker
    already wrote (default: the Store's, engine/delivery/uplift.py `seen_of`)."""
    rule = str(trigger.get("rule") or "")
    if not rule:
        return _nothing()
    day = day_of(_int(trigger.get("created_ms")) or now_ms)
    stages = ("fired", "due") if is_phone_work(trigger) else ("fired",)
    return _count(store, seen, day, rule, dims_of(trigger), stages)


def count_claimed(
    store: Store, trigger: Mapping[str, Any], claimed_ms: int, seen: Seen | None = None
) -> Awaitable[None]:
    """A callback claimed: counted with its SLA bucket in the trigger's own cohort."""
    rule = str(trigger.get("rule") or "")
    if not rule:
        return _nothing()
    day = day_of(_int(trigger.get("created_ms")) or claimed_ms)
    bucket = _claim_bucket(max(0, claimed_ms - due_ms(trigger)))
    stages = ("claimed", bucket) if bucket else ("claimed",)
    return _count(store, seen, day, rule, dims_of(trigger), stages)


def count_completed(
    store: Store,
    trigger: Mapping[str, Any],
    outcome: str,
    now_ms: int,
    seen: Seen | None = None,
) -> Awaitable[None]:
    """A callback completed; `connected` when the agent reached the customer."""
    rule = str(trigger.get("rule") or "")
    if not rule:
        return _nothing()
    day = day_of(_int(trigger.get("created_ms")) or now_ms)
    stages = ("completed", "connected") if outcome in REACHED else ("completed",)
    return _count(store, seen, day, rule, dims_of(trigger), stages)


async def count_converted(
    store: Store, record: Mapping[str, Any], born_ms: int, seen: Seen | None = None
) -> None:
    """A trigger's decision converted: counted once per decision, in its cohort."""
    rule, decision_id = str(record.get("rule") or ""), str(record.get("id") or "")
    if not (rule and decision_id and is_trigger_record(record)):
        return
    first = await store.call(
        "SET", keys.decision_converted(decision_id), "1", "NX", "EX", keys.REPORT_TTL_S, writes=True
    )
    if first is not None:
        await _count(store, seen, day_of(born_ms), rule, dims_of(record), ("converted",))


async def _nothing() -> None:
    return None


# -- reading ---------------------------------------------------------------------------


class FunnelReportRow(msgspec.Struct, frozen=True):
    name: str  # the rule id, or the dimension's value
    fired: int  # every trigger: callbacks and e-mail/SMS notifications
    # Callbacks fired (phone work; at least those claimed): what agents should take.
    due: int
    claimed: int
    claimed_in_sla: int  # claimed within `sla_s` of being due
    # claimed_in_sla / due: a callback that expired unclaimed is a miss; None when no
    # callback was due.
    sla_attainment: float | None
    completed: int
    connected: int  # completed having reached the customer (connected, converted, not interested)
    converted: int  # the trigger's decision converted or applied (counted once)


class FunnelReport(msgspec.Struct, frozen=True):
    by: str  # rule, campaign, segment, branch or value
    from_day: str
    to_day: str
    sla_s: int
    rows: list[FunnelReportRow]  # most fired first
    total: FunnelReportRow  # every trigger once (summed over rules)
    omitted: int = 0  # rows past MAX_ROWS (the least fired), still in `total`


def _row(name: str, counts: Mapping[str, int], sla_s: int) -> FunnelReportRow:
    """
    >>> r = _row("r", {"fired": 5, "due": 4, "claimed": 2, "claim_le15": 1, "claim_le60": 1}, 30)
    >>> r.due, r.claimed_in_sla, r.sla_attainment
    (4, 1, 0.25)
    >>> _row("old", {"fired": 2, "claimed": 2, "claim_le15": 1}, 60).sla_attainment
    0.5
    """
    claimed = counts.get("claimed", 0)
    in_sla = sum(counts.get(f"claim_le{t}", 0) for t in SLA_THRESHOLDS_S if t <= sla_s)
    # Claimed callbacks were due, whenever `due` began to be counted.
    due = max(counts.get("due", 0), claimed)
    return FunnelReportRow(
        name,
        counts.get("fired", 0),
        due,
        claimed,
        in_sla,
        in_sla / due if due else None,
        counts.get("completed", 0),
        counts.get("connected", 0),
        counts.get("converted", 0),
    )


async def _funnel_counts(store: Store, kind: str, span: list[str]) -> dict[str, dict[str, int]]:
    replies = await asyncio.gather(
        *(store.call("HGETALL", keys.report_funnel(d, kind)) for d in span)
    )
    counts: dict[str, dict[str, int]] = {}
    for reply in replies:
        items = (
            reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
        )
        for field, n in items:
            name, _, stage = str(field).rpartition("|")
            if name:
                row = counts.setdefault(name, {})
                row[stage] = row.get(stage, 0) + _int(n)
    return counts


async def funnel(
    store: Store, by: str, from_day: dt.date, to_day: dt.date, sla_s: int = DEFAULT_SLA_S
) -> FunnelReport:
    """The funnel of the triggers fired `from_day`..`to_day` (inclusive), by rule or by
    a dimension; `total` counts every trigger once whatever `by` is."""
    span = days(from_day, to_day)
    by_rule, by_dim = await asyncio.gather(
        _funnel_counts(store, "rule", span),
        _funnel_counts(store, by, span) if by != "rule" else _same(),
    )
    counts = by_rule if by == "rule" else by_dim
    rows = sorted(
        (_row(name, c, sla_s) for name, c in counts.items()), key=lambda r: (-r.fired, r.name)
    )
    summed: dict[str, int] = {}
    for c in by_rule.values():
        for stage, n in c.items():
            summed[stage] = summed.get(stage, 0) + n
    total = _row("total", summed, sla_s)
    omitted = max(0, len(rows) - MAX_ROWS)
    span_from, span_to = from_day.isoformat(), to_day.isoformat()
    return FunnelReport(by, span_from, span_to, sla_s, rows[:MAX_ROWS], total, omitted)


async def _same() -> dict[str, dict[str, int]]:
    return {}


class ConversionsRow(msgspec.Struct, frozen=True):
    name: str  # the dimension's value
    treated: Cohort
    holdout: Cohort
    uplift: float | None  # treated rate - holdout rate
    ci95: tuple[float, float] | None


class ConversionsReport(msgspec.Struct, frozen=True):
    by: str  # campaign, segment, branch or value
    from_day: str
    to_day: str
    rows: list[ConversionsRow]  # most treated decisions first
    # Values left out: a long range can hold more than MAX_ROWS values (each day keeps
    # MAX_VALUES); the rows are those seen on the most days.
    omitted: int = 0


async def conversions(
    store: Store, by: str, from_day: dt.date, to_day: dt.date
) -> ConversionsReport:
    """Decisions (treated and holdout), their conversions and the uplift, per value of
    one dimension, over the decisions made `from_day`..`to_day` (every rule)."""
    span = days(from_day, to_day)
    members = await asyncio.gather(
        *(store.call("SMEMBERS", keys.uplift_dim_values(d, by)) for d in span)
    )
    seen: dict[str, int] = {}
    for m in members:
        for v in m or ():
            seen[str(v)] = seen.get(str(v), 0) + 1
    values = sorted(sorted(seen, key=lambda v: (-seen[v], v))[:MAX_ROWS])
    groups = ("t", "h", "tc", "hc")
    counts = await asyncio.gather(
        *(
            store.call("PFCOUNT", *[keys.uplift_dim_counts(by, v, d, g) for d in span])
            for v in values
            for g in groups
        )
    )
    rows: list[ConversionsRow] = []
    for i, v in enumerate(values):
        t, h, tc, hc = (int(n) for n in counts[i * 4 : i * 4 + 4])
        treated, held = cohort(t, tc), cohort(h, hc)
        uplift = (
            treated.rate - held.rate if treated.rate is not None and held.rate is not None else None
        )
        rows.append(ConversionsRow(v, treated, held, uplift, interval(treated, held)))
    rows.sort(key=lambda r: (-r.treated.decisions, r.name))
    omitted = len(seen) - len(values)
    return ConversionsReport(by, from_day.isoformat(), to_day.isoformat(), rows, omitted)
