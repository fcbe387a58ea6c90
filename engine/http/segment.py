"""Segment-compatible ingestion: `POST /v1/batch`, `/v1/track`, `/v1/page`,
`/v1/identify`, `/v1/alias`, as Segment's HTTP Tracking API answers them.

A bank's Segment server library (or its own Segment HTTP API calls), pointed at the
engine, sends here unchanged:

    guard (IP limit, media type) -> write key -> source (site, trusted?) -> body
    (gzip undone in bounded steps, size and nesting capped) -> translate
    (`engine.ingest.segment`: validate every message, map, date) -> links (trusted
    identify/alias) -> each visitor's events through `ingest_batch`, the path
    `/v1/events` takes -> `{"success": true, ...}`

The write key comes as HTTP Basic (user = key, no password; what every Segment
library sends), as `Bearer <key>`, or as `writeKey` in the body. A key in a header
is checked (401) before the body is read. Nothing is written until every message has
passed; a retry after a 503 re-sends the batch and `messageId` dedupe counts each
message once.

Refusals have the shape Segment's libraries read, `{"success": false, "code",
"message", "path"}` (analytics-python raises `APIError(status, code, message)` from
it, and retries only 5xx, 429 and transient 4xx such as 408), with Ringback's stable
codes and JSON paths. A 503 (the profile store down) comes from the error middleware
in Ringback's own shape: the libraries retry it either way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Any, Literal

import msgspec
import orjson
from aiohttp import web

from engine.core.errors import ClientError, RateLimited, Unauthorized, UnsupportedMedia
from engine.core.settings import SegmentSource
from engine.http.ingest import ingest_visits
from engine.http.security import check_origin, cors_headers, preflight_origin_allowed
from engine.http.state import IP_LIMITER, METRICS, PROFILES, SETTINGS
from engine.ingest.bodies import read_json_body
from engine.ingest.segment import Kind, Translator, split_body

__all__ = [
    "SegmentAnswer",
    "SegmentRefusal",
    "handle_alias",
    "handle_batch",
    "handle_identify",
    "handle_page",
    "handle_track",
]

# Messages translated between two yields to the event loop (~20 us each).
_MESSAGES_PER_STEP = 250

_ACCEPTED_MEDIA = ("application/json", "text/plain")  # browser beacons: no preflight


class SegmentAnswer(msgspec.Struct, forbid_unknown_fields=True):
    """Segment's `{"success": true}`, with what Ringback did with the messages."""

    success: Literal[True]
    accepted: int  # events new to their profiles
    duplicates: int  # events whose messageId was seen before (a retry): counted once
    ignored: int  # messages that carry nothing for Ringback (group, unmapped, untrusted)
    links: int  # anonymous ids linked to customers (trusted identify/alias)
    decisions: list[dict[str, Any]]


class SegmentRefusal(msgspec.Struct, forbid_unknown_fields=True):
    """A refusal as Segment's libraries read it (`code`, `message`), with the JSON path."""

    success: Literal[False]
    code: str
    message: str
    path: str | None


async def handle_batch(request: web.Request) -> web.Response:
    return await _handle(request, "batch")


async def handle_track(request: web.Request) -> web.Response:
    return await _handle(request, "track")


async def handle_page(request: web.Request) -> web.Response:
    return await _handle(request, "page")


async def handle_identify(request: web.Request) -> web.Response:
    return await _handle(request, "identify")


async def handle_alias(request: web.Request) -> web.Response:
    return await _handle(request, "alias")


async def _handle(request: web.Request, kind: Kind) -> web.Response:
    try:
        return await _ingest(request, kind)
    except ClientError as exc:
        request.app[METRICS].rejected.labels(exc.code).inc()
        return _refusal(request, exc)


