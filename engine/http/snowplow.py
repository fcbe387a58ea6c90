"""Snowplow-compatible ingestion: `POST /com.snowplowanalytics.snowplow/tp2` and
`GET /i`, as a Snowplow collector answers them.

A bank's Snowplow trackers (JS in its pages, Python/Java/... in its backends), pointed
at the engine as their collector, send here unchanged:

    guard (IP limit, media type) -> key (server apps only) -> body (gzip undone in
    bounded steps, size and nesting capped) -> translate (`engine.ingest.snowplow`:
    validate every event, map, date) -> origin (per site) -> each visitor's events
    through `ingest_batch`, the path `/v1/events` takes -> 200

`aid` names the app, the app its site (`[[snowplow.apps]]`). A server app's events are
taken only with `Authorization: Bearer <its key>`; a header that is present but
unreadable or whose key is no app's is a 401 before the body is read. Nothing is
written until every event has passed; a tracker's retry re-sends the same `eid`s and
the profile counts each once.

Answers: 200 with `{"accepted", "duplicates", "ignored", "decisions"}` for `tp2` (the
trackers read only the status) and a 1x1 GIF for `/i`. Refusals are Ringback's error
body with a stable code and the JSON path (`$.data[3].se_va`). The trackers retry
every status but 2xx, 400, 401, 403, 410 and 422, so a body that is too large or of
the wrong media type, which no retry fixes, is answered 400 (`payload_too_large`,
`unsupported_media_type`), not 413/415; 429 and 503 are retried, as they should be.

CORS: the JS tracker posts `application/json` with credentials by default, so `tp2`
answers (and its preflight) carry `Access-Control-Allow-Credentials: true` for an
allowed origin; the engine reads no cookie on these routes.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import msgspec
import orjson
from aiohttp import web

from engine.core.errors import (
    BadRequest,
    ClientError,
    RateLimited,
    Unauthorized,
    UnsupportedMedia,
)
from engine.core.settings import SnowplowApp, SnowplowConfig
from engine.http.errors import error_response
from engine.http.ingest import ingest_visits
from engine.http.security import check_origin, cors_headers, preflight_origin_allowed
from engine.http.state import IP_LIMITER, METRICS, SETTINGS
from engine.ingest.bodies import read_json_body
from engine.ingest.snowplow import Translated, Translator, query_event, split_body

__all__ = [
    "PIXEL",
    "SnowplowAnswer",
    "handle_pixel",
    "handle_tp2",
    "handle_tp2_preflight",
]

# Events translated between two yields to the event loop.
_EVENTS_PER_STEP = 250

_ACCEPTED_MEDIA = ("application/json", "text/plain")

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
"""The 1x1 transparent GIF a collector answers `GET /i` with."""

_CREDENTIALS = {"Access-Control-Allow-Credentials": "true"}


class SnowplowAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """What Ringback did with a `tp2` request (the trackers read only the 200)."""

    accepted: int  # events new to their profiles
    duplicates: int  # events whose eid was seen before (a retry): counted once
    ignored: int  # events that carry nothing for Ringback (unmapped, transactions, ...)
    decisions: list[dict[str, Any]]


async def handle_tp2(request: web.Request) -> web.Response:
    try:
        return await _tp2(request)
    except ClientError as exc:
        return _refusal(request, exc, credentials=True)


async def handle_pixel(request: web.Request) -> web.Response:
    try:
        return await _pixel(request)
    except ClientError as exc:
        return _refusal(request, exc, credentials=False)


async def handle_tp2_preflight(request: web.Request) -> web.Response:
    """CORS preflight of the JS tracker's POST: origins some configured site allows."""
    origin = preflight_origin_allowed(request.app[SETTINGS], request)
    if origin is None:
        return web.Response(status=403)
    headers = cors_headers(origin) | _CREDENTIALS
    headers.update(
        {
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            # No Authorization: a server app's key has no business in a page.
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
        }
    )
    return web.Response(status=204, headers=headers)


