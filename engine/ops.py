"""Operational endpoints: liveness, readiness, metrics."""

from __future__ import annotations

from aiohttp import web

from engine.appkeys import METRICS, STORE
from engine.http_errors import json_response
from engine.metrics import render_metrics

__all__ = ["handle_healthz", "handle_metrics", "handle_readyz"]


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


async def handle_metrics(request: web.Request) -> web.Response:
    body = render_metrics(request.app[METRICS])
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )
