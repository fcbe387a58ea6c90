"""Agents' and bank systems' HTTP interface to triggers: claim, complete, outcomes,
and the live queue's WebSocket. The work itself is engine/contact_center/."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import msgspec
import orjson
from aiohttp import WSMsgType, web

from engine.contact_center import claims
from engine.core.errors import BadRequest, Forbidden
from engine.core.vocabulary import AGENT_OUTCOMES, Outcome
from engine.http.agents import authenticate
from engine.http.errors import json_response
from engine.http.security import is_own_origin, require_api_token
from engine.http.state import GATEWAY, METRICS, SETTINGS, STORE
from engine.ingest.bodies import read_typed_body

__all__ = ["handle_claim", "handle_complete", "handle_outcome", "handle_ws"]

T = TypeVar("T")


# What an agent may record: AGENT_OUTCOMES as a Literal of their strings, the form msgspec
# decodes and documents as an enum (it takes no Literal of enum members); mypy sees Outcome.
if TYPE_CHECKING:
    AgentOutcome = Outcome
else:
    AgentOutcome = Literal[tuple(o.value for o in AGENT_OUTCOMES)]


class OutcomeBody(msgspec.Struct, forbid_unknown_fields=True):
    decision_id: str
    outcome: Outcome
    value: float | None = None


class CompleteBody(msgspec.Struct, forbid_unknown_fields=True):
    outcome: AgentOutcome
    value: float | None = None
    note: Annotated[str, msgspec.Meta(max_length=500)] | None = None


async def _read(request: web.Request, kind: type[T], invalid_code: str) -> T:
    """The body as its struct (engine.ingest.bodies: capped, inflated, JSON path on error)."""
    limit = request.app[SETTINGS].limits.max_body_bytes
    return await read_typed_body(request, kind, invalid_code, limit)


def _trigger_id(request: web.Request) -> str:
    trigger_id = request.match_info["trigger_id"]
    if len(trigger_id) != 24 or not all(c in "0123456789abcdef" for c in trigger_id):
        raise BadRequest("invalid_trigger_id", "trigger ids are 24 hex digits", "$.trigger_id")
    return trigger_id


async def handle_claim(request: web.Request) -> web.Response:
    principal = await authenticate(request, state_changing=True)
    trigger_id = _trigger_id(request)
    await claims.claim(
        request.app[STORE],
        trigger_id,
        principal.name,
        int(time.time() * 1000),
        request.app[METRICS],
    )
    return json_response({"trigger_id": trigger_id, "claimed_by": principal.name})


async def handle_complete(request: web.Request) -> web.Response:
    principal = await authenticate(request, state_changing=True)
    trigger_id = _trigger_id(request)
    body = await _read(request, CompleteBody, "invalid_outcome")
    await claims.complete(
        request.app[STORE],
        trigger_id,
        principal.name,
        body.outcome,
        int(time.time() * 1000),
        value=body.value,
        note=body.note,
        override=principal.role in ("supervisor", "system"),
    )
    return json_response({"trigger_id": trigger_id, "outcome": body.outcome})


async def handle_outcome(request: web.Request) -> web.Response:
    """`POST /v1/outcomes` from bank systems (API token): {decision_id, outcome, value?}."""
    name = require_api_token(request.app[SETTINGS], request)
    body = await _read(request, OutcomeBody, "invalid_outcome")
    await claims.outcome_for_decision(
        request.app[STORE],
        body.decision_id,
        body.outcome,
        body.value,
        name,
        int(time.time() * 1000),
    )
    return json_response({"decision_id": body.decision_id, "recorded": True})


async def handle_ws(request: web.Request) -> web.WebSocketResponse:
    """`GET /v1/triggers/ws`: the live queue. Cookie or token; same-origin pages only."""
    origin = request.headers.get("Origin")
    if origin is not None and not is_own_origin(request.app[SETTINGS], origin, request):
        raise Forbidden("origin_not_allowed", "the dashboard connects from its own origin")
    principal = await authenticate(request)
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    gateway = request.app[GATEWAY]
    await ws.send_str(
        orjson.dumps(
            {"kind": "snapshot", "user": principal.name, "triggers": await gateway.snapshot()}
        ).decode()
    )
    gateway.sockets.add(ws)
    request.app[METRICS].agents_connected.inc()
    try:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        gateway.sockets.discard(ws)
        request.app[METRICS].agents_connected.dec()
    return ws