async def _tp2(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    sp = settings.snowplow
    started = time.perf_counter()
    app[IP_LIMITER].check(request)
    if request.content_type not in _ACCEPTED_MEDIA:
        raise UnsupportedMedia(
            "unsupported_media_type",
            f"send application/json, not {request.content_type or 'nothing'}",
        )
    key_app = _key_app(request, sp)
    body = await read_json_body(request, sp.max_body_bytes)
    now_ms = int(time.time() * 1000)
    events = split_body(body, sp)
    translator = _translator(request, key_app, now_ms)
    for start in range(0, len(events), _EVENTS_PER_STEP):
        if start:
            await asyncio.sleep(0)  # a large body: let other requests run
        translator.add(events[start : start + _EVENTS_PER_STEP], start)
    answer, origin = await _ingest(request, translator.result(), now_ms)
    app[METRICS].ingest_seconds.observe(time.perf_counter() - started)
    return web.Response(
        body=msgspec.json.encode(answer),
        content_type="application/json",
        headers=cors_headers(origin) | (_CREDENTIALS if origin else {}),
    )


async def _pixel(request: web.Request) -> web.Response:
    app = request.app
    started = time.perf_counter()
    app[IP_LIMITER].check(request)
    key_app = _key_app(request, app[SETTINGS].snowplow)
    now_ms = int(time.time() * 1000)
    translator = _translator(request, key_app, now_ms)
    translator.add_event(query_event(request.query))
    await _ingest(request, translator.result(), now_ms)
    app[METRICS].ingest_seconds.observe(time.perf_counter() - started)
    return web.Response(
        body=PIXEL,
        content_type="image/gif",
        headers={"Cache-Control": "no-cache, no-store, must-revalidate"},
    )


def _translator(request: web.Request, key_app: SnowplowApp | None, now_ms: int) -> Translator:
    settings = request.app[SETTINGS]
    return Translator(
        settings.snowplow,
        key_app=key_app,
        receive_ms=now_ms,
        max_age_s=settings.limits.max_event_age_s,
        max_future_s=settings.limits.max_event_future_s,
    )


async def _ingest(
    request: web.Request, out: Translated, now_ms: int
) -> tuple[SnowplowAnswer, str | None]:
    """Check the Origin against every site the events are for, then ingest each
    visitor's events. Nothing is written if any site refuses the Origin. Returns the
    answer and the Origin to echo in CORS headers (None without one)."""
    app = request.app
    settings = app[SETTINGS]
    origin = None
    for key in sorted(out.sites):
        origin = check_origin(settings.sites[key], request)
    done = await ingest_visits(
        app,
        ((settings.sites[v.site], v.anonymous_id, v.customer_id, v.events) for v in out.visits),
        now_ms,
    )
    answer = SnowplowAnswer(
        accepted=done.accepted,
        duplicates=done.duplicates,
        ignored=out.ignored,
        decisions=done.decisions,
    )
    return answer, origin


def _key_app(request: web.Request, sp: SnowplowConfig) -> SnowplowApp | None:
    """The server app whose key `Authorization: Bearer <key>` carries; None without
    the header. A header that is present but unreadable or unknown is a 401."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized(
            "invalid_credentials", "send a server app's key as Authorization: Bearer <key>"
        )
    app = sp.app_for_key(value.strip())
    if app is None:
        raise Unauthorized("invalid_source_key", "no server app of [[snowplow.apps]] has this key")
    return app


def _refusal(request: web.Request, exc: ClientError, *, credentials: bool) -> web.Response:
    """Ringback's error body; 413/415 as 400, which the trackers do not retry."""
    request.app[METRICS].rejected.labels(exc.code).inc()
    origin = preflight_origin_allowed(request.app[SETTINGS], request)
    headers = cors_headers(origin) | (_CREDENTIALS if credentials and origin else {})
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    status = BadRequest.status if exc.status in (413, 415) else exc.status
    if getattr(exc, "close_connection", False):
        return _ClosingResponse(request, exc, status, headers)
    return error_response(status, exc.code, exc.message, exc.path, headers=headers)


class _ClosingResponse(web.Response):
    """A refusal after which the connection is closed at once (a decompression bomb):
    aiohttp would otherwise read and discard the rest of the body for up to 10 s."""

    def __init__(
        self, request: web.BaseRequest, exc: ClientError, status: int, headers: dict[str, str]
    ) -> None:
        body = {"error": {"code": exc.code, "message": exc.message, "path": exc.path}}
        super().__init__(
            body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
        )
        self._closing_request = request
        self.force_close()

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        self._closing_request.protocol.force_close()
