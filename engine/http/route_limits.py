"""Per-client-IP request budgets for the routes anyone may call without credentials.

Every public route costs the engine something a stranger can repeat for free: a
decision reads and decodes a profile and runs the rules (146 ms on the 2.35 MB
profile of issue 9), a login runs scrypt, the pages and `/openapi.json` are bytes on
the wire. Each (method, route) gets its own fixed one-minute budget per client IP,
sized for honest traffic behind a shared NAT (a bank office, a mobile carrier); over
it, the answer is 429 `rate_limited` with Retry-After (raised here, turned into JSON
by the error middleware, which must sit outside this one).

`POST /v1/events` is not here: ingest checks its own limiter (`IP_LIMITER`), per IP
and then per visitor in Valkey. Like that limiter, these are per worker and in
memory (checked before any round trip), exempt loopback unless
`limits.limit_loopback`, and trust X-Forwarded-For only from configured proxies.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from engine.core.settings import Settings
from engine.http.security import IpRateLimiter

__all__ = ["PUBLIC_ROUTE_BUDGETS_PER_MINUTE", "RouteLimits"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_ROUTE_BUDGETS_PER_MINUTE: dict[tuple[str, str], int] = {
    # One per page load of the snippet; same order as the events limit (1200/min).
    ("GET", "/v1/decisions"): 600,
    ("OPTIONS", "/v1/decisions"): 1200,
    ("OPTIONS", "/v1/events"): 1200,
    # Snowplow's JS tracker preflights its POSTs (the POST itself checks IP_LIMITER).
    ("OPTIONS", "/com.snowplowanalytics.snowplow/tp2"): 1200,
    # scrypt costs ~50 ms of CPU per attempt: few, and no password guessing at speed.
    ("POST", "/v1/agents/login"): 30,
    ("POST", "/demo/login"): 60,
    # Browsers cache these (ETag, immutable assets): a page view is not a request.
    ("GET", "/sdk.js"): 600,
    ("GET", "/demo"): 300,
    ("GET", "/demo/{name}"): 300,
    ("GET", "/dashboard"): 300,
    ("GET", "/dashboard/{asset}"): 600,
    ("GET", "/openapi.json"): 60,
    # Load balancers and monitors probe every few seconds.
    ("GET", "/healthz"): 600,
    ("GET", "/readyz"): 600,
    ("GET", "/metrics"): 120,
}
"""(method, route as registered) -> requests per minute per client IP, per worker."""


class RouteLimits:
    """One `IpRateLimiter` per public route, applied by `middleware`."""

    def __init__(
        self,
        settings: Settings,
        budgets_per_minute: Mapping[tuple[str, str], int] = PUBLIC_ROUTE_BUDGETS_PER_MINUTE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock  # wall-clock seconds; the minute windows follow it (tests pin it)
        self.limiters: dict[tuple[str, str], IpRateLimiter] = {
            route: IpRateLimiter(
                per_minute, settings.trusted_proxies, settings.limits.limit_loopback
            )
            for route, per_minute in budgets_per_minute.items()
        }

    def limiter_for(self, request: web.Request) -> IpRateLimiter | None:
        """The limiter of the route `request` matched (HEAD counts as GET), if public."""
        resource = request.match_info.route.resource
        if resource is None:  # no route matched: a cheap 404/405 answer
            return None
        method = "GET" if request.method == "HEAD" else request.method
        return self.limiters.get((method, resource.canonical))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        limiter = self.limiter_for(request)
        if limiter is not None:
            limiter.check(request, now_s=self.clock())  # raises RateLimited -> 429 + Retry-After
        return await handler(request)
