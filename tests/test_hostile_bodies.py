"""Hostile request bodies: compressed, bombs, deep nesting, broken framing.

Every one is refused with a JSON error and a stable code, none is a 500, and a
decompression bomb does not stall the event loop (engine.bodies inflates in
bounded steps; aiohttp's own inflation is switched off).
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from conftest import EngineClient, LiveEngine, event, new_anon
from loop_guard import LoopBlockGuard

from engine.ingest.bodies import MAX_JSON_DEPTH
from engine.valkey import keys


async def _written(redis: aioredis.Redis) -> list[str]:
    """Every key but the capacity monitor's heartbeat, which each worker writes as it
    starts (engine/contact_center/capacity.py), whatever the requests do."""
    return [k for k in await redis.keys("rb:*") if k != keys.CAPACITY_AGENTS]


def _batch(events: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"site": "demo-bank", "anonymous_id": new_anon(), "events": events}
    body.update(kw)
    return body


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """~60 KB of gzip that inflates to 63 MB of zeros (built once, outside the loop)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * 1_000_000
    parts = [packer.compress(chunk) for _ in range(63)]
    parts.append(packer.flush())
    return b"".join(parts)


def _nested_batch(depth: int, before: int = 0) -> bytes:
    """A batch whose last click's props carry an unknown field nested `depth` objects
    deep, after `before` ordinary clicks (built as bytes: orjson stops at 255 levels)."""
    marker = "__NESTED__"
    events = [event("click") for _ in range(before)]
    events.append(event("click", props={"text": "ok", "extra": marker}))
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    return orjson.dumps(_batch(events)).replace(f'"{marker}"'.encode(), nested)


async def _post_raw(
    engine: EngineClient, body: bytes, headers: dict[str, str]
) -> tuple[int, Any, dict[str, str]]:
    hdrs = {"Content-Type": "application/json", **headers}
    async with engine.session.post(f"{engine.url}/v1/events", data=body, headers=hdrs) as r:
        raw = await r.read()
        try:
            parsed: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = raw.decode(errors="replace")
        return r.status, parsed, dict(r.headers)


@pytest.mark.parametrize(
    ("coding", "pack"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),  # zlib-wrapped, as the RFC says
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send
        ("GZip", gzip.compress),
    ],
    ids=["gzip", "x-gzip", "deflate-zlib", "deflate-raw", "gzip-mixed-case"],
)
async def test_compressed_batch_is_accepted(
    engine: EngineClient, redis: aioredis.Redis, coding: str, pack: Any
) -> None:
    anon = new_anon()
    body = pack(orjson.dumps(_batch([event("click")], anonymous_id=anon)))
    status, resp, _ = await _post_raw(engine, body, {"Content-Encoding": coding})
    assert status == 200, resp
    assert resp["accepted"] == 1
    assert await redis.keys(f"*{anon}*")


async def test_gzip_bomb_is_413_and_closes_the_connection(
    engine: EngineClient, redis: aioredis.Redis, gzip_bomb: bytes
) -> None:
    assert len(gzip_bomb) < 70_000
    status, resp, headers = await _post_raw(engine, gzip_bomb, {"Content-Encoding": "gzip"})
    assert status == 413, resp
    assert resp["error"]["code"] == "payload_too_large"
    assert headers.get("Connection", "").lower() == "close"
    assert await _written(redis) == []


async def test_after_a_bomb_the_server_does_not_wait_for_the_rest_of_the_body(
    engine: EngineClient, gzip_bomb: bytes
) -> None:
    """The body is chunked and never finished: aiohttp's lingering read would keep the
    connection open for 10 s waiting for it; after a bomb the server closes at once."""
    host, port = engine.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(gzip_bomb):x}\r\n".encode()
            + gzip_bomb
            + b"\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # until the server closes
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert orjson.loads(body)["error"]["code"] == "payload_too_large"


async def test_inflated_body_just_over_the_cap_is_413(engine: EngineClient) -> None:
    cap = engine.settings.limits.max_body_bytes
    body = orjson.dumps(_batch([event("click")], pad="x" * cap))
    status, resp, _ = await _post_raw(engine, gzip.compress(body), {"Content-Encoding": "gzip"})
    assert status == 413 and resp["error"]["code"] == "payload_too_large"


async def test_gzip_bombs_do_not_stall_the_event_loop(
    engine: EngineClient, loop_guard: LoopBlockGuard, gzip_bomb: bytes
) -> None:
    """The loop guard (running since `engine` started) saw no callback of the engine's
    or aiohttp's keep the loop from others for 50 ms while five bombs were refused.

    Its measure leaves out time spent waiting for a CPU, so a loaded CI machine does
    not read as a stall (a wall-clock sleeper there lags 70-280 ms for no fault of
    ours). Before the fix aiohttp inflated each bomb in its socket-read callback, then
    lingered to inflate the rest after the 413: 150-180 ms of the loop's time per bomb,
    caught here as a block in aiohttp's frames."""
    for _ in range(5):
        status, resp, _ = await _post_raw(engine, gzip_bomb, {"Content-Encoding": "gzip"})
        assert status == 413, resp
    await asyncio.sleep(0.05)  # let any lingering work after the answers run (and be timed)
    assert loop_guard.started
    assert loop_guard.engine_blocks() == [], "\n".join(
        b.describe() for b in loop_guard.engine_blocks()
    )


