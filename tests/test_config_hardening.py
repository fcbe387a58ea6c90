"""Hardening from config: `self` is the engine's configured origin (never the Host
header), identity tokens have a maximum lifetime, /metrics can be closed with a token
or moved to its own listener."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from conftest import REPO, EngineClient, event

from engine.core.metrics import Metrics
from engine.core.settings import MetricsConfig, Secret
from engine.http.ops import build_metrics_app
from engine.valkey.embedded import EmbeddedValkey, free_port

# -- "self" comes from config, not from the Host header ------------------------------


def _port(engine: EngineClient) -> int:
    return int(engine.url.rsplit(":", 1)[1])


async def _post_from(
    engine: EngineClient, origin: str, host: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Origin": origin}
    if host is not None:
        headers["Host"] = host
    return await engine.post_events(engine.batch([event("page_view")]), headers=headers)


async def test_a_forged_host_header_does_not_make_an_origin_self(engine: EngineClient) -> None:
    # A DNS-rebinding page: evil.example resolves to the engine, so the browser sends
    # Host and Origin that agree with each other, and not with anything configured.
    evil = f"evil.example:{_port(engine)}"
    status, body, headers = await _post_from(engine, f"http://{evil}", host=evil)
    assert status == 403, body
    assert body["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in headers

    # Its preflight is not answered with CORS headers either.
    pre = {
        "Origin": f"http://{evil}",
        "Host": evil,
        "Access-Control-Request-Method": "POST",
    }
    async with engine.session.options(f"{engine.url}/v1/events", headers=pre) as r:
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_self_is_the_address_the_engine_listens_on_by_default(
    engine: EngineClient,
) -> None:
    # The /demo page served by the engine itself, on whichever port it got.
    for origin in (engine.url, f"http://localhost:{_port(engine)}"):
        status, body, headers = await _post_from(engine, origin)
        assert status == 200, (origin, body)
        assert headers["Access-Control-Allow-Origin"] == origin


async def test_self_is_public_url_when_configured(make_engine: Any) -> None:
    engine: EngineClient = await make_engine(public_url="https://ringback.bank.example")
    status, body, _ = await _post_from(engine, "https://ringback.bank.example")
    assert status == 200, body
    # The listening address no longer counts, and neither does a Host claiming the name.
    status, body, _ = await _post_from(engine, engine.url)
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"
    status, body, _ = await _post_from(engine, "https://evil.example", host="ringback.bank.example")
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"


# -- identity tokens have a maximum lifetime -------------------------------------------


def _raw_token(engine: EngineClient, claims: dict[str, Any]) -> str:
    return jwt.encode(
        {"sub": "cust-life", "aud": engine.site, **claims},
        engine.credentials["identity_secret"],
        algorithm="HS256",
    )


async def _post_identity(engine: EngineClient, token: str) -> tuple[int, dict[str, Any]]:
    status, body, _ = await engine.post_events(engine.batch([event("page_view")], identity=token))
    return status, body


async def test_a_century_long_identity_token_is_refused(engine: EngineClient) -> None:
    status, body = await _post_identity(engine, engine.token("cust-life", ttl_s=100 * 365 * 86400))
    assert status == 401, body
    assert body["error"]["code"] == "invalid_identity"
    assert "lifetime" in body["error"]["message"]
    assert "86400" in body["error"]["message"]
    assert body["error"]["path"] == "$.identity"


async def test_a_backdated_or_iat_less_long_token_is_refused(engine: EngineClient) -> None:
    now = int(time.time())
    far = now + 30 * 86400
    # iat claims the token was minted just now, exp is a month away.
    status, body = await _post_identity(engine, _raw_token(engine, {"iat": now, "exp": far}))
    assert status == 401 and body["error"]["code"] == "invalid_identity", body
    # No iat at all: exp - now decides (and iat is required anyway).
    status, body = await _post_identity(engine, _raw_token(engine, {"exp": far}))
    assert status == 401 and body["error"]["code"] == "invalid_identity", body
    # iat in the far past, exp an hour out: 1 year "lifetime" (exp - iat) is refused.
    token = _raw_token(engine, {"iat": now - 365 * 86400, "exp": now + 3600})
    status, body = await _post_identity(engine, token)
    assert status == 401 and body["error"]["code"] == "invalid_identity", body


async def test_tokens_within_the_site_maximum_are_accepted(make_engine: Any) -> None:
    engine: EngineClient = await make_engine()
    status, body = await _post_identity(engine, engine.token("cust-life", ttl_s=86400))
    assert status == 200, body
    # A site may allow longer lifetimes explicitly.
    site = engine.settings.sites["demo-bank"]
    longer = replace(site, identity=replace(site.identity, max_lifetime_s=7 * 86400))
    week: EngineClient = await make_engine(sites={"demo-bank": longer})
    status, body = await _post_identity(week, week.token("cust-week", ttl_s=5 * 86400))
    assert status == 200, body
    status, body = await _post_identity(week, week.token("cust-week", ttl_s=8 * 86400))
    assert status == 401 and body["error"]["code"] == "invalid_identity", body


# -- /metrics ----------------------------------------------------------------------------


async def _metrics(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics", headers=headers) as r:
        return r.status, await r.text()


async def test_metrics_refuse_a_scrape_without_the_configured_token(make_engine: Any) -> None:
    engine: EngineClient = await make_engine(metrics=MetricsConfig(token=Secret("m-tok-123")))
    status, text = await _metrics(engine.url)
    assert status == 401 and '"missing_credentials"' in text
    assert "ringback_" not in text
    status, text = await _metrics(engine.url, "m-tok-124")
    assert status == 401 and '"invalid_credentials"' in text
    status, text = await _metrics(engine.url, engine.credentials["api_token"])
    assert status == 401, "the admin API token is not the metrics token"
    status, text = await _metrics(engine.url, "m-tok-123")
    assert status == 200 and "ringback_events_total" in text


async def test_metrics_are_closed_on_a_public_bind_without_a_token(make_engine: Any) -> None:
    # Settings say the engine binds every interface (this test server listens on
    # loopback, but the decision follows the configured bind, not the peer).
    engine: EngineClient = await make_engine(host="0.0.0.0")
    status, text = await _metrics(engine.url)
    assert status == 403 and '"metrics_closed"' in text
    loopback: EngineClient = await make_engine()
    assert (await _metrics(loopback.url))[0] == 200


async def test_metrics_through_a_local_reverse_proxy_need_the_token(
    engine: EngineClient,
) -> None:
    """Bound to loopback behind nginx on the same host, every peer is 127.0.0.1: the
    proxy's forwarding headers, not the peer, say the scrape came from outside."""
    for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
        async with engine.session.get(
            f"{engine.url}/metrics", headers={header: "203.0.113.9"}
        ) as r:
            assert r.status == 403, header
            assert (await r.json())["error"]["code"] == "metrics_closed"


