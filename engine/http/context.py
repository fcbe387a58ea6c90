"""The screen-pop for agents and CTI: `GET /v1/customers/{id}/context` and, for a call
coming in, `POST /v1/agents/inbound`.

When a customer phones in, the agent (dashboard session) or the bank's CTI (API
token) sees what the customer just did online: live presence, recent pages, calculator
state, intent, the current best offer (the same decider the website uses, so phone
and web propose the same thing), the contact history across channels, and the call
guide: the bank's quote for what the customer was calculating, what they changed and
when, and the offer chosen and why (engine/contact_center/quote.py).

An inbound call is found by the caller's number (its keyed hash, engine/profile/
phones.py) or by customer id, and is written to the contact history (`inbound_call`,
by whom, when) before the screen-pop is read, so the answer already shows it. A number
several customers share (a joint account, a household landline) is not guessed: 409
`ambiguous_caller` lists their ids, nothing is written, and the agent asks the caller
and opens the one they are by customer id.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from engine.contact_center.quote import CallGuide, site_guide
from engine.core.errors import BadRequest, NotFound
from engine.decisions.inputs import decision_input
from engine.http.agents import authenticate
from engine.http.answers import ContextAnswer, ErrorBody
from engine.http.errors import json_response
from engine.http.state import DECIDER, PROFILES, RULES, SETTINGS, STORE
from engine.ingest.bodies import read_typed_body
from engine.ingest.identity import CUSTOMER_ID_RE, customer_id_from_path
from engine.profile.contact_history import append_history
from engine.profile.phones import PHONE_REF_FIELD, Phone, find_customers, phone_hash_key
from engine.profile.profiles import customer_attributes
from engine.valkey import keys

__all__ = [
    "AmbiguousCaller",
    "InboundBody",
    "ScreenPopAnswer",
    "customer_context",
    "handle_context",
    "handle_inbound",
]


class ScreenPopAnswer(ContextAnswer, kw_only=True):
    """The screen-pop: the customer's context and the agent's call guide."""

    call_guide: CallGuide
    # Inbound only: how the caller was found ("phone": the number is the CRM's, the
    # person may not be: the agent verifies who is speaking).
    matched_by: Literal["phone", "customer_id"] | None = None


class AmbiguousCaller(ErrorBody, kw_only=True):
    """409 `ambiguous_caller`: several customers have the caller's number. Their ids
    only (nothing else about them before the caller is identified)."""

    candidates: list[str]


# A number shared by more customers than this is not a household: the agent is told
# there are many rather than shown a list to pick from.
MAX_CANDIDATES = 20


class InboundBody(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /v1/agents/inbound`: the caller's number (E.164, as the phone system
    gives it) or, when the caller identified themselves, the customer id."""

    phone: Phone | None = None
    customer_id: Annotated[str, msgspec.Meta(pattern=CUSTOMER_ID_RE.pattern)] | None = None


async def customer_context(app: web.Application, customer_id: str) -> dict[str, Any] | None:
    fields, pages, links, history = await app[PROFILES].read(keys.customer_prefix(customer_id))
    if not fields and not links and not history:
        return None
    settings = app[SETTINGS]
    now_ms = int(time.time() * 1000)
    site = str(fields.get("site") or next(iter(settings.sites), ""))
    inp = decision_input(
        fields,
        site=site,
        anonymous_id="",
        customer_id=customer_id,
        now_ms=now_ms,
        intent_half_life_s=settings.profile.intent_half_life_s,
    )
    offers = await app[DECIDER].decide(inp)
    profile = inp.profile
    recent = []
    for entry in pages:
        ts, _, path = str(entry).partition(" ")
        recent.append({"ts": int(ts) if ts.isdigit() else None, "path": path})
    best = next((d for d in offers if d.get("action") == "offer"), None)
    attributes = {k: v for k, v in customer_attributes(fields).items() if k != PHONE_REF_FIELD}
    return {
        "customer_id": customer_id,
        "presence": {
            "online": profile["online"],
            "last_seen": profile["last_seen"],
            "session": profile["session"],
        },
        "recent_pages": recent,
        "calculators": profile["calc"],
        "intent": profile["intent"],
        "interest": profile["interest"],
        "call_requested": profile["call_requested"],
        "forms": profile["forms"],
        "attributes": attributes,
        "best_offer": best,
        "contact_history": history,
        "call_guide": site_guide(
            settings,
            site,
            profile["calc"],
            offer=(best or {}).get("offer"),
            rule=str((best or {}).get("rule") or ""),
            reason=_rule_reason(app, str((best or {}).get("rule") or "")),
            factors=(best or {}).get("factors"),
        ),
    }


