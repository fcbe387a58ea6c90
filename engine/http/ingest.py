"""`POST /v1/events`: the hot path, read top to bottom like the data path.

    guard (IP limit, media type, encoding, size) -> parse (msgspec, nesting)
    -> check (site, origin, timestamps, identity) -> update profile (ONE Valkey
    round trip) -> [merge, rare] -> decide -> respond

Nothing is written before every check has passed, so a refused batch leaves no
trace; the profile update itself is one atomic server-side function.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from aiohttp import web

from engine.core.errors import BadRequest, NotFound, UnsupportedMedia
from engine.decisions.inputs import DecisionInput
from engine.http.errors import json_response
from engine.http.security import check_origin, cors_headers, preflight_origin_allowed
from engine.http.state import DECIDER, IP_LIMITER, METRICS, PROFILES, SETTINGS, VERIFIER
from engine.ingest.bodies import MAX_JSON_DEPTH, nesting_overflow, read_body, too_deeply_nested
from engine.ingest.schema import Batch, decode_batch, event_type
from engine.profile.profiles import customer_attributes, decode_profile

__all__ = ["handle_events", "handle_events_preflight", "parse_batch"]

_ACCEPTED_MEDIA = ("application/json", "text/plain")


async def handle_events(request: web.Request) -> web.Response:
    app = request.app
    settings, metrics = app[SETTINGS], app[METRICS]
    started = time.perf_counter()
    app[IP_LIMITER].check(request)

    body = await _read_body(request, settings.limits.max_body_bytes)
    now_ms = int(time.time() * 1000)
    batch = parse_batch(
        body,
        now_ms,
        settings.limits.max_event_age_s,
        settings.limits.max_event_future_s,
        settings.limits.max_events_per_batch,
    )
    site = settings.sites.get(batch.site)
    if site is None:
        raise NotFound("unknown_site", f"site {batch.site!r} is not configured", "$.site")
    origin = check_origin(site, request)

    customer_id = None
    if batch.identity is not None:
        customer_id = app[VERIFIER].verify(site, batch.identity)

    result, merged = await app[PROFILES].ingest(
        site.key, batch.anonymous_id, customer_id, batch.events, now_ms
    )
    if merged is not None:
        metrics.merges.labels(merged).inc()
    fields = result.fields

    for ev, flag in zip(batch.events, result.accepted_flags, strict=False):
        if flag == "1":
            metrics.events_by_type[event_type(ev)].inc()
    if result.duplicates:
        metrics.duplicates.inc(result.duplicates)
    metrics.batch_events.observe(len(batch.events))

    decisions: list[dict[str, Any]] = []
    if result.accepted:
        d_started = time.perf_counter()
        profile = decode_profile(
            fields, now_ms, settings.profile.intent_half_life_s, known=customer_id is not None
        )
        decisions = await app[DECIDER].decide(
            DecisionInput(
                site=site.key,
                anonymous_id=batch.anonymous_id,
                customer_id=customer_id,
                profile=profile,
                customer=customer_attributes(fields),
                events=list(batch.events),
                now_ms=now_ms,
            )
        )
        metrics.decision_seconds.observe(time.perf_counter() - d_started)
        for d in decisions:
            metrics.decisions.labels(str(d.get("action", "unknown"))).inc()

    metrics.batches.labels("accepted" if result.accepted else "duplicate").inc()
    metrics.ingest_seconds.observe(time.perf_counter() - started)
    return json_response(
        {"accepted": result.accepted, "duplicates": result.duplicates, "decisions": decisions},
        headers=cors_headers(origin),
    )


async def handle_events_preflight(request: web.Request) -> web.Response:
    """CORS preflight: only origins some configured site allows get a yes."""
    origin = preflight_origin_allowed(request.app[SETTINGS], request)
    if origin is None:
        return web.Response(status=403)
    headers = cors_headers(origin)
    headers.update(
        {
            "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
        }
    )
    return web.Response(status=204, headers=headers)


async def _read_body(request: web.Request, max_bytes: int) -> bytes:
    media = request.content_type
    if media not in _ACCEPTED_MEDIA:
        raise UnsupportedMedia(
            "unsupported_media_type",
            f"send application/json or text/plain, not {media or 'nothing'}",
        )
    return await read_body(request, max_bytes)


def parse_batch(
    body: bytes, now_ms: int, max_age_s: int, max_future_s: int, max_events: int = 100
) -> Batch:
    """Decode, validate and sanity-check a batch; every error names its JSON path."""
    try:
        batch = decode_batch(body)
    except RecursionError as exc:  # msgspec skips unknown fields recursively: ~1000 deep
        raise too_deeply_nested(nesting_overflow(body) or "$") from exc
    except msgspec.ValidationError as exc:
        _check_nesting(body, 0)  # too deep is the answer for a body that is also invalid
        message, path = _split_msgspec_error(str(exc))
        raise BadRequest("invalid_event", message, path) from exc
    except msgspec.DecodeError as exc:
        _check_nesting(body, 0)
        raise BadRequest("invalid_json", f"body is not valid JSON: {exc}", "$") from exc
    _check_nesting(body, len(batch.events))
    if len(batch.events) > max_events:
        raise BadRequest("too_many_events", f"at most {max_events} events per batch", "$.events")
    oldest = now_ms - max_age_s * 1000
    newest = now_ms + max_future_s * 1000
    for i, ev in enumerate(batch.events):
        if not oldest <= ev.ts <= newest:
            raise BadRequest(
                "timestamp_out_of_range",
                f"event timestamp must be within {max_age_s}s in the past and "
                f"{max_future_s}s in the future of the server clock",
                f"$.events[{i}].ts",
            )
    return batch


def _check_nesting(body: bytes, n_events: int) -> None:
    """Refuse a decoded batch nested deeper than `MAX_JSON_DEPTH` (unknown fields can).

    Cheap for ordinary batches: the batch, its events list and each event are
    containers at depths 1-3, and only what nests inside ONE event adds depth; every
    other event's `props` and `data` (at most two per event on the deepest chain) sit
    beside it. So a body is at most `openers + 1 - n_events - max(0, keys - 2)` deep,
    where `keys` counts `"props"` and `"data"`; only past the cap is it scanned. A hostile body can
    fake those keys inside strings to slip under the estimate: it then decodes
    (msgspec skips what it does not know) or ends in msgspec's RecursionError, which
    `parse_batch` answers with the same 400.
    """
    openers = body.count(b"{") + body.count(b"[")
    siblings = body.count(b'"props"') + body.count(b'"data"')
    if openers + 1 - n_events - max(0, siblings - 2) > MAX_JSON_DEPTH:
        path = nesting_overflow(body, MAX_JSON_DEPTH)
        if path is not None:
            raise too_deeply_nested(path, MAX_JSON_DEPTH)


def _split_msgspec_error(text: str) -> tuple[str, str]:
    """msgspec says 'Expected `int`, got `str` - at `$.events[3].props.amount`'."""
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        return text, "$"
    return message, where.rstrip("`")