@pytest.mark.parametrize(
    "body",
    [
        b"\x1f\x8b\x08\x00 this is not gzip at all",
        gzip.compress(b'{"site": "demo-bank"}')[:-6],  # truncated
        gzip.compress(b'{"site": "demo-bank"}') + b"trailing junk",
        b"plain text claiming to be gzip",
    ],
    ids=["bad-header", "truncated", "trailing-junk", "not-compressed"],
)
async def test_invalid_gzip_is_400_invalid_encoding(engine: EngineClient, body: bytes) -> None:
    status, resp, _ = await _post_raw(engine, body, {"Content-Encoding": "gzip"})
    assert status == 400, resp
    assert resp["error"]["code"] == "invalid_encoding"
    assert resp["error"]["path"] == "$"


async def test_invalid_deflate_is_400_invalid_encoding(engine: EngineClient) -> None:
    status, resp, _ = await _post_raw(
        engine, b"\xff\xfe not deflate", {"Content-Encoding": "deflate"}
    )
    assert status == 400 and resp["error"]["code"] == "invalid_encoding"


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br"])
async def test_unsupported_content_encoding_is_415_json(engine: EngineClient, coding: str) -> None:
    body = orjson.dumps(_batch([event("click")]))
    status, resp, _ = await _post_raw(engine, body, {"Content-Encoding": coding})
    assert status == 415, resp
    assert resp["error"]["code"] == "unsupported_content_encoding"
    assert resp["error"]["message"]


async def test_identity_encoding_is_a_plain_body(engine: EngineClient) -> None:
    body = orjson.dumps(_batch([event("click")]))
    status, resp, _ = await _post_raw(engine, body, {"Content-Encoding": "identity"})
    assert status == 200, resp


async def test_props_nested_1000_deep_is_400_with_path(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    status, resp, _ = await engine.post_events(_nested_batch(1000, before=1))
    assert status == 400, resp
    assert resp["error"]["code"] == "too_deeply_nested"
    # batch, events, event, props, then the unknown field's objects up to the cap
    assert resp["error"]["path"] == "$.events[1].props.extra" + ".a" * (MAX_JSON_DEPTH - 4)
    assert await _written(redis) == []


async def test_nesting_one_past_the_cap_is_refused_and_at_the_cap_is_not(
    engine: EngineClient,
) -> None:
    at_cap = _nested_batch(MAX_JSON_DEPTH - 4)  # batch, events, event, props hold the rest
    status, resp, _ = await engine.post_events(at_cap)
    assert status == 200, resp
    status, resp, _ = await engine.post_events(_nested_batch(MAX_JSON_DEPTH - 3))
    assert status == 400 and resp["error"]["code"] == "too_deeply_nested"


async def test_brackets_inside_strings_do_not_count_as_nesting(engine: EngineClient) -> None:
    text = "[" * 40 + '{"\\"' + "]" * 10
    status, resp, _ = await engine.post_events(
        _batch([event("click", props={"text": text[:256]}) for _ in range(20)])
    )
    assert status == 200, resp


@pytest.mark.parametrize(
    "body",
    [b"[" * 5000, b'{"site":' + b'{"a":' * 5000, b"[" * 2000 + b"]" * 2000],
    ids=["unclosed-arrays", "unclosed-objects", "closed-arrays"],
)
async def test_deep_malformed_json_is_400_not_500(engine: EngineClient, body: bytes) -> None:
    status, resp, _ = await engine.post_events(body)
    assert status == 400, resp
    assert resp["error"]["code"] == "too_deeply_nested"


async def test_deeply_nested_gzip_body_is_400(engine: EngineClient) -> None:
    body = gzip.compress(_nested_batch(1000))
    status, resp, _ = await _post_raw(engine, body, {"Content-Encoding": "gzip"})
    assert status == 400 and resp["error"]["code"] == "too_deeply_nested"


async def test_compressed_body_on_other_json_routes_is_not_a_500(engine: EngineClient) -> None:
    creds = engine.credentials
    login = gzip.compress(orjson.dumps({"user": creds["agent_user"], "password": "x"}))
    async with engine.session.post(
        f"{engine.url}/v1/agents/login",
        data=login,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    ) as r:
        assert r.status < 500
        assert "error" in await r.json()


async def test_deeply_nested_attributes_are_400_not_500(engine: EngineClient) -> None:
    body = b'{"plan":' + b'{"a":' * 5000 + b"1" + b"}" * 5001
    async with engine.session.put(
        f"{engine.url}/v1/profiles/cust-1/attributes",
        data=body,
        headers={"Content-Type": "application/json", **engine.api_headers},
    ) as r:
        # Every JSON route reads its body through engine.bodies: the nesting cap
        # answers before any decoder descends, and names where it was exceeded.
        assert r.status == 400, await r.text()
        error = (await r.json())["error"]
        assert error["code"] == "too_deeply_nested"
        assert error["path"].startswith("$.plan.a.a")


async def test_served_engine_inflates_gzip_and_refuses_bombs_like_the_test_engine(
    live_engine: LiveEngine, gzip_bomb: bytes
) -> None:
    """`python -m engine serve` builds its own AppRunner: same answers there."""
    batch = orjson.dumps(_batch([event("click")]))
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession() as session:
        url = f"{live_engine.url}/v1/events"
        async with session.post(url, data=gzip.compress(batch), headers=headers) as r:
            assert r.status == 200, await r.text()
        async with session.post(url, data=gzip_bomb, headers=headers) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "payload_too_large"
        async with session.post(
            url, data=batch, headers={**headers, "Content-Encoding": "br"}
        ) as r:
            assert r.status == 415
            assert (await r.json())["error"]["code"] == "unsupported_content_encoding"
