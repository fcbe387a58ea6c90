"""`GET /v1/reports/...`: what the marketing team reads. Does a rule pay (uplift)? How
do its callbacks go (funnel)? Which campaigns, segments and branches convert
(conversions)? How large are the segments (segments)?

For supervisors (the dashboard's session) and bank systems (API token). Every report
covers UTC days, `from`..`to` inclusive (default: the last 30 days, at most a year),
of the day decisions were made or triggers fired (engine/delivery/uplift.py,
engine/delivery/reports.py): a later claim, call or sale counts with its trigger's
or decision's day. `format=csv` gives the same rows as CSV (RFC 4180, a header row,
an attachment), for a spreadsheet.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from aiohttp import web

from engine.core.errors import BadRequest, Forbidden
from engine.delivery.reports import (
    ConversionsReport,
    FunnelReport,
    FunnelReportRow,
    conversions,
    funnel,
)
from engine.delivery.segment_counts import segment_sizes
from engine.delivery.uplift import MAX_DAYS, day_of, report
from engine.http.agents import authenticate
from engine.http.errors import json_response
from engine.http.state import RULES, STORE
from engine.ingest.bodies import validation_error

__all__ = [
    "ConversionsQuery",
    "FunnelQuery",
    "SegmentDay",
    "SegmentSizes",
    "SegmentsQuery",
    "UpliftQuery",
    "handle_conversions",
    "handle_funnel",
    "handle_segments",
    "handle_uplift",
    "to_csv",
]

Day = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]
RuleId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
DEFAULT_DAYS = 30
Q = TypeVar("Q")
Format = Literal["json", "csv"]
# The SLA choices a report can answer: the claim delay is counted in these buckets.
SlaS = Literal[15, 30, 60, 120, 300, 600, 1800]
FunnelBy = Literal["rule", "campaign", "segment", "branch", "value"]
DimBy = Literal["campaign", "segment", "branch", "value"]


class UpliftQuery(msgspec.Struct, forbid_unknown_fields=True):
    rule: RuleId
    # UTC days, inclusive; default: the last 30 days up to today.
    from_: Day | None = msgspec.field(default=None, name="from")
    to: Day | None = None


class FunnelQuery(msgspec.Struct, forbid_unknown_fields=True):
    from_: Day | None = msgspec.field(default=None, name="from")
    to: Day | None = None
    sla_s: SlaS = 60  # claimed within this many seconds of being due
    by: FunnelBy = "rule"
    format: Format = "json"


class ConversionsQuery(msgspec.Struct, forbid_unknown_fields=True):
    by: DimBy = "campaign"
    from_: Day | None = msgspec.field(default=None, name="from")
    to: Day | None = None
    format: Format = "json"


class SegmentsQuery(msgspec.Struct, forbid_unknown_fields=True):
    from_: Day | None = msgspec.field(default=None, name="from")
    to: Day | None = None
    format: Format = "json"


class SegmentDay(msgspec.Struct, frozen=True):
    day: str
    members: int  # active members: distinct visitors with a batch in it that day
    entered: int
    exited: int


class SegmentSizes(msgspec.Struct, frozen=True):
    from_day: str
    to_day: str
    segments: dict[str, list[SegmentDay]]  # segment id -> one entry a day, oldest first


def _day(value: str | None, default: dt.date, where: str) -> dt.date:
    if value is None:
        return default
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadRequest("invalid_query", f"not a date: {value!r}", where) from None


def _range(from_: str | None, to: str | None) -> tuple[dt.date, dt.date]:
    today = dt.date.fromisoformat(day_of(int(time.time() * 1000)))
    to_day = _day(to, today, "$.to")
    from_day = _day(from_, to_day - dt.timedelta(days=DEFAULT_DAYS - 1), "$.from")
    if from_day > to_day:
        raise BadRequest("invalid_query", "from is after to", "$.from")
    if (to_day - from_day).days >= MAX_DAYS:
        raise BadRequest("invalid_query", f"at most {MAX_DAYS} days per report", "$.from")
    return from_day, to_day


async def _query(request: web.Request, kind: type[Q]) -> Q:
    """The caller may read reports, and the query is valid (400 with code and path)."""
    principal = await authenticate(request)
    if principal.role not in ("supervisor", "system"):
        raise Forbidden("supervisors_only", "reports are for supervisors")
    try:
        return msgspec.convert(dict(request.query), kind, strict=False)
    except msgspec.ValidationError as exc:
        message, path = validation_error(exc)
        raise BadRequest("invalid_query", message, path) from exc


# -- CSV ---------------------------------------------------------------------------------

_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str:
    """One CSV cell: numbers as JSON writes them, None empty, and text that a
    spreadsheet would run as a formula (a campaign name comes from a URL) led by `'`.

    >>> _cell(None), _cell(0.25), _cell(3), _cell("=HYPERLINK(1)"), _cell("-5"), _cell("a,b")
    ('', '0.25', '3', "'=HYPERLINK(1)", '-5', 'a,b')
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if text.startswith(_FORMULA) and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """RFC 4180: CRLF line ends, a field with a comma, quote or line break quoted and
    its quotes doubled; the header row first.

    >>> to_csv(["a", "b"], [[1, 'say "hi", ok']])
    'a,b\\r\\n1,"say ""hi"", ok"\\r\\n'
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return out.getvalue()


def _csv_response(name: str, from_day: dt.date, to_day: dt.date, text: str) -> web.Response:
    filename = f"ringback-{name}-{from_day.isoformat()}-{to_day.isoformat()}.csv"
    return web.Response(
        text=text,
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


FUNNEL_COLUMNS = (
    "name",
    "fired",
    "due",
    "claimed",
    "claimed_in_sla",
    "sla_attainment",
    "completed",
    "connected",
    "converted",
)


def _funnel_csv(result: FunnelReport) -> str:
    def line(r: FunnelReportRow) -> list[Any]:
        return [getattr(r, c) for c in FUNNEL_COLUMNS]

    return to_csv([result.by, *FUNNEL_COLUMNS[1:]], [*map(line, result.rows), line(result.total)])


def _conversions_csv(result: ConversionsReport) -> str:
    header = [
        result.by,
        "treated_decisions",
        "treated_conversions",
        "treated_rate",
        "holdout_decisions",
        "holdout_conversions",
        "holdout_rate",
        "uplift",
        "ci95_low",
        "ci95_high",
    ]
    rows = [
        [
            r.name,
            r.treated.decisions,
            r.treated.conversions,
            r.treated.rate,
            r.holdout.decisions,
            r.holdout.conversions,
            r.holdout.rate,
            r.uplift,
            *(r.ci95 if r.ci95 is not None else (None, None)),
        ]
        for r in result.rows
    ]
    return to_csv(header, rows)


# -- handlers ----------------------------------------------------------------------------


async def handle_uplift(request: web.Request) -> web.Response:
    """A rule's treated customers against its holdout."""
    q = await _query(request, UpliftQuery)
    from_day, to_day = _range(q.from_, q.to)
    result = await report(request.app[STORE], q.rule, from_day, to_day)
    return json_response(msgspec.to_builtins(result))


