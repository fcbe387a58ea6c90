"""Refusals the snippet can read from a bank's own origin, and what it does with them.

A browser hides every answer without `Access-Control-Allow-Origin` from the page's
scripts. When only 200s carried it, a snippet on a bank page saw a 401 or a 429 as a
network error: it kept an expired identity token and retried it forever, ignored
Retry-After, and its outbox grew in localStorage. Here the bank page really is another
origin: a second aiohttp server on its own loopback port, allowed by the site, loading
the snippet from the engine as a bank does. What arrives is read from Valkey, and when
the engine received each batch is recorded by the engine's own server.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from browser import chromium
from conftest import EngineClient, event, new_anon, now_ms
from test_sdk_browser import STUB, anon_id, rb_storage, wait_for

from engine.core.metrics import Metrics
from engine.core.settings import Settings
from engine.http.app import build_app
from engine.ingest.identity import mint_token
from engine.profile import layout
from engine.valkey import keys
from engine.valkey.embedded import free_port

SITE = "demo-bank"
ALLOWED = "http://localhost:8080"  # allowed by the demo site's config
EXPOSED = "Access-Control-Expose-Headers"
ACAO = "Access-Control-Allow-Origin"


# --- a bank page on its own origin, an engine that notes when batches arrive ---------


@dataclass
class Received:
    """One `POST /v1/events` as the engine saw it (wall clock, seconds)."""

    status: int
    retry_after_s: int | None
    started_s: float
    answered_s: float


@dataclass
class CrossOrigin:
    engine_url: str
    bank_url: str
    settings: Settings
    received: list[Received] = field(default_factory=list)
    inline: str = ""  # script the bank page runs right after the stub
    # Awaited once, just before the engine handles the next `POST /v1/events`.
    before_next_batch: Callable[[], Awaitable[None]] | None = None


@pytest.fixture
async def cross_origin(
    aiohttp_server: Any, settings: Settings, redis: aioredis.Redis
) -> AsyncIterator[Callable[..., Awaitable[CrossOrigin]]]:
    """Factory: a bank page server and an engine (with changed limits) that allows it."""

    async def start(**limits: Any) -> CrossOrigin:
        holder: list[CrossOrigin] = []

        async def bank_page(request: web.Request) -> web.Response:
            setup = holder[0]
            html = (
                f"<!doctype html><html><head><title>Example Bank</title>"
                f"<script>{STUB};{setup.inline}</script>"
                f'<script async src="{setup.engine_url}/sdk.js" data-site="{SITE}" '
                f'data-consent="implied"></script></head><body><h1>Example Bank</h1></body></html>'
            )
            return web.Response(text=html, content_type="text/html")

        bank = web.Application()
        bank.router.add_get("/", bank_page)
        bank_server = await aiohttp_server(bank, host="127.0.0.1")
        bank_url = str(bank_server.make_url("")).rstrip("/")

        site = replace(settings.sites[SITE], allowed_origins=(bank_url,))
        s = replace(
            settings,
            sites={SITE: site},
            limits=replace(settings.limits, **limits),
        )
        received: list[Received] = []

        @web.middleware
        async def note_arrivals(request: web.Request, handler: Any) -> Any:
            is_batch = request.method == "POST" and request.path == "/v1/events"
            hook = holder[0].before_next_batch
            if is_batch and hook is not None:
                holder[0].before_next_batch = None
                await hook()
            started_s = time.time()
            response = await handler(request)
            if is_batch:
                ra = response.headers.get("Retry-After")
                received.append(
                    Received(response.status, int(ra) if ra else None, started_s, time.time())
                )
            return response

        app = build_app(s, s.redis_url, metrics=Metrics())
        app.middlewares.insert(0, note_arrivals)
        engine_server = await aiohttp_server(app, host="127.0.0.1")
        setup = CrossOrigin(
            engine_url=str(engine_server.make_url("")).rstrip("/"),
            bank_url=bank_url,
            settings=s,
            received=received,
        )
        holder.append(setup)
        return setup

    yield start


async def profile_of(redis: aioredis.Redis, prefix: str) -> dict[str, Any]:
    raw = await redis.get(keys.profile_keys(prefix)[0])
    return json.loads(raw) if raw else {}


async def wait_profile(
    redis: aioredis.Redis,
    prefix: str,
    check: Callable[[dict[str, Any]], Any],
    timeout_s: float = 15,
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        p = await profile_of(redis, prefix)
        return p if p and check(p) else None

    return await wait_for(probe, timeout_s, f"the profile {prefix}")  # type: ignore[no-any-return]


async def outbox_empty(page: Any) -> None:
    async def probe() -> bool:
        stored = await rb_storage(page)
        return not any(json.loads(v)["e"] for k, v in stored.items() if k.startswith("rb_q."))

    await wait_for(probe, 15, "an empty outbox")


# --- in Chromium ------------------------------------------------------------------------


@pytest.mark.browser
async def test_an_expired_identity_is_dropped_and_its_events_arrive_anonymously(
    cross_origin: Callable[..., Awaitable[CrossOrigin]], redis: aioredis.Redis
) -> None:
    setup = await cross_origin()
    secret = setup.settings.sites[SITE].identity_secret
    assert secret
    expired = mint_token(secret, SITE, "cust-expired", ttl_s=-3600)
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{setup.bank_url}/")
        anon = await anon_id(page)
        prefix = keys.anonymous_prefix(SITE, anon)
        await wait_profile(redis, prefix, lambda p: p.get(layout.count("page_view")))
        await outbox_empty(page)
        first_new = len(setup.received)

        # A login page hands over a token that has expired since (a cached page, say).
        await page.evaluate(f"ringback.identify({json.dumps(expired)}); ringback.track('x')")
        # Its event first went out with the token (401), then again without it.
        prof = await wait_profile(redis, prefix, lambda p: p.get(layout.count("custom")))
        assert prof[layout.count("custom")] == 1
        await outbox_empty(page)
    assert [r.status for r in setup.received[first_new:]] == [401, 200]
    assert not await profile_of(redis, keys.customer_prefix("cust-expired"))


@pytest.mark.browser
async def test_a_rate_limited_batch_is_resent_no_sooner_than_retry_after(
    cross_origin: Callable[..., Awaitable[CrossOrigin]], redis: aioredis.Redis
) -> None:
    setup = await cross_origin(batches_per_minute_per_visitor=2)
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{setup.bank_url}/")
        anon = await anon_id(page)
        prefix = keys.anonymous_prefix(SITE, anon)
        await wait_profile(redis, prefix, lambda p: p.get(layout.count("page_view")))
        await outbox_empty(page)

        async def spend_the_budget() -> None:
            """Right before the engine sees the next batch (so however slow the browser
            and this machine are, ~10 s of the window are left when it does): this
            visitor has used up its batches in a minute that started 50 s ago, and the
            batch is refused with a Retry-After of seconds, not a whole minute."""
            prof = await profile_of(redis, prefix)
            prof.update({layout.RL_COUNT: 2, layout.RL_WINDOW: now_ms() - 50_000})
            await redis.set(keys.profile_keys(prefix)[0], json.dumps(prof), keepttl=True)

        setup.before_next_batch = spend_the_budget
        first_new = len(setup.received)

        await page.evaluate("ringback.track('probe')")
        # Arrives once the ~10 s Retry-After has passed; the deadline is a hang guard.
        await wait_profile(redis, prefix, lambda p: p.get(layout.count("custom")), timeout_s=45)
        await outbox_empty(page)

    sent = setup.received[first_new:]
    assert [r.status for r in sent][:1] == [429], sent
    refused, resent = sent[0], sent[1]
    assert refused.retry_after_s and refused.retry_after_s >= 2
    # Both clocks are this machine's wall clock; 10 ms covers the page's millisecond one.
    assert resent.started_s >= refused.answered_s + refused.retry_after_s - 0.01, sent
    assert resent.status == 200


@pytest.mark.browser
async def test_a_batch_refused_for_good_is_dropped_and_reported_not_retried(
    cross_origin: Callable[..., Awaitable[CrossOrigin]], redis: aioredis.Redis
) -> None:
    setup = await cross_origin()
    async with chromium() as browser:
        page = await browser.new_page()
        sent: list[str] = []
        page.on(
            "request",
            lambda r: sent.append(r.post_data or "") if r.url.endswith("/v1/events") else None,
        )
        await page.goto(f"{setup.bank_url}/")
        anon = await anon_id(page)
        prefix = keys.anonymous_prefix(SITE, anon)
        await wait_profile(redis, prefix, lambda p: p.get(layout.count("page_view")))
        await outbox_empty(page)
        first_new = len(setup.received)

        # A custom event name over 64 characters: the engine can never accept it.
        await page.evaluate("ringback.track('x'.repeat(100))")

        async def refused() -> bool:
            return any(r.status == 400 for r in setup.received)

        await wait_for(refused, 15, "the refusal")
        await outbox_empty(page)
        await page.evaluate("ringback.track('after')")

        def dropped_reports() -> list[Any]:
            events = [e for b in sent if b for e in json.loads(b)["events"]]
            return [
                e["props"]["data"]
                for e in events
                if e["type"] == "custom" and e["props"]["name"] == "rb_dropped"
            ]

        async def reported() -> list[Any]:
            return dropped_reports()

        await wait_for(reported, 15, "an rb_dropped report")
        await wait_profile(redis, prefix, lambda p: p.get(layout.count("custom")) == 2)
        await outbox_empty(page)
    assert dropped_reports() == [{"count": 1}]
    # Sent once, refused once, never again.
    statuses = [r.status for r in setup.received[first_new:]]
    assert statuses[0] == 400 and 400 not in statuses[1:], statuses


# --- over plain HTTP ----------------------------------------------------------------------


def assert_readable_cross_origin(status: int, headers: Any, origin: str = ALLOWED) -> None:
    assert headers.get(ACAO) == origin, (status, dict(headers))
    assert "Origin" in headers.get("Vary", ""), (status, dict(headers))
    assert "Retry-After" in headers.get(EXPOSED, ""), (status, dict(headers))
    if status in (429, 503):
        assert int(headers["Retry-After"]) >= 1


async def test_every_refusal_of_an_allowed_origin_carries_cors_headers(
    make_engine: Any, settings: Settings
) -> None:
    engine: EngineClient = await make_engine(
        settings, limits=replace(settings.limits, batches_per_minute_per_visitor=1)
    )
    origin = {"Origin": ALLOWED}
    secret = settings.sites[SITE].identity_secret
    assert secret

    def batch(events: list[dict[str, Any]], **kw: Any) -> bytes:
        return orjson.dumps({"site": SITE, "anonymous_id": new_anon(), "events": events, **kw})

    limited = new_anon()

    def limited_batch() -> bytes:
        return orjson.dumps({"site": SITE, "anonymous_id": limited, "events": [event("click")]})

    cases: list[tuple[str, int, bytes, str]] = [
        ("invalid_json", 400, b"{not json", "application/json"),
        ("invalid_event", 400, batch([event("bogus")]), "text/plain"),
        ("timestamp_out_of_range", 400, batch([event("click", ts=1)]), "text/plain"),
        (
            "identity_expired",
            401,
            batch([event("click")], identity=mint_token(secret, SITE, "c1", ttl_s=-3600)),
            "text/plain",
        ),
        ("invalid_identity", 401, batch([event("click")], identity="not-a-jwt"), "text/plain"),
        (
            "identity_site_mismatch",
            403,
            batch([event("click")], identity=mint_token(secret, "other-site", "c1")),
            "text/plain",
        ),
        (
            "unknown_site",
            404,
            orjson.dumps({"site": "nope", "anonymous_id": new_anon(), "events": [event("click")]}),
            "text/plain",
        ),
        ("payload_too_large", 413, b"x" * (settings.limits.max_body_bytes + 1), "text/plain"),
        ("unsupported_media_type", 415, batch([event("click")]), "application/xml"),
        ("ok", 200, limited_batch(), "text/plain"),
        ("rate_limited", 429, limited_batch(), "text/plain"),
    ]
    for code, status, body, media in cases:
        got, resp, headers = await engine.post_events(body, headers=origin, content_type=media)
        assert got == status, (code, got, resp)
        assert got == 200 or resp["error"]["code"] == code, (code, resp)
        assert_readable_cross_origin(got, headers)

    async with engine.session.get(f"{engine.url}/v1/events", headers=origin) as r:
        assert r.status == 405
        assert_readable_cross_origin(r.status, r.headers)
    for query, status in [("site=nope&anonymous_id=abcdefgh", 404), (f"site={SITE}", 400)]:
        async with engine.session.get(f"{engine.url}/v1/decisions?{query}", headers=origin) as r:
            assert r.status == status
            assert_readable_cross_origin(r.status, r.headers)
    async with engine.session.options(
        f"{engine.url}/v1/decisions",
        headers={**origin, "Access-Control-Request-Method": "GET"},
    ) as r:
        assert r.status == 204
        assert_readable_cross_origin(r.status, r.headers)


async def test_a_store_outage_is_readable_cross_origin(
    make_engine: Any, settings: Settings
) -> None:
    engine: EngineClient = await make_engine(settings, redis_url=f"redis://127.0.0.1:{free_port()}")
    status, resp, headers = await engine.post_events(
        {"site": SITE, "anonymous_id": new_anon(), "events": [event("click")]},
        headers={"Origin": ALLOWED},
    )
    assert status == 503 and resp["error"]["code"] == "store_unavailable", resp
    assert_readable_cross_origin(status, headers)


async def test_an_origin_no_site_allows_gets_no_cors_headers_even_on_errors(
    engine: EngineClient,
) -> None:
    evil = {"Origin": "https://evil.example"}
    status, resp, headers = await engine.post_events(
        {"site": SITE, "anonymous_id": new_anon(), "events": [event("click")]}, headers=evil
    )
    assert status == 403 and resp["error"]["code"] == "origin_not_allowed"
    assert ACAO not in headers
    status, resp, headers = await engine.post_events(b"{not json", headers=evil)
    assert status == 400 and ACAO not in headers
    async with engine.session.options(
        f"{engine.url}/v1/events", headers={**evil, "Access-Control-Request-Method": "POST"}
    ) as r:
        assert r.status == 403 and ACAO not in r.headers
