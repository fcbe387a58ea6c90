"""The route table: every route of the HTTP interface, once.

The app registers its routes from `ROUTES` (engine/http/app.py) and `/openapi.json` is
generated from it (engine/http/openapi.py), so a route cannot be served undocumented
or documented with another shape. Each entry names its handler, who may call it, the
request body and query structs it reads and the answers it gives (engine/http/answers.py);
tests/test_route_table.py checks that real answers match what is declared here.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from engine.delivery.reports import ConversionsReport, FunnelReport
from engine.delivery.uplift import Uplift
from engine.http import (
    agents,
    assets,
    attributes,
    context,
    conversions,
    customers,
    dashboard,
    ingest,
    ops,
    reports,
    segment,
    snowplow,
    triggers,
)
from engine.http import answers as a
from engine.http import models as api_models
from engine.http import profiles as api_profiles
from engine.http.errors import json_response
from engine.http.openapi import Auth, Reply, Route, build_document
from engine.http.reports import ConversionsQuery, SegmentSizes, SegmentsQuery, UpliftQuery
from engine.http.reports import FunnelQuery as ReportFunnelQuery
from engine.ingest.identity import CUSTOMER_ID_RE
from engine.ingest.schema import AnonymousId, Batch, SiteKey
from engine.ingest.segment import Alias, BatchBody, Identify, Page, Track
from engine.ingest.snowplow import PayloadData, PixelEvent
from engine.learning.labels import ConversionBody
from engine.profile.attributes import CustomerAttributes

__all__ = [
    "PATH_PARAMETERS",
    "ROUTES",
    "DecisionsQuery",
    "DemoLoginBody",
    "FunnelQuery",
    "PixelQuery",
    "handle_openapi",
    "openapi_document",
]

# -- what the table's requests carry, where no module of the data path declares it ------

HexId = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{24}$")]
CustomerId = Annotated[str, msgspec.Meta(pattern=CUSTOMER_ID_RE.pattern)]

PATH_PARAMETERS: dict[str, Any] = {
    "customer_id": CustomerId,
    "decision_id": HexId,
    "trigger_id": HexId,
    "asset": str,
    "name": str,
}
"""The type of each `{name}` in a route's path (the same name means the same thing)."""


class DecisionsQuery(msgspec.Struct, forbid_unknown_fields=True):
    site: SiteKey
    anonymous_id: AnonymousId


class FunnelQuery(msgspec.Struct, forbid_unknown_fields=True):
    fresh: Literal["1"] | msgspec.UnsetType = msgspec.UNSET  # read now, not the 5 s cache


# `GET /i`'s query string: one tracker protocol event, each text value at most
# PIXEL_VALUE_MAX characters (engine.ingest.snowplow.PixelEvent, what the handler checks).
PixelQuery = PixelEvent


class DemoLoginBody(msgspec.Struct, forbid_unknown_fields=True):
    user: Literal["alex", "sam"]  # engine.http.assets.DEMO_CUSTOMERS


# -- the table ------------------------------------------------------------------------

OK = "OK"
_HTML = ("text/html",)
_CSV = ("text/csv",)  # a report's format=csv
_PREFLIGHT: dict[int, Reply] = {204: Reply("Allowed"), 403: Reply("Origin not allowed")}
_NO_TOKEN = "No/bad API token"


async def handle_openapi(request: web.Request) -> web.Response:
    """`GET /openapi.json`: this table, as OpenAPI 3.1."""
    return json_response(openapi_document())


_SEGMENT_REFUSALS: dict[int, Reply] = {
    400: Reply("Invalid message (code + JSON path), Segment's shape", segment.SegmentRefusal),
    401: Reply("Missing or unknown write key, Segment's shape", segment.SegmentRefusal),
    403: Reply("Origin not allowed for the source's site", segment.SegmentRefusal),
    413: Reply("Body over segment.max_body_bytes (after gzip)", segment.SegmentRefusal),
    415: Reply("Unsupported media type or content encoding", segment.SegmentRefusal),
    429: Reply("Rate limited (Retry-After)", segment.SegmentRefusal),
}
_SEGMENT_AUTH = (
    "Segment's HTTP Tracking API, for Segment's server libraries "
    'unchanged (README "Connect your existing tracking"). The source\'s write key is '
    "the HTTP Basic user (no password; what the libraries send), a Bearer token or "
    "`writeKey` in the body. A browser source's userId is only a hint; a server "
    "source's (secret key) is the customer. `messageId` is the event id: a retry counts "
    "once. Refusals are `{success: false, code, message, path}`; 503 is Ringback's error "
    "body (retry)."
)


