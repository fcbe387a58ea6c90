"""Bad input: a specific status, a stable code, the JSON path at fault; nothing written."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import jwt
import orjson
import pytest
import redis.asyncio as aioredis
from conftest import EngineClient, calc, event, new_anon, now_ms

from engine.profile import layout
from engine.valkey import keys

DAY_MS = 86_400_000


async def _written(redis: aioredis.Redis) -> list[str]:
    """Every key but the capacity monitor's heartbeat, which each worker writes as it
    starts (engine/contact_center/capacity.py), whatever the requests do."""
    return [k for k in await redis.keys("rb:*") if k != keys.CAPACITY_AGENTS]


def _batch(events: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"site": "demo-bank", "anonymous_id": new_anon(), "events": events}
    body.update(kw)
    return body


CASES: list[tuple[str, Any, int, str, str | None]] = [
    ("malformed json", b'{"site": "demo-bank", "events": [', 400, "invalid_json", "$"),
    ("not an object", b"[1, 2]", 400, "invalid_event", "$"),
    (
        "missing events",
        {"site": "demo-bank", "anonymous_id": "anon-123456"},
        400,
        "invalid_event",
        "$",
    ),
    ("empty events", _batch([]), 400, "invalid_event", "$.events"),
    ("101 events", _batch([event("click") for _ in range(101)]), 400, "invalid_event", "$.events"),
    (
        "unknown event type",
        _batch([event("page_view"), event("teleport")]),
        400,
        "invalid_event",
        "$.events[1].type",
    ),
    (
        "calc amount is text",
        _batch(
            [
                event("page_view"),
                event("click"),
                event("scroll", props={"depth": 50}),
                calc(amount="lots"),
            ]
        ),
        400,
        "invalid_event",
        "$.events[3].props.amount",
    ),
    (
        "negative amount",
        _batch([calc(amount=-5)]),
        400,
        "invalid_event",
        "$.events[0].props.amount",
    ),
    (
        "term of 10 000 months",
        _batch([calc(term_months=10_000)]),
        400,
        "invalid_event",
        "$.events[0].props.term_months",
    ),
    ("calc without props", _batch([event("calc")]), 400, "invalid_event", "$.events[0]"),
    (
        "scroll depth 33",
        _batch([event("scroll", props={"depth": 33})]),
        400,
        "invalid_event",
        "$.events[0].props.depth",
    ),
    (
        "event id with braces",
        _batch([event("click", id="{x}")]),
        400,
        "invalid_event",
        "$.events[0].id",
    ),
    (
        "anonymous id too short",
        {"site": "demo-bank", "anonymous_id": "abc", "events": [event("click")]},
        400,
        "invalid_event",
        "$.anonymous_id",
    ),
    (
        "page of 3000 chars",
        _batch([event("page_view", page="/" + "a" * 3000)]),
        400,
        "invalid_event",
        "$.events[0].page",
    ),
    (
        "click text of 1000 chars",
        _batch([event("click", props={"text": "x" * 1000})]),
        400,
        "invalid_event",
        "$.events[0].props.text",
    ),
    (
        "custom props with 21 keys",
        _batch([event("custom", props={"name": "n", "data": {f"k{i}": i for i in range(21)}})]),
        400,
        "invalid_event",
        "$.events[0].props.data",
    ),
    (
        "event from 8 days ago",
        _batch([event("click"), event("click", ts=now_ms() - 8 * DAY_MS)]),
        400,
        "timestamp_out_of_range",
        "$.events[1].ts",
    ),
    (
        "event from the future",
        _batch([event("click", ts=now_ms() + DAY_MS)]),
        400,
        "timestamp_out_of_range",
        "$.events[0].ts",
    ),
    (
        "unknown site",
        {"site": "other-bank", "anonymous_id": new_anon(), "events": [event("click")]},
        404,
        "unknown_site",
        "$.site",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "path"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_invalid_batches_are_refused_with_code_and_path(
    engine: EngineClient, redis: aioredis.Redis, body: Any, status: int, code: str, path: str | None
) -> None:
    got_status, resp, _ = await engine.post_events(body)

    assert got_status == status, resp
    assert resp["error"]["code"] == code
    assert resp["error"]["path"] == path
    assert resp["error"]["message"]
    assert await _written(redis) == []  # nothing partially written


async def test_oversized_body_is_413(engine: EngineClient, redis: aioredis.Redis) -> None:
    body = orjson.dumps(_batch([event("click", props={"text": "x" * 250}) for _ in range(100)]))
    body = body[:-1] + b"," + b'"pad":"' + b"x" * 70_000 + b'"}'
    status, resp, _ = await engine.post_events(body)
    assert status == 413 and resp["error"]["code"] == "payload_too_large"
    assert await _written(redis) == []


async def test_chunked_oversized_body_is_413(engine: EngineClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"x" * 8192

    async with engine.session.post(
        f"{engine.url}/v1/events", data=chunks(), headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "image/png"],
)
async def test_other_media_types_are_415(engine: EngineClient, content_type: str) -> None:
    status, resp, _ = await engine.post_events(_batch([event("click")]), content_type=content_type)
    assert status == 415 and resp["error"]["code"] == "unsupported_media_type"


async def test_origin_not_allowed_is_403(engine: EngineClient, redis: aioredis.Redis) -> None:
    status, resp, _ = await engine.post_events(
        _batch([event("click")]), headers={"Origin": "https://evil.example"}
    )
    assert status == 403 and resp["error"]["code"] == "origin_not_allowed"
    assert await _written(redis) == []


async def test_allowed_origin_gets_cors_headers(engine: EngineClient) -> None:
    status, _, headers = await engine.post_events(
        _batch([event("click")]), headers={"Origin": "http://localhost:8080"}
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:8080"


async def test_cors_preflight_only_for_configured_origins(engine: EngineClient) -> None:
    pre = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with engine.session.options(
        f"{engine.url}/v1/events", headers={"Origin": "http://localhost:8080", **pre}
    ) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:8080"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
    async with engine.session.options(
        f"{engine.url}/v1/events", headers={"Origin": "https://evil.example", **pre}
    ) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_visitor_rate_limit_is_429_with_retry_after(make_engine: Any, settings: Any) -> None:
    engine: EngineClient = await make_engine(
        settings, limits=replace(settings.limits, batches_per_minute_per_visitor=3)
    )
    anon = new_anon()
    statuses = []
    for _ in range(5):
        status, resp, headers = await engine.post_events(
            _batch([event("click")], anonymous_id=anon)
        )
        statuses.append(status)
    assert statuses == [200, 200, 200, 429, 429]
    assert resp["error"]["code"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 61
    # Another visitor is not affected.
    assert (await engine.post_events(_batch([event("click")])))[0] == 200


async def test_ip_rate_limit_applies_to_loopback_only_when_configured(
    make_engine: Any, settings: Any
) -> None:
    relaxed: EngineClient = await make_engine(
        settings, limits=replace(settings.limits, batches_per_minute_per_ip=2)
    )
    assert [(await relaxed.post_events(_batch([event("click")])))[0] for _ in range(4)] == [200] * 4
    strict: EngineClient = await make_engine(
        settings, limits=replace(settings.limits, batches_per_minute_per_ip=2, limit_loopback=True)
    )
    got = [(await strict.post_events(_batch([event("click")]))) for _ in range(3)]
    assert [g[0] for g in got] == [200, 200, 429]
    assert "Retry-After" in got[2][2]


async def test_forwarded_for_is_trusted_only_from_configured_proxies(
    make_engine: Any, settings: Any
) -> None:
    limits = replace(settings.limits, batches_per_minute_per_ip=1, limit_loopback=True)
    behind_proxy: EngineClient = await make_engine(
        settings, limits=limits, trusted_proxies=("127.0.0.1",)
    )
    for client_ip in ("203.0.113.7", "203.0.113.8"):  # two clients, one proxy
        status, _, _ = await behind_proxy.post_events(
            _batch([event("click")]), headers={"X-Forwarded-For": client_ip}
        )
        assert status == 200
    status, _, _ = await behind_proxy.post_events(
        _batch([event("click")]), headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert status == 429
    direct: EngineClient = await make_engine(settings, limits=limits)
    await direct.post_events(_batch([event("click")]), headers={"X-Forwarded-For": "198.51.100.1"})
    # A client that is not a proxy cannot pick a fresh IP with the header.
    status, _, _ = await direct.post_events(
        _batch([event("click")]), headers={"X-Forwarded-For": "198.51.100.2"}
    )
    assert status == 429


IDENTITY_CASES = [
    (
        "forged signature",
        lambda e: e.token("cust-x", secret="not-the-site-secret-" * 2),
        401,
        "invalid_identity",
    ),
    ("expired", lambda e: e.token("cust-x", ttl_s=-3600), 401, "identity_expired"),
    ("other site", lambda e: e.token("cust-x", site="other-bank"), 403, "identity_site_mismatch"),
    (
        "alg none",
        lambda e: jwt.encode(
            {"sub": "cust-x", "aud": "demo-bank", "iat": 1, "exp": 2**40}, None, algorithm="none"
        ),
        401,
        "invalid_identity",
    ),
    ("garbage", lambda e: "not.a.jwt", 401, "invalid_identity"),
    ("subject with braces", lambda e: e.token("{cust-x}"), 401, "invalid_identity"),
]


@pytest.mark.parametrize(
    ("make_token", "status", "code"),
    [c[1:] for c in IDENTITY_CASES],
    ids=[c[0] for c in IDENTITY_CASES],
)
async def test_bad_identity_tokens_are_refused_and_merge_nothing(
    engine: EngineClient, redis: aioredis.Redis, make_token: Any, status: int, code: str
) -> None:
    anon = new_anon()
    ok, _, _ = await engine.post_events(
        _batch([event("page_view", page="/loans")], anonymous_id=anon)
    )
    assert ok == 200
    got, resp, _ = await engine.post_events(
        _batch([event("page_view", page="/loans")], anonymous_id=anon, identity=make_token(engine))
    )
    assert got == status, resp
    assert resp["error"]["code"] == code
    assert resp["error"]["path"] == "$.identity"
    found = await redis.keys("rb:*")
    assert not [k for k in found if "{c:" in k]  # no customer profile was created
    anon_profile = orjson.loads(await redis.get(f"rb:{{a:demo-bank:{anon}}}:p"))
    assert layout.MERGED_INTO not in anon_profile


async def test_handler_errors_never_leak_tracebacks(engine: EngineClient) -> None:
    status, resp, _ = await engine.post_events(b"\xff\xfe not json")
    assert status == 400
    assert "Traceback" not in orjson.dumps(resp).decode()