async def test_with_a_metrics_port_the_main_port_serves_no_metrics(
    make_engine: Any, aiohttp_server: Any
) -> None:
    cfg = MetricsConfig(token=Secret("m-tok-123"), host="127.0.0.1", port=free_port())
    engine: EngineClient = await make_engine(metrics=cfg)
    status, text = await _metrics(engine.url, "m-tok-123")
    assert status == 404 and '"not_found"' in text
    listener = await aiohttp_server(build_metrics_app(engine.settings, Metrics()))
    url = str(listener.make_url("")).rstrip("/")
    assert (await _metrics(url))[0] == 401
    status, text = await _metrics(url, "m-tok-123")
    assert status == 200 and "ringback_events_total" in text


_CONFIG = """
demo_credentials = true

[metrics]
token = "m-tok-123"
host = "127.0.0.1"
port = {metrics_port}

[[sites]]
key = "demo-bank"
allowed_origins = ["self"]
demo = true
identity = {{ algorithms = ["HS256"] }}
"""


@pytest.mark.slow
async def test_serve_answers_metrics_on_its_own_port_with_a_token(
    tmp_path: Path, valkey: EmbeddedValkey
) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "ringback.toml"
    config.write_text(_CONFIG.format(metrics_port=metrics_port))
    log = tmp_path / "serve.log"
    env = {
        k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")
    }
    cmd = [sys.executable, "-m", "engine", "serve", "--config", str(config)]
    cmd += ["--port", str(port), "--redis", valkey.url, "--data-dir", str(tmp_path / "data")]
    cmd += ["--workers", "2"]
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 - once per test
            cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        deadline = time.monotonic() + 60
        while f"127.0.0.1:{metrics_port}/metrics" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        main, listener = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
        assert (await _metrics(main, "m-tok-123"))[0] == 404
        assert (await _metrics(listener))[0] == 401
        for _ in range(4):  # whichever worker answers
            status, text = await _metrics(listener, "m-tok-123")
            assert status == 200 and "ringback_events_total" in text
        assert "m-tok-123" not in log.read_text()
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    assert proc.returncode == 0, log.read_text()


async def test_the_live_queue_refuses_a_rebinding_page_with_a_forged_host(
    engine: EngineClient,
) -> None:
    """A page on evil.example that rebinds its DNS to the engine sends Host and Origin
    alike; the WebSocket's same-origin check must not take the Host header's word."""
    port = engine.url.rsplit(":", 1)[1]
    agent, _ = await engine.agent()
    try:
        evil = f"evil.example:{port}"
        headers = {"Origin": f"http://{evil}", "Host": evil}
        async with agent.get(f"{engine.url}/v1/triggers/ws", headers=headers) as r:
            assert r.status == 403
        async with agent.ws_connect(
            f"{engine.url}/v1/triggers/ws", headers={"Origin": engine.url}
        ) as ws:
            assert (await ws.receive_json())["kind"] == "snapshot"
    finally:
        await agent.close()


async def test_a_local_proxy_not_in_trusted_proxies_does_not_make_everyone_loopback(
    make_engine: Any, settings: Any
) -> None:
    """Loopback is exempt from the per-address limits (tests, local tools), but a
    loopback peer that forwards for someone else is a proxy: its clients are limited
    (together, until the operator lists it in trusted_proxies) instead of exempted."""
    limits = replace(settings.limits, batches_per_minute_per_ip=3)
    engine: EngineClient = await make_engine(limits=limits, trusted_proxies=())

    async def statuses(headers: dict[str, str]) -> list[int]:
        out = []
        # 8 > 2 x 3: even if a minute boundary falls inside the loop, one window
        # sees more than 3.
        for _ in range(8):
            url = f"{engine.url}/v1/events"
            async with engine.session.post(
                url, json=engine.batch([event("click")]), headers=headers
            ) as r:
                out.append(r.status)
        return out

    assert set(await statuses({})) == {200}
    proxied = await statuses({"X-Forwarded-For": "203.0.113.50"})
    assert 429 in proxied and set(proxied) <= {200, 429}
