"""Signed webhooks: verifiable with `standardwebhooks`, retried, reclaimed, dead-lettered."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from engine import keys
from engine.deliver import new_decision_id, write_trigger
from engine.embedded import EmbeddedValkey, free_port
from engine.metrics import Metrics
from engine.store import Store
from engine.webhooks import Dispatcher, WebhookTarget, dead_letter_stream, replay_dead_letters

SECRET = "whsec_" + base64.b64encode(b"ringback-test-secret-32-bytes!!!").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the-previous-secret-in-rotation").decode()


@dataclass
class Receiver:
    """A bank system on loopback: records what arrives; `behaviour` decides the answer."""

    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    behaviour: Callable[[int], Awaitable[int]] | None = None

    def verified_ids(self, secret: str = SECRET) -> list[str]:
        ids = []
        for headers, body in self.requests:
            Webhook(secret).verify(body, headers)
            ids.append(headers["webhook-id"])
        return ids


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    rec = Receiver()

    async def handle(request: web.Request) -> web.Response:
        rec.requests.append((dict(request.headers), await request.read()))
        status = await rec.behaviour(len(rec.requests)) if rec.behaviour else 204
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    rec.url = str(server.make_url("/hook"))
    return rec


@pytest.fixture
async def store(valkey: EmbeddedValkey, redis: aioredis.Redis) -> AsyncIterator[Store]:
    s = Store(valkey.url, Metrics())
    await s.load_library()
    yield s
    await s.close()


def target(url: str, **kw: Any) -> WebhookTarget:
    defaults: dict[str, Any] = {
        "secrets": (SECRET, OLD_SECRET),
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
        "timeout_s": 2.0,
        "reclaim_idle_s": 1.0,
    }
    defaults.update(kw)
    return WebhookTarget(
        name=kw.pop("name", "cti"), url=url, **{k: v for k, v in defaults.items() if k != "name"}
    )


async def fire(store: Store, customer: str = "cust-1", kind: str = "callback") -> str:
    trigger_id = new_decision_id()
    await write_trigger(
        store,
        keys.customer_prefix(customer),
        {
            "id": trigger_id,
            "kind": kind,
            "customer_id": customer,
            "rule": "mortgage_callback",
            "reason": "Mortgage calculator used 6 times for 320 000",
            "priority": 2,
            "created_ms": int(time.time() * 1000),
            "context": {"calc": {"amount": 320000}},
        },
    )
    return trigger_id


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_deliveries_verify_with_the_standard_library(
    store: Store, receiver: Receiver
) -> None:
    d = Dispatcher(store, [target(receiver.url)], Metrics())
    await d.start()
    try:
        trigger_id = await fire(store)
        await until(lambda: len(receiver.requests) == 1)
    finally:
        await d.stop()
    headers, body = receiver.requests[0]
    payload = Webhook(SECRET).verify(body, headers)
    assert payload["type"] == "ringback.callback"
    assert payload["data"]["id"] == trigger_id
    assert payload["data"]["context"] == {"calc": {"amount": 320000}}
    Webhook(OLD_SECRET).verify(body, headers)  # receivers mid-rotation verify too
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"320000", b"999999"), headers)
    stale = {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, stale)


@pytest.mark.slow  # a real minute of outage
async def test_receiver_down_for_a_while_gets_it_once_it_returns(store: Store) -> None:
    """The bank's system fails (503), then is off the network for 60 s (a deploy, a
    partition): every trigger raised meanwhile arrives once it is back, and each
    webhook-id is delivered (answered 2xx) exactly once."""
    rec = Receiver()
    answers: list[tuple[str, int]] = []  # (webhook-id, status), in arrival order
    port = free_port()
    rec.url = f"http://127.0.0.1:{port}/hook"

    async def handle(request: web.Request) -> web.Response:
        rec.requests.append((dict(request.headers), await request.read()))
        status = 503 if len(answers) < 2 else 204
        answers.append((request.headers["webhook-id"], status))
        return web.Response(status=status)

    async def up() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hook", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = await up()
    # Backoff capped at 5 s: the outage needs ~20 attempts, far below max_attempts.
    d = Dispatcher(
        store, [target(rec.url, backoff_base_s=0.5, backoff_max_s=5.0, max_attempts=60)], Metrics()
    )
    await d.start()
    try:
        first = await fire(store)
        await until(lambda: len(answers) == 2)  # 503, 503
        await runner.cleanup()  # gone: connections refused
        down_at = time.monotonic()
        during = [await fire(store, customer=f"cust-{i}") for i in range(2, 7)]
        await asyncio.sleep(60 - (time.monotonic() - down_at))
        assert len(answers) == 2  # nothing got through while it was away
        runner = await up()
        everything = {first, *during}
        await until(lambda: {i for i, s in answers if s == 204} == everything, timeout_s=30)
        await asyncio.sleep(0.5)  # nothing more may arrive after the successes
    finally:
        await d.stop()
        await runner.cleanup()
    assert rec.verified_ids()[:2] == [first, first]  # one idempotency key for all attempts
    assert sorted(i for i, s in answers if s == 204) == sorted(everything)  # once each
    assert len(answers) == 2 + len(everything)
    assert await store.client.xlen(dead_letter_stream("cti")) == 0


async def test_a_dispatcher_killed_mid_delivery_is_replaced(
    store: Store, receiver: Receiver
) -> None:
    hang = asyncio.Event()

    async def hang_first(n: int) -> int:
        if n == 1:
            await hang.wait()
        return 200

    receiver.behaviour = hang_first
    first = Dispatcher(store, [target(receiver.url, timeout_s=30)], Metrics(), consumer="a")
    await first.start()
    trigger_id = await fire(store)
    await until(lambda: len(receiver.requests) == 1)
    await first.stop()  # dies holding the entry, unacknowledged
    hang.set()
    second = Dispatcher(store, [target(receiver.url, reclaim_idle_s=0.5)], Metrics(), consumer="b")
    await second.start()
    try:
        await until(lambda: len(receiver.requests) == 2)
        await asyncio.sleep(0.3)
    finally:
        await second.stop()
    assert receiver.verified_ids() == [trigger_id, trigger_id]
    pending = await store.client.xpending(
        keys.trigger_stream(keys.trigger_shard(keys.customer_prefix("cust-1"))), "wh:cti"
    )
    assert pending["pending"] == 0


async def test_after_max_attempts_it_is_dead_lettered_and_can_be_replayed(
    store: Store, receiver: Receiver
) -> None:
    failing = True

    async def behaviour(n: int) -> int:
        return 500 if failing else 200

    receiver.behaviour = behaviour
    metrics = Metrics()
    d = Dispatcher(store, [target(receiver.url, max_attempts=3)], metrics)
    await d.start()
    try:
        trigger_id = await fire(store)
        await until(lambda: len(receiver.requests) == 3)
        dead = dead_letter_stream("cti")
        await until(lambda: True)
        for _ in range(100):
            if await store.client.xlen(dead) == 1:
                break
            await asyncio.sleep(0.02)
        entries = await store.client.xrange(dead)
        assert len(entries) == 1 and entries[0][1]["webhook_id"] == trigger_id
        assert entries[0][1]["failed_attempts"] == "3"
        assert metrics.webhook_dead_letters.labels("cti")._value.get() == 1

        failing = False
        assert await replay_dead_letters(store, "cti") == 1
        await until(lambda: len(receiver.requests) == 4)
    finally:
        await d.stop()
    assert receiver.verified_ids()[-1] == trigger_id
    assert await store.client.xlen(dead_letter_stream("cti")) == 0


async def test_a_slow_target_does_not_delay_the_others(
    store: Store, aiohttp_server: Any, receiver: Receiver
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/slow", slow)
    slow_server = await aiohttp_server(app, host="127.0.0.1")
    d = Dispatcher(
        store,
        [
            target(str(slow_server.make_url("/slow")), name="sms", timeout_s=10, concurrency=1),
            target(receiver.url, name="cti"),
        ],
        Metrics(),
    )
    await d.start()
    try:
        started = time.monotonic()
        for i in range(3):
            await fire(store, customer=f"cust-{i}")
        await until(lambda: len(receiver.requests) == 3, timeout_s=4)
        assert time.monotonic() - started < 2.0
    finally:
        await d.stop()


async def test_targets_only_get_the_kinds_they_subscribe_to(
    store: Store, receiver: Receiver
) -> None:
    d = Dispatcher(store, [target(receiver.url, kinds=("notify",))], Metrics())
    await d.start()
    try:
        await fire(store, kind="callback")
        notify_id = await fire(store, kind="notify")
        await until(lambda: len(receiver.requests) == 1)
        await asyncio.sleep(0.2)
    finally:
        await d.stop()
    assert receiver.verified_ids() == [notify_id]


def test_dead_letters_cli_lists_and_replays(valkey: EmbeddedValkey, tmp_path: Any) -> None:
    import subprocess
    import sys

    import redis as sync_redis
    from conftest import REPO

    client = sync_redis.Redis.from_url(valkey.url, decode_responses=True)
    client.flushall()
    client.xadd(
        dead_letter_stream("cti"),
        {"id": "d1", "kind": "callback", "webhook_id": "d1", "failed_attempts": "8"},
    )
    base = [
        sys.executable,
        "-m",
        "engine",
        "webhooks",
        "dead-letters",
        "--target",
        "cti",
        "--redis",
        valkey.url,
        "--data-dir",
        str(tmp_path),
    ]
    listed = subprocess.run(base, cwd=REPO, capture_output=True, text=True)
    assert listed.returncode == 0 and '"webhook_id":"d1"' in listed.stdout
    replayed = subprocess.run([*base, "--replay"], cwd=REPO, capture_output=True, text=True)
    assert replayed.returncode == 0 and "replayed 1" in replayed.stdout
    assert client.xlen(dead_letter_stream("cti")) == 0
    assert client.xrange("rb:{wh:cti}:replay")[0][1] == {"id": "d1", "kind": "callback"}


async def test_the_engine_runs_a_dispatcher_for_configured_targets(
    make_engine: Any, settings: Any, receiver: Receiver, store: Store
) -> None:
    from engine.settings import Secret, WebhookConfig

    await make_engine(
        settings, webhooks=(WebhookConfig(name="cti", url=receiver.url, secrets=(Secret(SECRET),)),)
    )
    trigger_id = await fire(store)
    await until(lambda: len(receiver.requests) == 1)
    assert receiver.verified_ids() == [trigger_id]
