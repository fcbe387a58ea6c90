"""A Valkey that may evict, or is full: the engine says so, and refuses cleanly.

Ringback's state (profiles, dedupe, open callbacks, audit dictionaries) must not be
evicted: the engine warns at startup when the server's policy would; with
`noeviction` a full server refuses writes, which ingest answers 503 + Retry-After
(`store_unavailable`), never a 500, and accepts again once there is room."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import event

from engine.core.settings import Settings
from engine.valkey.embedded import EmbeddedValkey, free_port

_serial = itertools.count()


@pytest.fixture
async def own_valkey(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedValkey, aioredis.Redis]]:
    """A dedicated valkey-server (its memory settings are this test's), with an admin."""
    server = EmbeddedValkey(tmp_path / f"valkey-{next(_serial)}", port=free_port())
    server.start()
    admin = aioredis.Redis.from_url(server.url, decode_responses=True)
    yield server, admin
    await admin.aclose()
    await asyncio.to_thread(server.stop)  # waits for the process: not on the loop


def _on(settings: Settings, valkey: EmbeddedValkey) -> Settings:
    """The engine on this test's own single node (also in a cluster run of the suite)."""
    return replace(settings, redis_url=valkey.url, redis_cluster=False, replica_acks=0)


async def test_an_evicting_policy_is_named_in_a_startup_warning(
    make_engine: Any,
    settings: Settings,
    own_valkey: tuple[EmbeddedValkey, aioredis.Redis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    valkey, admin = own_valkey
    await admin.config_set("maxmemory-policy", "allkeys-lru")
    with caplog.at_level(logging.WARNING):
        await make_engine(_on(settings, valkey))
    warned = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warned) == 1 and "allkeys-lru" in warned[0] and "noeviction" in warned[0]


async def test_noeviction_starts_without_a_warning(
    make_engine: Any,
    settings: Settings,
    own_valkey: tuple[EmbeddedValkey, aioredis.Redis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    valkey, admin = own_valkey
    assert await admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    with caplog.at_level(logging.WARNING):
        await make_engine(_on(settings, valkey))
    assert not [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]


async def test_a_full_valkey_is_a_503_with_retry_after_then_accepts_again(
    make_engine: Any,
    settings: Settings,
    own_valkey: tuple[EmbeddedValkey, aioredis.Redis],
) -> None:
    valkey, admin = own_valkey
    engine = await make_engine(_on(settings, valkey))
    status, body, _ = await engine.post_events(engine.batch([event("page_view", page="/")]))
    assert status == 200, body
    used = int((await admin.info("memory"))["used_memory"])
    await admin.config_set("maxmemory", str(max(used // 2, 1024 * 1024)))  # full already
    try:
        batch = engine.batch([event("page_view", page="/mortgages")])
        status, body, headers = await engine.post_events(batch)
        assert status == 503, body
        assert body["error"]["code"] == "store_unavailable"
        assert int(headers["Retry-After"]) >= 1
    finally:
        await admin.config_set("maxmemory", "0")
    status, body, _ = await engine.post_events(batch)  # the snippet's retry
    assert status == 200, body
    assert body.get("accepted", 1) >= 1
