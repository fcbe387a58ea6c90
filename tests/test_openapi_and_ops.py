"""Ops endpoints and the API description."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

from aiohttp import web
from conftest import EngineClient, event

from engine.http.openapi import CREDENTIALED
from engine.http.routes import ROUTES, openapi_document


async def test_openapi_describes_every_route(engine: EngineClient) -> None:
    status, doc = await engine.get_json("/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    from engine.http.app import add_routes

    app = web.Application()
    add_routes(app)
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method in ("HEAD",):
            continue
        assert path in doc["paths"], f"{route.method} {path} undocumented"
        assert route.method.lower() in doc["paths"][path], f"{route.method} {path}"
    batch = doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert batch["schema"]["$ref"].endswith("/Batch")
    assert "CalcProps" in doc["components"]["schemas"]


def test_openapi_schema_rejects_what_the_server_rejects() -> None:
    calc = openapi_document()["components"]["schemas"]["CalcProps"]
    assert calc["properties"]["term_months"]["maximum"] == 600
    assert "amount" in calc["required"]


async def test_health_and_readiness(engine: EngineClient) -> None:
    assert await engine.get_json("/healthz") == (200, {"status": "ok"})
    assert await engine.get_json("/readyz") == (200, {"status": "ready", "store": "up"})


async def test_metrics_pass_promtool(engine: EngineClient) -> None:
    await engine.post_events(engine.batch([event("page_view", page="/loans")]))
    await engine.post_events(b"{", content_type="application/json")
    async with engine.session.get(f"{engine.url}/metrics") as r:
        text = await r.text()
    for name in (
        "ringback_events_total",
        "ringback_duplicates_total",
        "ringback_rejected_total",
        "ringback_decisions_total",
        "ringback_triggers_total",
        "ringback_ingest_seconds",
        "ringback_decision_seconds",
        "ringback_valkey_seconds",
        "ringback_batches_total",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    assert 'ringback_rejected_total{code="invalid_json"} 1.0' in text
    assert shutil.which("promtool"), "promtool missing: make test installs Debian's prometheus"
    check = await asyncio.to_thread(
        subprocess.run, ["promtool", "check", "metrics"], input=text, text=True, capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


async def test_unknown_routes_and_methods_answer_json(engine: EngineClient) -> None:
    status, body = await engine.get_json("/nope")
    assert status == 404 and body["error"]["code"] == "not_found"
    async with engine.session.put(f"{engine.url}/v1/events") as r:
        assert r.status == 405
        assert (await r.json())["error"]["code"] == "method_not_allowed"


PUBLIC = {
    ("POST", "/v1/events"),
    ("OPTIONS", "/v1/events"),
    ("GET", "/v1/decisions"),
    ("OPTIONS", "/v1/decisions"),
    ("POST", "/v1/agents/login"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/dashboard"),
    ("GET", "/dashboard/{asset}"),
    ("GET", "/sdk.js"),
    ("GET", "/demo"),
    ("GET", "/demo/{name}"),
    ("POST", "/demo/login"),
    # Snowplow's collector paths: browser trackers carry no credential (a server app's
    # events need its key in the handler, engine/http/snowplow.py).
    ("POST", "/com.snowplowanalytics.snowplow/tp2"),
    ("OPTIONS", "/com.snowplowanalytics.snowplow/tp2"),
    ("GET", "/i"),
}


def test_the_route_table_declares_exactly_these_routes_public() -> None:
    declared = {(r.method, r.path) for r in ROUTES if r.auth not in CREDENTIALED}
    assert declared == PUBLIC


async def test_every_non_public_route_needs_credentials(engine: EngineClient) -> None:
    from engine.http.app import add_routes

    app = web.Application()
    add_routes(app)
    checked = 0
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if route.method == "HEAD" or (route.method, path) in PUBLIC:
            continue
        url = (
            path.replace("{customer_id}", "cust-1")
            .replace("{trigger_id}", "a" * 24)
            .replace("{decision_id}", "b" * 24)
        )
        async with engine.session.request(route.method, f"{engine.url}{url}", json={}) as r:
            assert r.status == 401, f"{route.method} {path} answered {r.status}"
            checked += 1
    assert checked >= 12
