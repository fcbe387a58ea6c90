"""`GET /sdk.js`, the demo site and its login, over a real socket (engine.assets)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import EngineClient

from engine.core.settings import Settings, load_settings
from engine.http.assets import add_asset_routes
from engine.http.errors import make_error_middleware
from engine.http.state import SETTINGS
from engine.ingest.identity import IdentityVerifier

DIST = Path(__file__).resolve().parent.parent / "sdk-js" / "dist" / "ringback.min.js"

Client = Callable[..., Awaitable[tuple[int, Mapping[str, str], bytes]]]


def demo_settings(tmp_path: Path, **site_changes: Any) -> Settings:
    s = load_settings(None, data_dir=tmp_path / "data", overrides={"redis_url": "redis://unused"})
    if site_changes:
        site = replace(s.sites["demo-bank"], **site_changes)
        s = replace(s, sites={**s.sites, "demo-bank": site})
    return s


@pytest.fixture
async def serve(aiohttp_server: Any) -> AsyncIterator[Callable[[Settings], Awaitable[Client]]]:
    sessions: list[aiohttp.ClientSession] = []

    async def start(settings: Settings) -> Client:
        app = web.Application(middlewares=[make_error_middleware(lambda code: None)])
        app[SETTINGS] = settings
        add_asset_routes(app)
        server = await aiohttp_server(app, host="127.0.0.1")
        # auto_decompress off: the test sees the bytes on the wire.
        session = aiohttp.ClientSession(auto_decompress=False)
        sessions.append(session)

        async def call(method: str, path: str, **kw: Any) -> tuple[int, Mapping[str, str], bytes]:
            async with session.request(method, server.make_url(path), **kw) as r:
                return r.status, r.headers.copy(), await r.read()  # case-insensitive

        return call

    yield start
    for session in sessions:
        await session.close()


async def test_sdk_is_served_gzipped_with_a_strong_etag_and_short_cache(
    serve: Any, tmp_path: Path
) -> None:
    call = await serve(demo_settings(tmp_path))
    status, headers, body = await call("GET", "/sdk.js", headers={"Accept-Encoding": "gzip, br"})

    assert status == 200
    assert headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == DIST.read_bytes()
    assert headers["Cache-Control"] == "public, max-age=300"
    assert headers["Vary"] == "Accept-Encoding"
    assert re.fullmatch(r'"[0-9a-f]{32}-gz"', headers["ETag"])  # strong: no W/
    assert headers["Access-Control-Allow-Origin"] == "*"  # usable with SRI


async def test_sdk_without_gzip_is_the_plain_build_under_another_etag(
    serve: Any, tmp_path: Path
) -> None:
    call = await serve(demo_settings(tmp_path))
    _, gz_headers, _ = await call("GET", "/sdk.js", headers={"Accept-Encoding": "gzip"})
    status, headers, body = await call(
        "GET", "/sdk.js", headers={"Accept-Encoding": "gzip;q=0, identity"}
    )

    assert status == 200 and body == DIST.read_bytes()
    assert "Content-Encoding" not in headers
    assert headers["ETag"] != gz_headers["ETag"]


async def test_revalidation_with_the_etag_costs_a_304_without_body(
    serve: Any, tmp_path: Path
) -> None:
    call = await serve(demo_settings(tmp_path))
    _, headers, _ = await call("GET", "/sdk.js", headers={"Accept-Encoding": "gzip"})

    status, again, body = await call(
        "GET",
        "/sdk.js",
        headers={"Accept-Encoding": "gzip", "If-None-Match": f'"old", {headers["ETag"]}'},
    )
    assert status == 304 and body == b""
    assert again["ETag"] == headers["ETag"]
    status, _, body = await call(
        "GET", "/sdk.js", headers={"Accept-Encoding": "gzip", "If-None-Match": '"old"'}
    )
    assert status == 200 and body


async def test_demo_page_embeds_the_snippet_as_a_bank_would(serve: Any, tmp_path: Path) -> None:
    settings = demo_settings(tmp_path, consent="required", honor_gpc=False)
    call = await serve(settings)
    status, _, body = await call("GET", "/demo/mortgages")

    assert status == 200
    page = body.decode()
    tag = re.search(r"<script async src=\"/sdk.js\"([^>]*)>", page)
    assert tag is not None
    assert 'data-site="demo-bank"' in tag.group(1)
    assert 'data-consent="required"' in tag.group(1)  # mirrors the site's config
    assert 'data-honor-gpc="false"' in tag.group(1)
    for name in ('data-rb-calc="mortgage"', 'data-rb-slot="hero"', "<template>"):
        assert name in page


async def test_demo_csp_allows_only_the_install_stub_inline(serve: Any, tmp_path: Path) -> None:
    call = await serve(demo_settings(tmp_path))
    _, headers, body = await call("GET", "/demo")
    csp = headers["Content-Security-Policy"]
    inline = re.findall(r"<script>(.*?)</script>", body.decode(), re.S)

    assert len(inline) == 1 and "ringback.q" in inline[0]
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp


@pytest.mark.parametrize(
    "path", ["/demo/login", "/demo/admin", "/demo/demo.html", "/demo/..%2fassets.py", "/demo/a/b"]
)
async def test_demo_serves_only_its_own_pages_and_assets(
    serve: Any, tmp_path: Path, path: str
) -> None:
    call = await serve(demo_settings(tmp_path))
    status, _, _ = await call("GET", path)
    assert status == 404


async def test_demo_login_returns_a_token_the_engine_accepts_and_loads_the_crm_record(
    engine: EngineClient,
) -> None:
    async def login(user: str) -> dict[str, Any]:
        async with engine.session.post(
            f"{engine.url}/demo/login", json={"user": user, "password": "anything"}
        ) as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            return await r.json()  # type: ignore[no-any-return]

    answer = await login("alex")
    assert answer["customer_id"] == "demo-alex"
    site = engine.settings.sites["demo-bank"]
    assert IdentityVerifier().verify(site, answer["token"]) == "demo-alex"
    # What the bank's CRM feed would have loaded: Alex agreed to be called.
    assert (await engine.profile("demo-alex"))["attributes"]["consent_call"] is True

    # Attributes set by the CRM API are the bank's word: a later login keeps them.
    async with engine.session.put(
        f"{engine.url}/v1/profiles/demo-sam/attributes",
        json={"value_tier": "vip"},
        headers=engine.api_headers,
    ) as r:
        assert r.status == 200
    await login("sam")
    assert (await engine.profile("demo-sam"))["attributes"]["value_tier"] == "vip"


async def test_demo_login_refuses_unknown_users(serve: Any, tmp_path: Path) -> None:
    call = await serve(demo_settings(tmp_path))
    status, _, body = await call("POST", "/demo/login", json={"user": "mallory"})
    assert status == 400 and b"unknown_user" in body


async def test_demo_login_does_not_exist_for_a_real_site(serve: Any, tmp_path: Path) -> None:
    call = await serve(demo_settings(tmp_path, demo=False))
    status, _, _ = await call("POST", "/demo/login", json={"user": "alex"})
    assert status == 404
    status, _, _ = await call("GET", "/demo")
    assert status == 404


async def test_demo_page_assets_are_served(serve: Any, tmp_path: Path) -> None:
    call = await serve(demo_settings(tmp_path))
    _, _, body = await call("GET", "/demo")
    refs = re.findall(r'<(?:script[^>]*src|link[^>]*href)="(/demo/[\w.]+)"', body.decode())
    assert len(refs) == 2  # demo.css, demo.js
    for ref in refs:
        status, headers, _ = await call("GET", ref)
        assert status == 200, ref
        assert headers["Content-Type"].split(";")[0] in ("application/javascript", "text/css")


def test_routes_register_on_an_app_without_settings() -> None:
    """Route listings (OpenAPI coverage) build a bare app: no demo site, same routes."""
    app = web.Application()
    add_asset_routes(app)
    paths = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    assert {("GET", "/sdk.js"), ("GET", "/demo"), ("GET", "/demo/{name}")} <= paths
    assert ("POST", "/demo/login") in paths
