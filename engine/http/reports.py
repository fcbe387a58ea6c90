"""`GET /v1/reports/uplift`: does a rule pay? Its treated customers against its holdout.

For supervisors (the dashboard's session) and bank systems (API token). Cohorts are the
days decisions were made (engine/delivery/uplift.py); conversions count with the
decision they were attributed to, however much later they came.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated

import msgspec
from aiohttp import web

from engine.core.errors import BadRequest, Forbidden
from engine.delivery.uplift import MAX_DAYS, day_of, report
from engine.http.agents import authenticate
from engine.http.errors import json_response
from engine.http.state import STORE
from engine.ingest.bodies import validation_error

__all__ = ["UpliftQuery", "handle_uplift"]

Day = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]
RuleId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
DEFAULT_DAYS = 30


class UpliftQuery(msgspec.Struct, forbid_unknown_fields=True):
    rule: RuleId
    # UTC days, inclusive; default: the last 30 days up to today.
    from_: Day | None = msgspec.field(default=None, name="from")
    to: Day | None = None


def _day(value: str | None, default: dt.date, where: str) -> dt.date:
    if value is None:
        return default
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadRequest("invalid_query", f"not a date: {value!r}", where) from None


async def handle_uplift(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    if principal.role not in ("supervisor", "system"):
        raise Forbidden("supervisors_only", "reports are for supervisors")
    try:
        q = msgspec.convert(dict(request.query), UpliftQuery)
    except msgspec.ValidationError as exc:
        message, path = validation_error(exc)
        raise BadRequest("invalid_query", message, path) from exc
    today = dt.date.fromisoformat(day_of(int(time.time() * 1000)))
    to_day = _day(q.to, today, "$.to")
    from_day = _day(q.from_, to_day - dt.timedelta(days=DEFAULT_DAYS - 1), "$.from")
    if from_day > to_day:
        raise BadRequest("invalid_query", "from is after to", "$.from")
    if (to_day - from_day).days >= MAX_DAYS:
        raise BadRequest("invalid_query", f"at most {MAX_DAYS} days per report", "$.from")
    result = await report(request.app[STORE], q.rule, from_day, to_day)
    return json_response(msgspec.to_builtins(result))
