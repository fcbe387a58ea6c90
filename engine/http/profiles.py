"""Authenticated profile API: read and erase everything about a customer.

Erase is the GDPR path: it deletes every key of the customer and of every anonymous
id ever merged into it (their keys live in other slots, found through `links`), and
everything their indexes point at (audit and trigger records, stream entries; see
engine/valkey/refs.py), withdraws open callbacks and writes a receipt without the id.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from engine.core.errors import BadRequest, NotFound
from engine.decisions.inputs import decision_input
from engine.delivery.records import read_audit
from engine.http.errors import json_response
from engine.http.security import check_origin, cors_headers, require_api_token
from engine.http.state import DECIDER, ERASER, PROFILES, SETTINGS, STORE
from engine.ingest.identity import customer_id_from_path
from engine.ingest.schema import AnonymousIdPattern
from engine.privacy.erasure import write_erasure_receipt
from engine.profile.profiles import customer_attributes, decode_profile
from engine.valkey import keys

__all__ = ["handle_decisions_get", "handle_profile_delete", "handle_profile_get"]


def _customer_id(request: web.Request) -> str:
    return customer_id_from_path(request)


def _pages(entries: list[str]) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        ts, _, path = entry.partition(" ")
        out.append({"ts": int(ts) if ts.isdigit() else None, "path": path})
    return out


async def handle_profile_get(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    require_api_token(settings, request)
    customer_id = _customer_id(request)
    fields, pages, links, history = await request.app[PROFILES].read(
        keys.customer_prefix(customer_id)
    )
    if not fields and not links:
        raise NotFound("not_found", f"no profile for customer {customer_id!r}")
    now_ms = int(time.time() * 1000)
    return json_response(
        {
            "customer_id": customer_id,
            "profile": decode_profile(
                fields, now_ms, settings.profile.intent_half_life_s, known=True
            ),
            "recent_pages": _pages(pages),
            "linked_anonymous_ids": [
                {"site": s, "anonymous_id": a} for s, a in map(keys.parse_link_member, links)
            ],
            "attributes": customer_attributes(fields),
            "contact_history": history,
        }
    )


async def handle_profile_delete(request: web.Request) -> web.Response:
    """`DELETE /v1/profiles/{id}`: erase the customer everywhere (engine/valkey/refs.py says
    where "everywhere" is) and keep a receipt without personal data."""
    settings = request.app[SETTINGS]
    by = require_api_token(settings, request)
    customer_id = _customer_id(request)
    erasure = await request.app[ERASER].erase_customer(customer_id)
    receipt = await write_erasure_receipt(request.app[STORE], settings, customer_id, by, erasure)
    return json_response(
        {
            "customer_id": customer_id,
            "erased": True,
            "keys_deleted": erasure.keys_deleted,
            "stream_entries_deleted": erasure.stream_entries_deleted,
            "triggers_withdrawn": erasure.triggers_withdrawn,
            "anonymous_profiles": erasure.anonymous_profiles,
            "receipt": receipt,
        }
    )


async def handle_decision_audit(request: web.Request) -> web.Response:
    """`GET /v1/decisions/{id}`: why a decision was made (API token)."""
    require_api_token(request.app[SETTINGS], request)
    decision_id = request.match_info["decision_id"]
    if len(decision_id) != 24 or not all(c in "0123456789abcdef" for c in decision_id):
        raise BadRequest("invalid_decision_id", "decision ids are 24 hex digits", "$.decision_id")
    record = await read_audit(request.app[STORE], decision_id)
    if record is None:
        raise NotFound("not_found", "no such decision (audit records are kept 30 days)")
    return json_response(record)


async def handle_decisions_get(request: web.Request) -> web.Response:
    """Current offers for a page load, from the anonymous visitor's live profile."""
    settings = request.app[SETTINGS]
    site_key = request.query.get("site", "")
    anonymous_id = request.query.get("anonymous_id", "")
    if site_key not in settings.sites:
        raise NotFound("unknown_site", f"site {site_key!r} is not configured", "$.site")
    if not AnonymousIdPattern.match(anonymous_id):
        raise BadRequest(
            "invalid_anonymous_id",
            "anonymous_id must be 8-64 letters, digits, '_' or '-'",
            "$.anonymous_id",
        )
    origin = check_origin(settings.sites[site_key], request)
    fields, _, _, _ = await request.app[PROFILES].read(
        keys.anonymous_prefix(site_key, anonymous_id)
    )
    now_ms = int(time.time() * 1000)
    decisions: list[dict[str, Any]] = []
    if fields:
        decisions = await request.app[DECIDER].decide(
            decision_input(
                fields,
                site=site_key,
                anonymous_id=anonymous_id,
                customer_id=None,
                now_ms=now_ms,
                intent_half_life_s=settings.profile.intent_half_life_s,
            )
        )
    return json_response({"decisions": decisions}, headers=cors_headers(origin))