async def handle_funnel(request: web.Request) -> web.Response:
    """Fired -> claimed (within the SLA) -> completed -> connected -> converted."""
    q = await _query(request, FunnelQuery)
    from_day, to_day = _range(q.from_, q.to)
    result = await funnel(request.app[STORE], q.by, from_day, to_day, q.sla_s)
    if q.format == "csv":
        return _csv_response("funnel", from_day, to_day, _funnel_csv(result))
    return json_response(msgspec.to_builtins(result))


async def handle_conversions(request: web.Request) -> web.Response:
    """Decisions, conversions and uplift by campaign, segment, branch or value band."""
    q = await _query(request, ConversionsQuery)
    from_day, to_day = _range(q.from_, q.to)
    result = await conversions(request.app[STORE], q.by, from_day, to_day)
    if q.format == "csv":
        return _csv_response(f"conversions-{q.by}", from_day, to_day, _conversions_csv(result))
    return json_response(msgspec.to_builtins(result))


def _segment_ids(request: web.Request) -> list[str]:
    """The segments the current rule set declares (`segments:` in the rules' YAML)."""
    holder = request.app.get(RULES)
    return sorted(holder.current.segments.ids) if holder is not None else []


async def _sizes(
    request: web.Request, from_day: dt.date, to_day: dt.date
) -> dict[str, list[SegmentDay]]:
    ids = _segment_ids(request)
    found = await segment_sizes(request.app[STORE], ids, from_day, to_day) if ids else {}
    return {
        str(seg): [msgspec.convert(d, SegmentDay) for d in per_day]
        for seg, per_day in found.items()
    }


async def handle_segments(request: web.Request) -> web.Response:
    """Each segment's members, entries and exits per day."""
    q = await _query(request, SegmentsQuery)
    from_day, to_day = _range(q.from_, q.to)
    sizes = await _sizes(request, from_day, to_day)
    if q.format == "csv":
        rows = [
            [seg, d.day, d.members, d.entered, d.exited]
            for seg, per_day in sizes.items()
            for d in per_day
        ]
        text = to_csv(["segment", "day", "members", "entered", "exited"], rows)
        return _csv_response("segments", from_day, to_day, text)
    result = SegmentSizes(from_day.isoformat(), to_day.isoformat(), sizes)
    return json_response(msgspec.to_builtins(result))
