"""Valkey down: 503 + Retry-After, nothing lost; back up: the engine recovers by itself."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import EngineClient, event, new_anon

from engine.embedded import EmbeddedValkey
from engine.settings import Settings

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("durability", ["aof", "fsync"])
async def test_killed_valkey_means_503_then_recovery_with_nothing_acknowledged_lost(
    make_engine: Any, settings: Settings, tmp_path: Path, durability: str
) -> None:
    valkey = EmbeddedValkey(
        tmp_path / f"valkey-{durability}",
        appendfsync="always" if durability == "fsync" else "everysec",
    )
    valkey.start()
    try:
        engine: EngineClient = await make_engine(
            replace(
                settings,
                redis_url=valkey.url,
                durability=durability,
                limits=replace(settings.limits, batches_per_minute_per_visitor=100_000),
            )
        )
        token = engine.token("cust-outage")
        anon = new_anon()
        acknowledged: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []

        async def send(
            body: dict[str, Any] | None = None,
        ) -> tuple[int, dict[str, Any], dict[str, str]]:
            body = body or engine.batch(
                [event("page_view", page="/loans")], anonymous_id=anon, identity=token
            )
            status, resp, headers = await engine.post_events(body)
            (acknowledged if status == 200 else refused).append(body)
            return status, resp, headers

        # Load in flight while valkey-server is killed with SIGKILL.
        first = await asyncio.gather(*[send() for _ in range(50)])
        assert all(s == 200 for s, _, _ in first)
        pending = [asyncio.create_task(send()) for _ in range(50)]
        await asyncio.sleep(0)
        assert valkey.process is not None
        os.kill(valkey.process.pid, signal.SIGKILL)
        valkey.process.wait()
        valkey.process = None
        during = await asyncio.gather(*pending)
        assert {s for s, _, _ in during} <= {200, 503}

        status, body, headers = await send()
        assert status == 503
        assert body["error"]["code"] == "store_unavailable"
        assert int(headers["Retry-After"]) >= 1
        assert (await engine.get_json("/readyz"))[0] == 503
        acked_before = len(acknowledged)

        valkey.start()  # same port, same data dir: the AOF is replayed
        for _ in range(100):
            if (await engine.get_json("/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        # Every acknowledged event survived the crash...
        prof = (await engine.profile("cust-outage"))["profile"]
        assert prof["counts"]["page_view"] >= acked_before
        # ...and the snippet's retries of refused batches land exactly once.
        for _ in range(5):
            retries, refused[:] = list(refused), []
            await asyncio.gather(*[send(b) for b in retries])
            if not refused:
                break
            await asyncio.sleep(0.1)
        assert refused == []  # the same engine, never restarted, accepts again
        prof = (await engine.profile("cust-outage"))["profile"]
        assert prof["counts"]["page_view"] == 101  # every batch sent, once
    finally:
        valkey.stop()


async def test_a_valkey_that_restarts_empty_gets_the_function_library_back(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    """A replacement server without our data (failover to a blank node) still works."""
    valkey = EmbeddedValkey(tmp_path / "valkey-blank")
    valkey.start()
    try:
        engine: EngineClient = await make_engine(replace(settings, redis_url=valkey.url))
        assert (await engine.post_events(engine.batch([event("click")])))[0] == 200
        valkey.stop()
        for f in (tmp_path / "valkey-blank").rglob("*"):
            if f.is_file():
                f.unlink()
        valkey.start()
        status, body, _ = await engine.post_events(engine.batch([event("click")]))
        assert status == 200, body
    finally:
        valkey.stop()
