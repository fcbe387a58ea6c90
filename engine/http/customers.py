"""`GET /v1/customers/{id}/decisions`: why was this customer called, or not?

For supervisors (the dashboard's session) and bank systems (API token). Lists the
customer's audited decisions, newest first, those made while the customer was an
anonymous visitor linked to them since included: the calls and offers made, the
control-group decisions (`holdout`) and the contacts a matching rule did not make and
why (`suppressed`: no consent, do-not-call, quiet hours, no capacity, cooldown, daily
cap; engine/delivery/executor.py). Each item carries the arbitration factors, the model
and a one-line `why`; `full=1` adds the feature snapshot and the rule trace.

The records are found through the profiles' indexes (`decision_ids`), so an erased
customer has none, and an unknown or erased customer is a 404.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from engine.core.errors import BadRequest, Forbidden, NotFound
from engine.delivery.records import decision_ids, read_audit
from engine.http.agents import authenticate
from engine.http.errors import json_response
from engine.http.state import PROFILES, STORE
from engine.ingest.bodies import validation_error
from engine.ingest.identity import customer_id_from_path
from engine.valkey import keys

__all__ = ["MAX_LIMIT", "CustomerDecisionsQuery", "handle_customer_decisions", "why"]

MAX_LIMIT = 500

# What each suppression means, for people (`why`); reasons not listed are shown as is.
_SUPPRESSED = {
    "do_not_call": "on the do-not-call list and the rule has no fallback channel",
    "no_consent": "no consent to be called and the rule has no fallback channel",
    "outside_hours": "outside the calendar's hours",
    "no_capacity": "the floor was at capacity",
    "daily_cap": "the rule's daily contact cap was reached",
}


class CustomerDecisionsQuery(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)] = 50
    since: Annotated[int, msgspec.Meta(ge=0)] = 0  # ms since the epoch: decisions made at or after
    full: Literal["1"] | msgspec.UnsetType = msgspec.UNSET  # add features and the trace


async def handle_customer_decisions(request: web.Request) -> web.Response:
    principal = await authenticate(request)
    if principal.role not in ("supervisor", "system"):
        raise Forbidden("supervisors_only", "a customer's decisions are for supervisors")
    customer_id = customer_id_from_path(request)
    try:
        q = msgspec.convert(dict(request.query), CustomerDecisionsQuery, strict=False)
    except msgspec.ValidationError as exc:
        message, path = validation_error(exc)
        raise BadRequest("invalid_query", message, path) from exc
    prefix = keys.customer_prefix(customer_id)
    fields, _, links, history = await request.app[PROFILES].read(prefix)
    if not fields and not links:
        raise NotFound("unknown_customer", f"no profile for customer {customer_id!r}")
    prefixes = [prefix, *(keys.anonymous_prefix(*keys.parse_link_member(m)) for m in links)]
    audits = await _newest(request.app[STORE], prefixes, q.since, q.limit)
    full = q.full is not msgspec.UNSET
    return json_response(
        {
            "customer_id": customer_id,
            "decisions": [_item(a, history, full) for a in audits],
        }
    )


async def _newest(
    store: Any, prefixes: list[str], since_ms: int, limit: int
) -> list[dict[str, Any]]:
    """The `limit` newest audit records made at or after `since_ms`. Read in chunks in
    the index's order (newest write first), so a customer with a month of offer
    decisions costs a chunk of reads, not all of them."""
    ids = await decision_ids(store, prefixes, since_ms)
    chunk = max(limit, 50)
    found: list[dict[str, Any]] = []
    for start in range(0, len(ids), chunk):
        read = await asyncio.gather(*[read_audit(store, d) for d in ids[start : start + chunk]])
        found += [a for a in read if a is not None and _at_ms(a) >= since_ms]
        if len(found) >= limit:
            break
    found.sort(key=lambda a: (_at_ms(a), str(a.get("id"))), reverse=True)
    return found[:limit]


def _at_ms(audit: dict[str, Any]) -> int:
    at = audit.get("at_ms")
    return at if isinstance(at, int) else 0


def _item(audit: dict[str, Any], history: list[dict[str, Any]], full: bool) -> dict[str, Any]:
    offer = audit.get("offer")
    item: dict[str, Any] = {
        "id": audit.get("id"),
        "at_ms": _at_ms(audit),
        "rule": audit.get("rule"),
        "action": audit.get("action"),
        "channel": audit.get("channel"),
        "offer_id": offer.get("id") if isinstance(offer, dict) else None,
        "holdout": bool(audit.get("holdout")),
        "suppressed": audit.get("suppressed"),
        "factors": audit.get("factors") or {},
        "model": audit.get("model") or {},
        "why": why(audit, history),
    }
    if full:
        item["features"] = audit.get("features") or {}
        item["trace"] = audit.get("trace") or []
    return item


def why(audit: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """One line for people: what suppressed the decision, or what ranked it.

    >>> why({"suppressed": "no_consent"}, [])
    'suppressed: no_consent (no consent to be called and the rule has no fallback channel)'
    >>> why({"suppressed": "cooldown_rule", "rule": "r", "at_ms": 7_200_000},
    ...     [{"kind": "decision", "rule": "r", "channel": "callback", "ts": "0"}])
    'suppressed: cooldown_rule (contacted by this rule 2 h before)'
    >>> why({"factors": {"propensity": 0.41, "value": 30, "lever": 1.0, "score": 12.3},
    ...      "model": {"source": "model"}}, [])
    'matched; ranked first: score 12.3 = 0.41 x 30 x 1 (model)'
    >>> why({"holdout": True, "factors": {"score": 2.0}}, [])
    "holdout: in the rule's control group, recorded and never delivered (score 2)"
    """
    reason = audit.get("suppressed")
    if isinstance(reason, str) and reason:
        detail = _SUPPRESSED.get(reason) or _last_contact(audit, history, reason)
        return f"suppressed: {reason} ({detail})" if detail else f"suppressed: {reason}"
    factors = audit.get("factors") or {}
    if audit.get("holdout"):
        return (
            "holdout: in the rule's control group, recorded and never delivered "
            f"(score {_num(factors.get('score'))})"
        )
    source = (audit.get("model") or {}).get("source")
    return (
        f"matched; ranked first: score {_num(factors.get('score'))} = "
        f"{_num(factors.get('propensity'))} x {_num(factors.get('value'))} x "
        f"{_num(factors.get('lever'))}" + (f" ({source})" if source else "")
    )


def _last_contact(audit: dict[str, Any], history: list[dict[str, Any]], reason: str) -> str:
    """For a cooldown: how long before the decision the contact that started it was
    (the newest contact-history entry of the rule, or of the channel)."""
    field = {"cooldown_rule": "rule", "cooldown_channel": "channel"}.get(reason)
    at_ms = _at_ms(audit)
    if field is None:
        return ""
    for entry in history:  # newest first
        ts = str(entry.get("ts", ""))
        if entry.get("kind") != "decision" or entry.get(field) != audit.get(field):
            continue
        if ts.isdigit() and int(ts) <= at_ms:
            by = "by this rule" if field == "rule" else f"on {audit.get('channel')}"
            return f"contacted {by} {_ago(at_ms - int(ts))} before"
    return ""


def _ago(ms: int) -> str:
    s = ms // 1000
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h"
    return f"{s // 86400} days"


def _num(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, int | float) else "?"
