"""`POST /v1/events`: the hot path, read top to bottom like the data path.

    guard (IP limit, media type, encoding, size) -> parse (`engine.ingest.parse`:
    msgspec, nesting, event times corrected by `sent_at` and range-checked)
    -> check (site, origin, identity) -> update profile (ONE Valkey round trip)
    -> [merge, rare] -> decide -> [offer clicks and impressions, rare] -> respond

Nothing is written before every check has passed, so a refused batch leaves no
trace; the profile update itself is one atomic server-side function.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.core.errors import NotFound, UnsupportedMedia
from engine.core.settings import SiteConfig
from engine.core.vocabulary import EventType
from engine.decisions.inputs import decision_input
from engine.http.errors import json_response
from engine.http.security import check_origin, cors_headers, preflight_origin_allowed
from engine.http.state import DECIDER, IP_LIMITER, METRICS, PROFILES, SETTINGS, STORE, VERIFIER
from engine.ingest.bodies import read_body
from engine.ingest.parse import parse_batch
from engine.ingest.schema import Event, event_type
from engine.learning.labels import page_outcomes
from engine.valkey import keys

__all__ = ["Ingested", "handle_events", "handle_events_preflight", "ingest_batch", "ingest_visits"]

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

    answer = await ingest_batch(app, site, batch.anonymous_id, customer_id, batch.events, now_ms)
    metrics.ingest_seconds.observe(time.perf_counter() - started)
    return json_response(
        {
            "accepted": answer.accepted,
            "duplicates": answer.duplicates,
            "decisions": answer.decisions,
        },
        headers=cors_headers(origin),
    )


@dataclass(frozen=True, slots=True)
class Ingested:
    """What one visitor's batch did: events new to the profile, repeats, decisions."""

    accepted: int
    duplicates: int
    decisions: list[dict[str, Any]]


async def ingest_visits(
    app: web.Application,
    visits: Iterable[tuple[SiteConfig, str, str | None, Sequence[Event]]],
    now_ms: int,
) -> Ingested:
    """Events of many visitors in one request (a Segment batch, a Snowplow tp2 body):
    each visitor's (site, anonymous id, customer id, events) through `ingest_batch` in
    slices of at most `limits.max_events_per_batch`, as the snippet's batches are
    bounded; the counts and decisions summed."""
    step = app[SETTINGS].limits.max_events_per_batch
    accepted = duplicates = 0
    decisions: list[dict[str, Any]] = []
    for site, anonymous_id, customer_id, events in visits:
        for start in range(0, len(events), step):
            one = await ingest_batch(
                app, site, anonymous_id, customer_id, list(events[start : start + step]), now_ms
            )
            accepted += one.accepted
            duplicates += one.duplicates
            decisions.extend(one.decisions)
    return Ingested(accepted, duplicates, decisions)


async def ingest_batch(
    app: web.Application,
    site: SiteConfig,
    anonymous_id: str,
    customer_id: str | None,
    events: list[Event],
    now_ms: int,
) -> Ingested:
    """One visitor's checked, dated events -> profile -> [merge] -> decide -> [labels].

    Every source of events ends here: the snippet's `/v1/events` and the
    Segment-compatible routes (engine/http/segment.py). The caller has done every
    check (site, origin, identity, event times); `customer_id` is a verified customer
    or None. Counts events, duplicates, merges and decisions in the metrics.
    """
    settings, metrics = app[SETTINGS], app[METRICS]
    decider = app[DECIDER]
    result, merged = await app[PROFILES].ingest(
        site.key,
        anonymous_id,
        customer_id,
        events,
        now_ms,
        reserve=decider.reservations(customer_id, now_ms),
    )
    if merged is not None:
        metrics.merges.labels(merged).inc()

    custom: list[Event] = []  # accepted custom events: offer clicks and impressions?
    by_type: dict[str, int] = {}  # one `inc` per type, not per event (each takes a lock)
    for ev, flag in zip(events, result.accepted_flags, strict=False):
        if flag == "1":
            etype = event_type(ev)
            by_type[etype] = by_type.get(etype, 0) + 1
            if etype == EventType.CUSTOM:
                custom.append(ev)
    for etype, n in by_type.items():
        metrics.events_by_type[etype].inc(n)
    if result.duplicates:
        metrics.duplicates.inc(result.duplicates)
    metrics.batch_events.observe(len(events))

    decisions: list[dict[str, Any]] = []
    if result.accepted:
        d_started = time.perf_counter()
        decisions = await decider.decide(
            decision_input(
                result.fields,
                site=site.key,
                anonymous_id=anonymous_id,
                customer_id=customer_id,
                now_ms=now_ms,
                intent_half_life_s=settings.profile.intent_half_life_s,
                events=events,
                reservations=result.reservations,
                round_trips=result.round_trips,
            )
        )
        metrics.decision_seconds.observe(time.perf_counter() - d_started)
        by_action = metrics.decisions_by_action
        for d in decisions:
            action = str(d.get("action", "unknown"))
            counter = by_action.get(action)
            if counter is None:
                counter = by_action[action] = metrics.decisions.labels(action)
            counter.inc()
    if custom:  # labels for the learner (engine/learning/labels.py); most batches skip
        visitor = [keys.anonymous_prefix(site.key, anonymous_id)]
        if customer_id is not None:
            visitor.append(keys.customer_prefix(customer_id))
        ignored = await page_outcomes(app[STORE], visitor, custom, now_ms, settings)
        if ignored:  # another visitor's decision, or an unknown one
            metrics.rejected.labels("offer_event_ignored").inc(ignored)

    metrics.batches_by_result["accepted" if result.accepted else "duplicate"].inc()
    return Ingested(result.accepted, result.duplicates, decisions)


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
