"""`POST /v1/conversions`: sales the bank's systems see (a loan signed days later),
credited to the decision that led to them. The work is engine/learning/labels.py."""

from __future__ import annotations

import time

from aiohttp import web

from engine.core.errors import BadRequest
from engine.http.errors import json_response
from engine.http.security import require_api_token
from engine.http.state import SETTINGS, STORE
from engine.ingest.bodies import read_typed_body
from engine.learning.labels import ConversionBody, convert

__all__ = ["handle_conversion"]


async def handle_conversion(request: web.Request) -> web.Response:
    """API token; body `{customer_id, product, ts, value?, conversion_id?}`. A `ts`
    further ahead than events may be (`limits.max_event_future_s`) is refused: it
    would credit decisions not yet made when the sale is reported."""
    settings = request.app[SETTINGS]
    name = require_api_token(settings, request)
    body = await read_typed_body(
        request, ConversionBody, "invalid_conversion", settings.limits.max_body_bytes
    )
    now_ms = int(time.time() * 1000)
    if body.ts > now_ms + settings.limits.max_event_future_s * 1000:
        raise BadRequest("invalid_conversion", "ts is in the future", "$.ts")
    done = await convert(request.app[STORE], body, now_ms, settings, name)
    return json_response(
        {
            "customer_id": body.customer_id,
            "product": body.product,
            "attributed": done.attributed,
            "recorded": done.recorded,
        }
    )
