"""`ringback simulate` drives real traffic through a real engine."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from conftest import EngineClient

from engine.cli.simulate import simulate


@pytest.mark.slow  # drives traffic for real seconds
async def test_simulated_visitors_build_profiles(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    report = await simulate(engine.url, rate=20, duration_s=1.0, speed=20, seed=7)

    assert report.errors == {}
    assert report.visitors >= 5
    assert report.batches >= report.visitors and report.events > report.batches
    profiles = [k async for k in redis.scan_iter("rb:{a:demo-bank:sim-*}:p")]
    assert len(profiles) == report.visitors
