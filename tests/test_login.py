"""Agent sign-in under attack: throttling, hashing off the loop, the Secure cookie.

Against the engine in this process (`make_engine`), so the loop guard in conftest
fails any test in which the engine blocks the event loop for more than 50 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import EngineClient
from loop_guard import LoopBlockGuard

from engine.core.settings import Agent, Settings, hash_password
from engine.http.state import LOGIN_THROTTLE
from engine.valkey import keys

PROXY = ("127.0.0.1/32",)  # the test client is the trusted proxy; X-Forwarded-For names clients


async def login(
    engine: EngineClient,
    user: str,
    password: str,
    *,
    client: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    hdrs = dict(headers or {})
    if client is not None:
        hdrs["X-Forwarded-For"] = client
    async with engine.session.post(
        f"{engine.url}/v1/agents/login", json={"user": user, "password": password}, headers=hdrs
    ) as r:
        return r.status, await r.json(), dict(r.headers)


async def window_passes(redis: aioredis.Redis) -> None:
    """Stand-in for waiting 15 minutes: the throttle's windows are Valkey TTLs."""
    async for key in redis.scan_iter(match="rb:{login}:*"):
        await redis.pexpire(key, 1)
    await asyncio.sleep(0.01)


async def test_forty_wrong_passwords_from_loopback_are_throttled_before_hashing(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    user, password = engine.credentials["agent_user"], engine.credentials["agent_password"]
    statuses = []
    for i in range(40):
        status, body, headers = await login(engine, user, f"wrong-{i}")
        statuses.append(status)
        if status == 429:
            assert body["error"]["code"] == "rate_limited"
            assert 0 < int(headers["Retry-After"]) <= 900
    # Ten guesses per user per window, then refused: from 127.0.0.1 too.
    assert statuses == [401] * 10 + [429] * 30

    # The right password is refused as well until the window passes...
    status, body, headers = await login(engine, user, password)
    assert status == 429 and int(headers["Retry-After"]) > 0

    await window_passes(redis)
    status, body, _ = await login(engine, user, password)
    assert status == 200 and body["user"] == user


async def test_a_flood_on_one_user_and_address_leaves_other_users_and_addresses_alone(
    make_engine: Any,
) -> None:
    engine: EngineClient = await make_engine(trusted_proxies=PROXY)
    user, password = engine.credentials["agent_user"], engine.credentials["agent_password"]
    for i in range(40):
        await login(engine, user, f"wrong-{i}", client="198.51.100.7")
    assert (await login(engine, user, password, client="198.51.100.7"))[0] == 429
    # The victim's name is locked from every address...
    assert (await login(engine, user, password, client="203.0.113.9"))[0] == 429
    # ...and the flooding address for every name...
    assert (await login(engine, "someone-else", "x", client="198.51.100.7"))[0] == 429
    # ...but another user from another address is served as usual.
    status, body, _ = await login(engine, "nobody", "guess", client="203.0.113.9")
    assert status == 401 and body["error"]["code"] == "invalid_credentials"


@pytest.mark.slow  # dozens of scrypt checks
async def test_one_address_guessing_many_user_names_is_throttled_across_workers(
    make_engine: Any,
) -> None:
    """Two engines on one Valkey stand for two workers: each sees half the guesses
    (under any per-worker limit), the shared count still stops the address."""
    first: EngineClient = await make_engine(trusted_proxies=PROXY)
    second: EngineClient = await make_engine(trusted_proxies=PROXY)
    statuses = [
        (await login((first, second)[i % 2], f"user-{i}", "guess", client="198.51.100.8"))[0]
        for i in range(33)
    ]
    assert statuses == [401] * 30 + [429] * 3
    assert (await login(first, "user-0", "guess", client="198.51.100.9"))[0] == 401


@pytest.mark.slow  # dozens of scrypt checks
async def test_one_ipv6_subscriber_cannot_rotate_through_its_64_block(
    make_engine: Any,
) -> None:
    """A home or mobile subscriber gets a whole /64: its addresses share one budget."""
    engine: EngineClient = await make_engine(trusted_proxies=PROXY)
    statuses = [
        (await login(engine, f"user-{i}", "guess", client=f"2001:db8:7:9::{i + 1:x}"))[0]
        for i in range(33)
    ]
    assert statuses == [401] * 30 + [429] * 3
    # The neighbouring /64 is someone else.
    assert (await login(engine, "user-0", "guess", client="2001:db8:7:a::1"))[0] == 401


async def test_password_checks_queue_boundedly_and_refuse_the_overflow(
    make_engine: Any, settings: Settings
) -> None:
    """Distinct names from distinct addresses pass both windows; what bounds their scrypt
    CPU is the worker's hashing slots: past the queue, 429 at once, no hash run."""
    limits = replace(settings.limits, login_concurrent_checks=1, login_queue=1)
    engine: EngineClient = await make_engine(trusted_proxies=PROXY, limits=limits)
    throttle = engine.extra["app"][LOGIN_THROTTLE]
    async with throttle.hashing_slot():  # the only slot is busy...
        queued = asyncio.create_task(login(engine, "first", "guess", client="198.51.100.20"))
        async with asyncio.timeout(10):
            while throttle.waiting < 1:  # noqa: ASYNC110 - the queue's one place taken
                await asyncio.sleep(0.005)
        status, body, headers = await login(engine, "second", "guess", client="198.51.100.21")
        assert status == 429 and body["error"]["code"] == "rate_limited"
        assert headers["Retry-After"] == "1"
    # The queued one was served once the slot came free: wrong password, not refused.
    status, body, _ = await queued
    assert status == 401 and body["error"]["code"] == "invalid_credentials"


async def test_a_successful_sign_in_clears_the_users_failures(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    user, password = engine.credentials["agent_user"], engine.credentials["agent_password"]
    for i in range(9):
        assert (await login(engine, user, f"wrong-{i}"))[0] == 401
    assert (await login(engine, user, password))[0] == 200
    assert await redis.exists(keys.login_user_key(user)) == 0
    # A fresh allowance: another nine typos are still answered 401, not 429.
    for i in range(9):
        assert (await login(engine, user, f"typo-{i}"))[0] == 401


async def test_twenty_concurrent_sign_ins_do_not_block_the_loop(
    make_engine: Any, loop_guard: LoopBlockGuard, record_property: Any
) -> None:
    shared_hash = await asyncio.to_thread(hash_password, "shift-start-pw")
    names = [f"agent-{i}" for i in range(20)]
    engine: EngineClient = await make_engine(
        agents=tuple(Agent(n, shared_hash) for n in names), trusted_proxies=PROXY
    )

    async def healthz_ms() -> float:
        started = time.perf_counter()
        async with engine.session.get(f"{engine.url}/healthz") as r:
            assert r.status == 200
            await r.read()
        return (time.perf_counter() - started) * 1000

    idle = [await healthz_ms() for _ in range(20)]
    done = asyncio.Event()

    async def probe() -> list[float]:
        samples = []
        while not done.is_set():
            samples.append(await healthz_ms())
            await asyncio.sleep(0.005)
        return samples

    async def sign_in(name: str, n: int) -> int:
        return (await login(engine, name, "shift-start-pw", client=f"192.0.2.{n}"))[0]

    prober = asyncio.create_task(probe())
    statuses = await asyncio.gather(*(sign_in(name, i) for i, name in enumerate(names)))
    done.set()
    busy = await prober

    assert statuses == [200] * 20
    assert loop_guard.started and loop_guard.engine_blocks() == []
    report = (
        f"/healthz idle p50 {statistics.median(idle):.1f} ms; during 20 concurrent sign-ins "
        f"p50 {statistics.median(busy):.1f} ms, max {max(busy):.1f} ms over {len(busy)} calls"
    )
    record_property("healthz_latency", report)
    print(report)


async def test_the_cookie_is_secure_behind_a_trusted_proxy_that_says_https(
    make_engine: Any,
) -> None:
    engine: EngineClient = await make_engine(trusted_proxies=PROXY)
    user, password = engine.credentials["agent_user"], engine.credentials["agent_password"]
    status, _, headers = await login(
        engine, user, password, client="203.0.113.5", headers={"X-Forwarded-Proto": "https"}
    )
    assert status == 200 and "Secure" in headers["Set-Cookie"]
    status, _, headers = await login(engine, user, password, client="203.0.113.5")
    assert status == 200 and "Secure" not in headers["Set-Cookie"]


async def test_an_untrusted_peer_claiming_https_gets_no_secure_cookie(
    engine: EngineClient,
) -> None:
    user, password = engine.credentials["agent_user"], engine.credentials["agent_password"]
    status, _, headers = await login(engine, user, password, headers={"X-Forwarded-Proto": "https"})
    assert status == 200 and "Secure" not in headers["Set-Cookie"]


async def test_the_loop_guard_names_the_engine_code_that_blocked(
    loop_guard: LoopBlockGuard,
) -> None:
    """The guard itself: an engine function run on the loop is caught and named; a
    test's own blocking is attributed to the test (a warning, not a failure)."""
    loop = asyncio.get_running_loop()
    guard = LoopBlockGuard(loop, limit_s=0.01)  # scrypt takes longer than 10 ms anywhere
    guard.start()
    try:
        loop.call_soon(hash_password, "on the loop")  # engine code as the callback
        loop.call_soon(lambda: time.sleep(0.03))  # test code as the callback
        await asyncio.sleep(0.01)  # both ran (FIFO) before this wakes up
    finally:
        guard.stop()
    culprits = [b.culprit for b in guard.slow]
    assert culprits == ["engine", "tests"], [b.describe() for b in guard.slow]
    assert any(f.name == "hash_password" for f in guard.slow[0].stack)
    assert "hash_password" in guard.slow[0].describe()


@pytest.mark.parametrize("body", [b"", b"[]", b'{"user": "a"}', b"not json"])
async def test_malformed_sign_ins_are_refused_with_a_json_error(
    engine: EngineClient, body: bytes
) -> None:
    async with engine.session.post(f"{engine.url}/v1/agents/login", data=body) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_login"
