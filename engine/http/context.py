"""`GET /v1/customers/{id}/context`: the inbound screen-pop for agents and CTI.

When a customer phones in, the agent (dashboard session) or the bank's CTI (API
token) sees what the customer just did online: live presence, recent pages, calculator
state, intent, the current best offer (the same decider the website uses, so phone
and web propose the same thing) and the contact history across channels.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from engine.core.errors import NotFound
from engine.decisions.inputs import decision_input
from engine.http.agents import authenticate
from engine.http.errors import json_response
from engine.http.state import DECIDER, PROFILES, SETTINGS
from engine.ingest.identity import customer_id_from_path
from engine.profile.profiles import customer_attributes
from engine.valkey import keys

__all__ = ["customer_context", "handle_context"]


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
        "attributes": customer_attributes(fields),
        "best_offer": next((d for d in offers if d.get("action") == "offer"), None),
        "contact_history": history,
    }


async def handle_context(request: web.Request) -> web.Response:
    await authenticate(request)
    customer_id = customer_id_from_path(request)
    context = await customer_context(request.app, customer_id)
    if context is None:
        raise NotFound("not_found", f"nothing known about customer {customer_id!r}")
    return json_response(context)