async def _ingest(request: web.Request, kind: Kind) -> web.Response:
    app = request.app
    settings, metrics = app[SETTINGS], app[METRICS]
    seg = settings.segment
    started = time.perf_counter()
    app[IP_LIMITER].check(request)
    if request.content_type not in _ACCEPTED_MEDIA:
        raise UnsupportedMedia(
            "unsupported_media_type",
            f"send application/json, not {request.content_type or 'nothing'}",
        )
    presented = _header_key(request)
    source = None if presented is None else _source(seg.source_for(presented))
    body = await read_json_body(request, seg.max_body_bytes)
    if source is None:  # Segment also takes the key in the body
        source = _source(seg.source_for(_body_key(body)))
    site = settings.sites[source.site]
    origin = check_origin(site, request)
    now_ms = int(time.time() * 1000)
    messages, sent_at_ms = split_body(body, kind, seg)
    translator = Translator(
        kind,
        seg,
        trusted=source.trusted,
        receive_ms=now_ms,
        max_age_s=settings.limits.max_event_age_s,
        max_future_s=settings.limits.max_event_future_s,
        sent_at_ms=sent_at_ms,
    )
    for start in range(0, len(messages), _MESSAGES_PER_STEP):
        if start:
            await asyncio.sleep(0)  # a 2500-message batch: let other requests run
        translator.add(messages[start : start + _MESSAGES_PER_STEP], start)
    out = translator.result()
    for link in out.links:
        merged = await app[PROFILES].merge(site.key, link.anonymous_id, link.customer_id)
        metrics.merges.labels(merged).inc()
    done = await ingest_visits(
        app, ((site, v.anonymous_id, v.customer_id, v.events) for v in out.visits), now_ms
    )
    accepted, duplicates, decisions = done.accepted, done.duplicates, done.decisions
    metrics.ingest_seconds.observe(time.perf_counter() - started)
    return _json(
        SegmentAnswer(
            success=True,
            accepted=accepted,
            duplicates=duplicates,
            ignored=out.ignored,
            links=len(out.links),
            decisions=decisions,
        ),
        200,
        cors_headers(origin),
    )


def _source(source: SegmentSource | None) -> SegmentSource:
    if source is None:
        raise Unauthorized(
            "invalid_write_key", "no Segment source has this write key", "$.writeKey"
        )
    return source


def _header_key(request: web.Request) -> str | None:
    """The write key of `Authorization: Basic base64(key:)` or `Bearer key`; None if
    the header is absent. A header that is present but unreadable is a 401."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic":
        try:
            user, _, _ = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = ""
        if user:
            return user
    raise Unauthorized(
        "invalid_credentials",
        "send the write key as HTTP Basic user (no password), or as Bearer",
    )


class _WriteKey(msgspec.Struct, forbid_unknown_fields=False):
    writeKey: str | None = None


def _body_key(body: bytes) -> str:
    try:
        key = msgspec.json.decode(body, type=_WriteKey).writeKey
    except msgspec.MsgspecError:
        key = None
    if not key:
        raise Unauthorized(
            "missing_credentials",
            "send the source's write key as HTTP Basic user (Segment libraries do)",
        )
    return key


def _json(answer: msgspec.Struct, status: int, headers: dict[str, str]) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(answer),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _refusal(request: web.Request, exc: ClientError) -> web.Response:
    headers = cors_headers(preflight_origin_allowed(request.app[SETTINGS], request))
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    body = SegmentRefusal(success=False, code=exc.code, message=exc.message, path=exc.path)
    if getattr(exc, "close_connection", False):
        return _ClosingResponse(request, body, exc.status, headers)
    return _json(body, exc.status, headers)


class _ClosingResponse(web.Response):
    """A refusal after which the connection is closed at once (a decompression bomb):
    aiohttp would otherwise read and discard the rest of the body for up to 10 s.
    The same as engine/http/errors.py does for Ringback's own shape."""

    def __init__(
        self, request: web.BaseRequest, body: SegmentRefusal, status: int, headers: dict[str, str]
    ) -> None:
        super().__init__(
            body=orjson.dumps(msgspec.to_builtins(body)),
            status=status,
            content_type="application/json",
            headers=headers,
        )
        self._closing_request = request
        self.force_close()

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        self._closing_request.protocol.force_close()