def _segment(path: str, handler: Any, summary: str, body: Any) -> Route:
    """A route of the Segment-compatible API (engine/http/segment.py)."""
    return Route(
        "POST",
        path,
        handler,
        Auth.API_TOKEN,  # the write key, as Basic or Bearer: see the description
        summary,
        ("segment",),
        {200: Reply(OK, segment.SegmentAnswer), **_SEGMENT_REFUSALS},
        {503: "Profile store unavailable (Retry-After)"},
        body=body,
        body_media=("application/json", "text/plain"),
        description=_SEGMENT_AUTH,
    )


_SNOWPLOW_AUTH = (
    "Snowplow's tracker protocol, for Snowplow's trackers unchanged (README \"Connect "
    'your existing tracking"). `aid` names the app, `[[snowplow.apps]]` its site; a '
    "browser app's `uid` is only a hint, a server app's events need `Authorization: "
    "Bearer <its key>` and its `uid` is the customer. `eid` is the event id: a retry "
    "counts once. Refusals are Ringback's error body; a body too large or of another "
    "media type is a 400 (trackers retry 413 and 415)."
)
_SNOWPLOW_REFUSALS = {
    400: "Invalid payload or event (code + JSON path); also payload_too_large and "
    "unsupported_media_type (trackers would retry 413/415)",
    401: "A server app's events without its key, or an unknown key",
    403: "Origin not allowed for the app's site",
    503: "Profile store unavailable (Retry-After)",
}


def _preflight(path: str) -> Route:
    """The CORS preflight of a browser route: only configured sites' origins get a yes."""
    return Route(
        "OPTIONS",
        path,
        ingest.handle_events_preflight,
        Auth.SITE_ORIGIN,
        "CORS preflight",
        ("ingest",),
        _PREFLIGHT,
    )


