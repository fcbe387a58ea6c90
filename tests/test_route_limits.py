"""Every public route has a per-client-IP budget; over it, 429 JSON with Retry-After.

Issue 9: an unauthenticated `GET /v1/decisions` on a large profile cost 146 ms and
nothing limited how often a stranger could ask. Tests run on loopback, which the
limiters exempt by default, so these turn `limits.limit_loopback` on.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import pytest
from conftest import EngineClient, event, new_anon

from engine.core.settings import Settings
from engine.http import app as engine_app
from engine.http import route_limits
from engine.http.app import build_app

BUDGET = 3
ANON = new_anon()
# The routes' clock, pinned 10 s into a minute window: no window restarts mid-test,
# and Retry-After is exactly the 50 s left plus the rounding second.
PINNED_NOW_S = 1_800_000_010.0  # 1_800_000_000 s is a whole number of minutes
RETRY_AFTER_S = 51

# (method, route as registered) -> a concrete request on it: (path, JSON body or None).
PUBLIC_REQUESTS: dict[tuple[str, str], tuple[str, Any]] = {
    ("GET", "/v1/decisions"): (f"/v1/decisions?site=demo-bank&anonymous_id={ANON}", None),
    ("OPTIONS", "/v1/decisions"): ("/v1/decisions", None),
    ("OPTIONS", "/v1/events"): ("/v1/events", None),
    # Snowplow's tp2 preflight; the tp2 POST and GET /i are ingest (their own IP limit).
    ("OPTIONS", "/com.snowplowanalytics.snowplow/tp2"): (
        "/com.snowplowanalytics.snowplow/tp2",
        None,
    ),
    ("POST", "/v1/agents/login"): ("/v1/agents/login", {"user": "nobody", "password": "x"}),
    ("POST", "/demo/login"): ("/demo/login", {"user": "alex"}),
    ("GET", "/sdk.js"): ("/sdk.js", None),
    ("GET", "/demo"): ("/demo", None),
    ("GET", "/demo/{name}"): ("/demo/mortgages", None),
    ("GET", "/dashboard"): ("/dashboard", None),
    ("GET", "/dashboard/{asset}"): ("/dashboard/app.js", None),
    ("GET", "/openapi.json"): ("/openapi.json", None),
    ("GET", "/healthz"): ("/healthz", None),
    ("GET", "/readyz"): ("/readyz", None),
    ("GET", "/metrics"): ("/metrics", None),
}


def _limited(settings: Settings) -> Settings:
    return replace(settings, limits=replace(settings.limits, limit_loopback=True))


async def _request(engine: EngineClient, method: str, path: str, body: Any) -> tuple[int, Any, Any]:
    headers = {"Origin": "http://127.0.0.1"} if method == "OPTIONS" else {}
    if method == "OPTIONS":
        headers["Access-Control-Request-Method"] = "POST"
    async with engine.session.request(
        method, f"{engine.url}{path}", json=body, headers=headers
    ) as r:
        raw = await r.read()
        data = await r.json(content_type=None) if r.status == 429 else raw
        return r.status, data, r.headers


@pytest.fixture
def small_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every public route's budget down to BUDGET, so a test can go over it quickly;
    and the route limits' clock pinned (PINNED_NOW_S), so no window restarts mid-test
    however slow the machine, and nobody waits for a minute boundary."""
    for route in route_limits.PUBLIC_ROUTE_BUDGETS_PER_MINUTE:
        monkeypatch.setitem(route_limits.PUBLIC_ROUTE_BUDGETS_PER_MINUTE, route, BUDGET)
    pinned = functools.partial(route_limits.RouteLimits, clock=lambda: PINNED_NOW_S)
    monkeypatch.setattr(engine_app, "RouteLimits", pinned)


def test_every_public_route_but_event_ingest_has_a_budget(settings: Settings) -> None:
    app = build_app(settings, settings.redis_url)
    registered = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
    }
    budgets = route_limits.PUBLIC_ROUTE_BUDGETS_PER_MINUTE
    assert set(PUBLIC_REQUESTS) == set(budgets)
    assert set(budgets) <= registered  # no budget for a route that does not exist
    assert ("POST", "/v1/events") not in budgets  # ingest has its own IP + visitor limits
    assert all(0 < n <= 1200 for n in budgets.values())


@pytest.mark.usefixtures("small_budgets")
async def test_each_public_route_answers_429_with_retry_after_over_its_budget(
    make_engine: Any, settings: Settings
) -> None:
    engine = await make_engine(_limited(settings))
    for (method, _), (path, body) in PUBLIC_REQUESTS.items():
        for _ in range(BUDGET):
            status, data, _ = await _request(engine, method, path, body)
            assert status != 429, (method, path, data)
        status, data, headers = await _request(engine, method, path, body)
        assert status == 429, (method, path)
        assert data["error"]["code"] == "rate_limited", (method, path, data)
        assert int(headers["Retry-After"]) == RETRY_AFTER_S, (method, path)
    # Each route has its own budget: a spent /healthz leaves POST /v1/events alone.
    status, body, _ = await engine.post_events(engine.batch([event("page_view", page="/")]))
    assert status == 200, body


@pytest.mark.usefixtures("small_budgets")
async def test_event_ingest_keeps_its_own_limit_and_not_the_route_budgets(
    make_engine: Any, settings: Settings
) -> None:
    engine = await make_engine(_limited(settings))
    for _ in range(BUDGET * 3):
        status, body, _ = await engine.post_events(engine.batch([event("page_view", page="/")]))
        assert status == 200, body


@pytest.mark.usefixtures("small_budgets")
async def test_loopback_clients_are_not_limited_unless_configured(engine: EngineClient) -> None:
    for _ in range(BUDGET * 3):
        status, _, _ = await _request(engine, "GET", "/healthz", None)
        assert status == 200
