"""Operational endpoints: liveness, readiness, metrics.

/metrics says how busy the engine is and which rules fire; it is not for the world.
`metrics.token` makes every scrape present `Authorization: Bearer <token>`;
`metrics.port` moves /metrics to its own listener (an internal interface) and off
the main port. With neither, /metrics stays open only while the engine binds a
loopback address (the demo): on any other bind it answers 403 `metrics_closed`.
"""

from __future__ import annotations

from aiohttp import web

from engine.core.errors import Forbidden, NotFound
from engine.core.metrics import Metrics, render_metrics
from engine.core.settings import Settings
from engine.http.errors import json_response, make_error_middleware
from engine.http.security import is_loopback_host, require_api_token, require_bearer
from engine.http.state import METRICS, METRICS_LISTENER, RULES, SETTINGS, STORE

__all__ = [
    "build_metrics_app",
    "handle_healthz",
    "handle_metrics",
    "handle_readyz",
    "handle_rules_reload",
]

# Set on the metrics-only app that serves `metrics.host:metrics.port`.


async def handle_healthz(request: web.Request) -> web.Response:
    """The process is up and serving (does not touch Valkey: restarts would cascade)."""
    return json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    """Ready when Valkey answers: a load balancer stops sending us traffic otherwise."""
    up = await request.app[STORE].ping()
    request.app[METRICS].ready.set(1 if up else 0)
    if not up:
        return json_response(
            {"status": "unavailable", "store": "down"}, status=503, headers={"Retry-After": "2"}
        )
    return json_response({"status": "ready", "store": "up"})


def check_metrics_access(settings: Settings, request: web.Request, *, listener: bool) -> None:
    """Raise unless this request may read /metrics (see the module docstring)."""
    cfg = settings.metrics
    if cfg.port is not None and not listener:
        raise NotFound("not_found", "metrics are served on the metrics port (metrics.port)")
    if cfg.token is not None:
        require_bearer(request, cfg.token.reveal(), "/metrics")
    elif not listener and not is_loopback_host(settings.host):
        raise Forbidden(
            "metrics_closed",
            "the engine binds a non-loopback address: set metrics.token, "
            "or metrics.port to serve /metrics on an internal address",
        )
    elif not listener and any(h in request.headers for h in _PROXY_HEADERS):
        # Bound to loopback behind a reverse proxy on the same host, "loopback" is
        # everyone the proxy serves: a forwarded scrape needs the token.
        raise Forbidden(
            "metrics_closed",
            "this request came through a proxy: set metrics.token, or metrics.port to "
            "serve /metrics on an internal address",
        )


# Headers a reverse proxy adds (nginx, HAProxy, Envoy, cloud load balancers).
_PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP", "X-Forwarded-Host")


async def handle_metrics(request: web.Request) -> web.Response:
    check_metrics_access(
        request.app[SETTINGS], request, listener=request.app.get(METRICS_LISTENER, False)
    )
    body = render_metrics(request.app[METRICS])
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


def build_metrics_app(settings: Settings, metrics: Metrics) -> web.Application:
    """The app behind `metrics.host:metrics.port`: /metrics only (aggregated across
    workers like the main port's, so whichever worker answers reports the pool)."""
    app = web.Application(
        middlewares=[make_error_middleware(lambda code: metrics.rejected.labels(code).inc())]
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[METRICS_LISTENER] = True
    app.router.add_get("/metrics", handle_metrics)
    return app


async def handle_rules_reload(request: web.Request) -> web.Response:
    """`POST /v1/admin/rules/reload` (API token): reload now, say whether it took."""
    require_api_token(request.app[SETTINGS], request)
    holder = request.app.get(RULES)
    if holder is None:
        raise NotFound("no_rules", "this engine runs without a rules directory")
    ok = await holder.reload("admin API")
    body = {
        "reloaded": ok,
        "version": holder.current.version,
        "rules": len(holder.current.rules),
        "error": holder.last_error,
    }
    return json_response(body, status=200 if ok else 422)