ROUTES: tuple[Route, ...] = (
    # The snippet, from bank pages: CORS for the sites' origins.
    Route(
        "POST",
        "/v1/events",
        ingest.handle_events,
        Auth.SITE_ORIGIN,
        "Ingest a batch of browser events; returns decisions",
        ("ingest",),
        {200: Reply(OK, a.IngestAnswer)},
        {
            400: "Invalid batch (code + JSON path)",
            401: "Identity token missing a valid signature or expired",
            403: "Origin not allowed or token for another site",
            404: "Unknown site",
            413: "Batch too large",
            415: "Unsupported media type",
            503: "Profile store unavailable (Retry-After)",
        },
        body=Batch,
        body_media=("application/json", "text/plain"),  # text/plain: no CORS preflight
    ),
    _preflight("/v1/events"),
    # Segment's libraries, from bank pages (browser write key) and backends (server key).
    _segment(
        "/v1/batch",
        segment.handle_batch,
        "Segment batch: track/page/screen/identify/alias/group messages, 500 KB, gzip",
        BatchBody,
    ),
    _segment("/v1/track", segment.handle_track, "Segment track: mapped by event name", Track),
    _segment("/v1/page", segment.handle_page, "Segment page: a page_view", Page),
    _segment(
        "/v1/identify",
        segment.handle_identify,
        "Segment identify: links anonymousId to userId (trusted sources only)",
        Identify,
    ),
    _segment(
        "/v1/alias",
        segment.handle_alias,
        "Segment alias: links previousId to userId (trusted sources only)",
        Alias,
    ),
    # Snowplow's trackers, from bank pages (JS) and backends (server apps, with a key).
    Route(
        "POST",
        "/com.snowplowanalytics.snowplow/tp2",
        snowplow.handle_tp2,
        Auth.SITE_ORIGIN,
        "Snowplow tracker protocol (payload_data 1-0-4): page views, structured and "
        "self-describing events",
        ("snowplow",),
        {200: Reply(OK, snowplow.SnowplowAnswer)},
        _SNOWPLOW_REFUSALS,
        body=PayloadData,
        body_media=("application/json", "text/plain"),
        description=_SNOWPLOW_AUTH,
    ),
    Route(
        "OPTIONS",
        "/com.snowplowanalytics.snowplow/tp2",
        snowplow.handle_tp2_preflight,
        Auth.SITE_ORIGIN,
        "CORS preflight (credentials allowed: the JS tracker sends them)",
        ("snowplow",),
        _PREFLIGHT,
    ),
    Route(
        "GET",
        "/i",
        snowplow.handle_pixel,
        Auth.SITE_ORIGIN,
        "Snowplow tracker protocol, one event in the query string; a 1x1 GIF",
        ("snowplow",),
        {200: Reply("1x1 GIF", media=("image/gif",))},
        _SNOWPLOW_REFUSALS,
        query=PixelQuery,
        description=_SNOWPLOW_AUTH,
    ),
    Route(
        "GET",
        "/v1/decisions",
        api_profiles.handle_decisions_get,
        Auth.SITE_ORIGIN,
        "Current offers for a page load",
        ("ingest",),
        {200: Reply(OK, a.DecisionsAnswer)},
        {400: "Invalid parameters", 404: "Unknown site"},
        query=DecisionsQuery,
    ),
    _preflight("/v1/decisions"),
    # Bank systems (API token).
    Route(
        "GET",
        "/v1/decisions/{decision_id}",
        api_profiles.handle_decision_audit,
        Auth.API_TOKEN,
        "The audit record of a decision: inputs, rules matched and suppressed, policy "
        "checks, scores, arbitration",
        ("decisions",),
        {200: Reply(OK, a.AuditRecord)},
        {401: _NO_TOKEN, 404: "Unknown or expired (records are kept 30 days)"},
    ),
    Route(
        "GET",
        "/v1/profiles/{customer_id}",
        api_profiles.handle_profile_get,
        Auth.API_TOKEN,
        "Read a customer's live profile",
        ("profiles",),
        {200: Reply(OK, a.ProfileAnswer)},
        {401: _NO_TOKEN, 404: "No such profile"},
    ),
    Route(
        "DELETE",
        "/v1/profiles/{customer_id}",
        api_profiles.handle_profile_delete,
        Auth.API_TOKEN,
        "Erase every key of a customer and linked anonymous ids",
        ("profiles",),
        {200: Reply(OK, a.ErasureAnswer)},
        {401: _NO_TOKEN},
    ),
    Route(
        "PUT",
        "/v1/profiles/{customer_id}/attributes",
        attributes.handle_attributes_put,
        Auth.API_TOKEN,
        "Replace a customer's CRM attributes",
        ("profiles",),
        {200: Reply(OK, a.AttributesAnswer)},
        {400: "Invalid attributes (code + JSON path)", 401: _NO_TOKEN},
        body=CustomerAttributes,
    ),
    Route(
        "POST",
        "/v1/outcomes",
        triggers.handle_outcome,
        Auth.API_TOKEN,
        "Outcome of a decision from a bank system",
        ("decisions",),
        {200: Reply(OK, a.OutcomeAnswer)},
        {400: "Invalid outcome", 401: _NO_TOKEN, 404: "Unknown decision"},
        body=triggers.OutcomeBody,
    ),
    Route(
        "POST",
        "/v1/conversions",
        conversions.handle_conversion,
        Auth.API_TOKEN,
        "A sale the bank's systems saw, credited (last touch) to the customer's latest "
        "decision for the product within learning.conversion_window_s before ts",
        ("decisions",),
        {200: Reply(OK, a.ConversionAnswer)},
        {
            400: "Invalid conversion (code + JSON path)",
            401: _NO_TOKEN,
            404: "Unknown customer (never seen, or erased)",
        },
        body=ConversionBody,
        description=(
            "Records outcome `converted` (with `value`) for the customer's most recent "
            "decision, offer or callback, whose offer is for `product` and was made "
            "within `learning.conversion_window_s` before `ts` (last touch); decisions "
            "made while anonymous and holdout members' count. `attributed` is null when "
            "there is none. The same `conversion_id` twice records once."
        ),
    ),
    Route(
        "POST",
        "/v1/admin/rules/reload",
        ops.handle_rules_reload,
        Auth.API_TOKEN,
        "Reload the rule set now; a broken set is rejected (422, with file:line:col) and "
        "the previous one keeps serving",
        ("admin",),
        {
            200: Reply(OK, a.ReloadAnswer),
            422: Reply("Rejected; previous rules keep serving", a.ReloadAnswer),
        },
        {401: _NO_TOKEN, 404: "This engine runs without a rules directory"},
    ),
    Route(
        "GET",
        "/v1/models",
        api_models.handle_models,
        Auth.API_TOKEN,
        "The published models this worker scores with: version, samples, AUC, log loss, "
        "maturity (an immature model's decisions use its prior, the observed rate)",
        ("models",),
        {200: Reply(OK, a.ModelsAnswer)},
        {401: _NO_TOKEN},
    ),
    # Agents (session cookie + CSRF token) and CTI (API token).
    Route(
        "POST",
        "/v1/agents/login",
        agents.handle_login,
        Auth.PUBLIC,
        "Agent sign-in: sets an HttpOnly SameSite=Strict session cookie and returns the "
        "CSRF token for X-CSRF-Token",
        ("agents",),
        {200: Reply(OK, a.LoginAnswer)},
        {401: "Wrong user or password"},
        body=agents.LoginBody,
    ),
    Route(
        "POST",
        "/v1/agents/logout",
        agents.handle_logout,
        Auth.AGENT,
        "Sign out (CSRF token required)",
        ("agents",),
        {200: Reply(OK, a.LogoutAnswer)},
        {401: "Not signed in", 403: "CSRF token missing"},
    ),
    Route(
        "GET",
        "/v1/agents/me",
        agents.handle_me,
        Auth.AGENT,
        "Who is signed in (and the CSRF token)",
        ("agents",),
        {200: Reply(OK, a.MeAnswer)},
        {401: "Not signed in"},
    ),
    Route(
        "POST",
        "/v1/triggers/{trigger_id}/claim",
        triggers.handle_claim,
        Auth.AGENT,
        "Claim a callback: exactly one agent wins",
        ("triggers",),
        {200: Reply(OK, a.ClaimAnswer)},
        {
            401: "Not signed in",
            403: "CSRF token missing",
            404: "No such trigger",
            409: "Already claimed (by whom)",
            410: "Expired and withdrawn",
        },
    ),
    Route(
        "POST",
        "/v1/triggers/{trigger_id}/complete",
        triggers.handle_complete,
        Auth.AGENT,
        "Record the outcome of a claimed callback",
        ("triggers",),
        {200: Reply(OK, a.CompleteAnswer)},
        {403: "Claimed by someone else", 409: "Not claimed, or already completed"},
        body=triggers.CompleteBody,
    ),
    Route(
        "GET",
        "/v1/triggers/ws",
        triggers.handle_ws,
        Auth.AGENT,
        "WebSocket: a snapshot of open callbacks, then every new trigger, claim and completion",
        ("triggers",),
        {101: Reply("Switching protocols")},
        {
            400: "Not a WebSocket handshake",
            401: "Not signed in",
            403: "Not the dashboard's own origin",
        },
    ),
    Route(
        "GET",
        "/v1/customers/{customer_id}/context",
        context.handle_context,
        Auth.AGENT,
        "Screen-pop for agents and CTI: presence, recent activity, calculators, best "
        "offer, contact history, and the call guide (the bank's quote, what changed, "
        "the offer and why)",
        ("agents",),
        {200: Reply(OK, context.ScreenPopAnswer)},
        {401: "No credentials", 404: "Unknown customer"},
    ),
    # -- call guide: inbound screen-pop (helper G's block) --
    Route(
        "POST",
        "/v1/agents/inbound",
        context.handle_inbound,
        Auth.AGENT,
        "A call is coming in: find the caller by phone number (E.164) or customer id, "
        "write `inbound_call` to their contact history, answer with the screen-pop",
        ("agents",),
        {
            200: Reply(OK, context.ScreenPopAnswer),
            409: Reply(
                "Several customers share this number (`ambiguous_caller`): their ids, to "
                "pick one and ask again by `customer_id`; nothing is written",
                context.AmbiguousCaller,
            ),
        },
        {
            401: "No credentials",
            403: "CSRF token missing",
            404: "No customer has this number or id (`unknown_caller`)",
        },
        body=context.InboundBody,
        description=(
            "The number is looked up by its keyed hash (`[privacy] phone_key`; numbers are "
            "never stored: the CRM's `phone` attribute puts the customer in the number's "
            "index set, which a household or joint account may share). The contact history "
            "entry names the agent (or API token) who took the call, how the caller was "
            "matched, and when."
        ),
    ),
    # -- end of helper G's block --
    Route(
        "GET",
        "/v1/customers/{customer_id}/decisions",
        customers.handle_customer_decisions,
        Auth.AGENT,
        "Why was this customer called, or not? Their audited decisions, newest first "
        "(linked anonymous visits included): made, held out, or suppressed and why "
        "(supervisors, API token)",
        ("reports",),
        {200: Reply(OK, a.CustomerDecisionsAnswer)},
        {
            400: "Invalid parameters",
            403: "Supervisors only",
            404: "Unknown customer (never seen, or erased)",
        },
        query=customers.CustomerDecisionsQuery,
        description=(
            "Each decision: rule, action, channel, offer, `holdout`, `suppressed` (the "
            "eligibility or contact-policy reason a matching contact rule was not carried "
            "out, recorded once per rule, reason and window), arbitration `factors`, "
            "`model` and a one-line `why`. `full=1` adds the feature snapshot and the rule "
            "trace. Records are kept 30 days and erased with the customer."
        ),
    ),
    Route(
        "GET",
        "/v1/supervisor/funnel",
        dashboard.handle_funnel,
        Auth.AGENT,
        "Per-rule funnel: fired -> claimed -> outcomes (supervisors); cached per worker "
        "for 5 s unless fresh=1",
        ("agents",),
        {200: Reply(OK, a.FunnelAnswer)},
        {403: "Supervisors only"},
        query=FunnelQuery,
    ),
    Route(
        "GET",
        "/v1/reports/uplift",
        reports.handle_uplift,
        Auth.AGENT,
        "A rule's treated customers against its holdout: conversion rates, uplift and "
        "its 95% interval, over the days decisions were made (supervisors, API token)",
        ("reports",),
        {200: Reply(OK, Uplift)},
        {400: "Invalid parameters", 403: "Supervisors only"},
        query=UpliftQuery,
    ),
    # Reports (helper R's block): dated, by rule and dimension, JSON or CSV.
    Route(
        "GET",
        "/v1/reports/funnel",
        reports.handle_funnel,
        Auth.AGENT,
        "Per-rule funnel of the triggers fired over a range of days: fired -> claimed "
        "(and within sla_s of being due) -> completed -> connected -> converted "
        "(supervisors, API token)",
        ("reports",),
        {200: Reply(OK, FunnelReport, media=_CSV)},
        {400: "Invalid parameters", 403: "Supervisors only"},
        query=ReportFunnelQuery,
        description=(
            "Counted by the UTC day each trigger fired: a later claim, call or sale counts "
            "with its trigger's day. `by` groups by rule (default) or by the trigger's "
            "campaign, segment, branch or customer value band; `total` counts every "
            "trigger once. `connected`: completed having reached the customer (connected, "
            "converted or not interested); `converted`: the trigger's decision converted "
            "(an agent's or the bank's report, counted once). `due`: the phone callbacks "
            "among them (e-mail and SMS are never claimed); `sla_attainment` is "
            "claimed_in_sla / due, so a callback that expired unclaimed is a miss. `sla_s` "
            "is one of the claim-delay buckets, measured from when the callback was due "
            "(its scheduled opening, else its creation). `format=csv` gives the rows as "
            "CSV (an attachment)."
        ),
    ),
    Route(
        "GET",
        "/v1/reports/conversions",
        reports.handle_conversions,
        Auth.AGENT,
        "Decisions (treated and holdout), conversions, rates and uplift with its 95% "
        "interval by campaign, segment, branch or value band (supervisors, API token)",
        ("reports",),
        {200: Reply(OK, ConversionsReport, media=_CSV)},
        {400: "Invalid parameters", 403: "Supervisors only"},
        query=ConversionsQuery,
    ),
    Route(
        "GET",
        "/v1/reports/segments",
        reports.handle_segments,
        Auth.AGENT,
        "Each segment's size over time: active members (distinct visitors who had a "
        "batch in it that day), entries and exits per day (supervisors, API token)",
        ("reports",),
        {200: Reply(OK, SegmentSizes, media=_CSV)},
        {400: "Invalid parameters", 403: "Supervisors only"},
        query=SegmentsQuery,
    ),
    Route(
        "GET",
        "/dashboard",
        dashboard.handle_dashboard,
        Auth.PUBLIC,
        "The contact-center dashboard (HTML)",
        ("pages",),
        {200: Reply("HTML page", media=_HTML)},
    ),
    Route(
        "GET",
        "/dashboard/{asset}",
        dashboard.handle_asset,
        Auth.PUBLIC,
        "Dashboard script and styles",
        ("pages",),
        {200: Reply("Asset", media=("application/javascript", "text/css"))},
        {404: "No such asset"},
    ),
    # The snippet and the demo bank site.
    Route(
        "GET",
        "/sdk.js",
        assets.handle_sdk,
        Auth.PUBLIC,
        "The browser snippet (minified; gzip, strong ETag, 5 min cache)",
        ("pages",),
        {
            200: Reply("JavaScript", media=("application/javascript",)),
            304: Reply("Not modified (If-None-Match)"),
        },
        {404: "Snippet not built"},
    ),
    Route(
        "GET",
        "/demo",
        assets.handle_demo_page,
        Auth.PUBLIC,
        "The demo bank site (HTML), embedding the snippet as a bank would",
        ("pages",),
        {200: Reply("HTML page", media=_HTML)},
        {404: "No demo site"},
    ),
    Route(
        "GET",
        "/demo/{name}",
        assets.handle_demo_page,
        Auth.PUBLIC,
        "A demo page (mortgages, loans, cards, savings) or asset",
        ("pages",),
        {200: Reply("Page or asset", media=(*_HTML, "application/javascript", "text/css"))},
        {404: "No such page"},
    ),
    Route(
        "POST",
        "/demo/login",
        assets.handle_demo_login,
        Auth.PUBLIC,
        "Demo sites only: mint an identity token for a demo customer (stands in for the "
        "bank's backend)",
        ("pages",),
        {200: Reply(OK, a.DemoLoginAnswer)},
        {400: "Unknown user or bad body", 404: "Not a demo deployment"},
        body=DemoLoginBody,
    ),
    # Operations.
    Route(
        "GET",
        "/healthz",
        ops.handle_healthz,
        Auth.PUBLIC,
        "Liveness",
        ("ops",),
        {200: Reply(OK, a.HealthAnswer)},
    ),
    Route(
        "GET",
        "/readyz",
        ops.handle_readyz,
        Auth.PUBLIC,
        "Readiness (Valkey reachable)",
        ("ops",),
        {200: Reply(OK, a.ReadyAnswer), 503: Reply("Valkey unreachable", a.ReadyAnswer)},
    ),
    Route(
        "GET",
        "/metrics",
        ops.handle_metrics,
        Auth.METRICS,
        "Prometheus metrics (text format 0.0.4)",
        ("ops",),
        {200: Reply(OK, media=("text/plain",))},
        {
            401: "metrics.token is set and was not presented",
            403: "Non-loopback bind and no metrics.token",
            404: "Served on the metrics port (metrics.port)",
        },
        description=(
            "With `metrics.token` set, a Bearer token is required; with `metrics.port` "
            "set, served only on that listener (404 here). With neither, open only while "
            "the engine binds loopback and the scrape did not come through a proxy (403 "
            "`metrics_closed` otherwise)."
        ),
    ),
    Route(
        "GET",
        "/openapi.json",
        handle_openapi,
        Auth.PUBLIC,
        "This document",
        ("ops",),
        {200: Reply(OK, dict[str, Any])},
    ),
)


DESCRIPTION = "Real-time web-behaviour personalisation and callback engine for banks."


@cache
def openapi_document() -> dict[str, Any]:
    """The document of `ROUTES`, built once per process."""
    return build_document(ROUTES, PATH_PARAMETERS, DESCRIPTION)
