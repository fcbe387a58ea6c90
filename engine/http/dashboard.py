"""`/dashboard`: the contact-center page, and the supervisor's funnel.

Served by the engine with a strict Content-Security-Policy: scripts and styles only
from this origin, no inline script, no framing. The page renders every server value
with `textContent`; nothing from the server is ever parsed as HTML.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from engine.core.errors import Forbidden, NotFound
from engine.http.agents import authenticate
from engine.http.errors import json_response
from engine.http.state import CAPACITY, FUNNEL_CACHE, STORE
from engine.valkey import keys, streams

__all__ = ["add_state", "handle_asset", "handle_dashboard", "handle_funnel", "security_headers"]

_ASSETS = {
    "app.js": "application/javascript",
    "app.css": "text/css",
    "reports.js": "application/javascript",  # the supervisor's Reports section
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def security_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }


def _asset(name: str) -> bytes:
    return resources.files("engine").joinpath(f"http/dashboard_assets/{name}").read_bytes()


async def handle_dashboard(request: web.Request) -> web.Response:
    """The page itself holds no data: everything after it needs a signed-in agent."""
    return web.Response(
        body=_asset("index.html"),
        content_type="text/html",
        charset="utf-8",
        headers=security_headers(),
    )


async def handle_asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in _ASSETS:
        raise NotFound("not_found", "no such asset")
    return web.Response(body=_asset(name), content_type=_ASSETS[name], headers=security_headers())


# The funnel reads the newest entries of every shard (reading 20k oldest-first took
# ~300 ms with a 73 ms event-loop stall, and missed the recent ones once a shard held
# more); each worker reuses its last answer for a few seconds, so any number of
# supervisor tabs cost one read.
FUNNEL_ENTRIES_PER_SHARD = 5_000
FUNNEL_CACHE_S = 5.0


@dataclass
class FunnelCache:
    at: float = 0.0
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def add_state(app: web.Application) -> None:
    """The dashboard's per-worker state, set before the app starts."""
    app[FUNNEL_CACHE] = FunnelCache()


async def _funnel(client: Any) -> dict[str, dict[str, Any]]:
    rules: dict[str, dict[str, Any]] = {}
    rule_of: dict[str, str] = {}
    for shard in range(keys.TRIGGER_SHARDS):
        newest = await streams.xrevrange(
            client, keys.trigger_stream(shard), count=FUNNEL_ENTRIES_PER_SHARD
        )
        for _, fields in reversed(newest):
            kind = fields.get("kind")
            if kind in ("callback", "notify"):
                rule = fields.get("rule", "?")
                rule_of[fields.get("id", "")] = rule
                row = rules.setdefault(rule, {"fired": 0, "claimed": 0, "outcomes": {}})
                row["fired"] += 1
            elif kind == "claimed" and fields.get("trigger_id") in rule_of:
                rules[rule_of[fields["trigger_id"]]]["claimed"] += 1
            elif kind == "completed" and fields.get("trigger_id") in rule_of:
                outcomes = rules[rule_of[fields["trigger_id"]]]["outcomes"]
                outcome = fields.get("outcome", "?")
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return rules


async def handle_funnel(request: web.Request) -> web.Response:
    """Per-rule funnel over the recent triggers: fired -> claimed -> outcome."""
    principal = await authenticate(request)
    if principal.role not in ("supervisor", "system"):
        raise Forbidden("supervisors_only", "the funnel is for supervisors")
    cache = request.app[FUNNEL_CACHE]
    # `?fresh=1` (the Refresh button) reads now; the 15 s auto-refresh takes the cache.
    fresh = request.query.get("fresh") == "1"
    started = time.monotonic()
    async with cache.lock:  # concurrent tabs wait for one read, not one each
        if fresh:
            stale = cache.at < started  # nobody read since this request came in
        else:
            stale = started - cache.at > FUNNEL_CACHE_S
        if stale:
            cache.rules = await _funnel(request.app[STORE].client)
            cache.at = time.monotonic()
    rules = cache.rules
    monitor = request.app.get(CAPACITY)
    # Read now, not the monitor's last-second reading: the dashboard asks right after
    # its WebSocket opened, and the older reading said "Agents online 0" to a signed-in
    # supervisor (who is this worker's connected agent). One pipelined round trip.
    cap = await monitor.refresh() if monitor is not None else None
    return json_response(
        {
            "rules": rules,
            # Across all workers: this worker's count as of now, the others' as of
            # their last report (at most a second old). Connected dashboards, of any role.
            "floor": {
                "agents_online": cap.agents_online if cap else None,
                "callbacks_waiting": cap.queue if cap else None,
            },
        }
    )