async def _known(app: web.Application, customer_id: str) -> bool:
    """Whether the engine knows the customer (as `customer_context` decides it)."""
    fields, _, links, history = await app[PROFILES].read(keys.customer_prefix(customer_id))
    return bool(fields or links or history)


def _rule_reason(app: web.Application, rule_id: str) -> str:
    """The rule's description (what the callback card calls its reason), if loaded."""
    holder = app.get(RULES)
    if not rule_id or holder is None:
        return ""
    return next((r.description for r in holder.current.rules if r.id == rule_id), "")


async def handle_context(request: web.Request) -> web.Response:
    await authenticate(request)
    customer_id = customer_id_from_path(request)
    context = await customer_context(request.app, customer_id)
    if context is None:
        raise NotFound("not_found", f"nothing known about customer {customer_id!r}")
    return json_response(context)


async def handle_inbound(request: web.Request) -> web.Response:
    """A call is coming in: find the caller, note the call in their contact history
    (which agent or system took it, when), answer with the screen-pop."""
    principal = await authenticate(request, state_changing=True)
    settings = request.app[SETTINGS]
    body = await read_typed_body(
        request, InboundBody, "invalid_inbound", settings.limits.max_body_bytes
    )
    if (body.phone is None) == (body.customer_id is None):
        raise BadRequest("invalid_inbound", "give phone or customer_id (one of them)", "$")
    store = request.app[STORE]
    customer_id: str | None
    if body.phone is not None:
        by = "phone"
        found = await find_customers(store, phone_hash_key(settings), body.phone)
        known = found
        if len(found) <= MAX_CANDIDATES:  # past that it is ambiguous whoever is known
            alive = await asyncio.gather(*(_known(request.app, c) for c in found))
            known = [c for c, ok in zip(found, alive, strict=True) if ok]
        if len(known) > 1:
            return _ambiguous(known)
        customer_id = known[0] if known else None
    else:
        customer_id, by = body.customer_id, "customer_id"
    if customer_id is None or not await _known(request.app, customer_id):
        # The number is not said back: the agent typed it, and it names nobody here.
        raise NotFound("unknown_caller", f"no customer matches this {by.replace('_', ' ')}")
    entry = {
        "kind": "inbound_call",
        "channel": "phone",
        "by": principal.name,
        "matched_by": by,
        "ts": int(time.time() * 1000),
    }
    await append_history(store, keys.customer_prefix(customer_id), entry)
    context = await customer_context(request.app, customer_id)
    if context is None:  # erased between the two reads
        raise NotFound("unknown_caller", f"no customer matches this {by.replace('_', ' ')}")
    return json_response({**context, "matched_by": by})


def _ambiguous(candidates: list[str]) -> web.Response:
    """409: the customers sharing the number, by id, for the agent to pick one (then
    `{"customer_id": ...}`); no history is written for any of them."""
    shown = candidates[:MAX_CANDIDATES]
    more = len(candidates) - len(shown)
    message = f"{len(candidates)} customers share this number: ask the caller who they are"
    if more:
        message += f" ({more} not listed)"
    body = {
        "error": {"code": "ambiguous_caller", "message": message, "path": None},
        "candidates": shown,
    }
    return json_response(body, status=409)
