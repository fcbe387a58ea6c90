"""CORS headers on every answer of the public browser routes, refusals included.

The snippet runs on a bank's page, an origin other than the engine's, and a browser
hides any answer without `Access-Control-Allow-Origin` from it: a refused batch (an
expired identity token, a 429 and its Retry-After, an invalid event) looked like a
network error, so the snippet retried it forever, kept a dead token and let its
outbox fill up. Handlers add CORS to their successes; this middleware sits outside
the error middleware, so every error answer (and one raised before the site is
known, such as invalid JSON) carries the same headers.

Any origin some configured site allows is answered with CORS, as a preflight is
(`preflight_origin_allowed`): an error is not data worth hiding from it. An origin no
site allows gets no CORS headers, whatever the status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping

from aiohttp import web

from engine.http.security import cors_headers, preflight_origin_allowed
from engine.http.state import SETTINGS

__all__ = ["BROWSER_PATHS", "cors_middleware"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BROWSER_PATHS = frozenset({"/v1/events", "/v1/decisions", "/com.snowplowanalytics.snowplow/tp2"})
"""Routes the snippet (and Snowplow's JS tracker) call from bank pages (their OPTIONS
preflight included)."""

_ACAO = "Access-Control-Allow-Origin"


def add_cors(headers: MutableMapping[str, str], origin: str | None) -> None:
    """Add the CORS headers for `origin`, keeping whatever `Vary` already says."""
    for name, value in cors_headers(origin).items():
        if name == "Vary" and headers.get("Vary") and "origin" not in headers["Vary"].lower():
            headers["Vary"] = f"{headers['Vary']}, {value}"
        elif name not in headers:
            headers[name] = value


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in BROWSER_PATHS or "Origin" not in request.headers:
        return await handler(request)  # no Origin: no CORS headers, whatever the answer
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # one the error middleware lets through
        add_cors(exc.headers, preflight_origin_allowed(request.app[SETTINGS], request))
        raise
    if _ACAO not in response.headers and not response.prepared:
        add_cors(response.headers, preflight_origin_allowed(request.app[SETTINGS], request))
    return response
