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
from conftest import StoreTarget
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from engine.core.ids import new_decision_id
from engine.core.metrics import Metrics
from engine.delivery.records import write_trigger
from engine.delivery.webhooks import (
    Dispatcher,
    WebhookTarget,
    dead_letter_stream,
    group_name,
    replay_dead_letters,
    replay_stream,
)
from engine.valkey import keys
from engine.valkey.store import Store

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
    return await start_receiver(aiohttp_server)


async def start_receiver(aiohttp_server: Any) -> Receiver:
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
async def store(store_target: StoreTarget, redis: aioredis.Redis) -> AsyncIterator[Store]:
    s = store_target.store()
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


async def fire(
    store: Store, customer: str = "cust-1", kind: str = "callback", channel: str = "callback"
) -> str:
    trigger_id = new_decision_id()
    await write_trigger(
        store,
        keys.customer_prefix(customer),
        {
            "id": trigger_id,
            "kind": kind,
            "channel": channel,
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


class _CutOff(asyncio.Protocol):
    """The receiver off the network: every connection is dropped as it is accepted."""

    def __init__(self, on_connection: Callable[[], None]) -> None:
        self.on_connection = on_connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.on_connection()
        transport.close()


async def undelivered(store: Store, target_name: str = "cti") -> int:
    """Entries the target's group has read and not acknowledged, over all its streams:
    at 0 no attempt is running or due, so nothing more can be sent."""
    streams = [keys.trigger_stream(i) for i in range(keys.TRIGGER_SHARDS)]
    total = 0
    for stream in [*streams, replay_stream(target_name)]:
        total += int((await store.client.xpending(stream, group_name(target_name)))["pending"])
    return total


async def settled(store: Store, target_name: str) -> bool:
    """The target's group has read every trigger entry and acknowledged each one:
    delivered, or skipped as not its kind or channel. Nothing more can arrive."""
    for i in range(keys.TRIGGER_SHARDS):
        stream = keys.trigger_stream(i)
        if not await store.client.exists(stream):
            continue
        last = (await store.client.xinfo_stream(stream))["last-generated-id"]
        for group in await store.client.xinfo_groups(stream):
            if group["name"] == group_name(target_name) and (
                group["last-delivered-id"] != last or group["pending"]
            ):
                return False
    return True


async def until_settled(store: Store, *target_names: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all([await settled(store, name) for name in target_names]):
        if time.monotonic() > deadline:
            raise AssertionError(f"{target_names} did not settle in time")
        await asyncio.sleep(0.02)


@pytest.mark.slow  # a real minute of outage
async def test_receiver_down_for_a_while_gets_it_once_it_returns(store: Store) -> None:
    """The bank's system fails (503), then is off the network for 60 s (a deploy, a
    partition): every trigger raised meanwhile arrives once it is back, and each
    webhook-id is delivered (answered 2xx) exactly once.

    The receiver's port is held for the whole test (nobody else can take it during
    the minute): one listening socket, whose connections go to the aiohttp app while
    it is up and are dropped on accept while it is down."""
    rec = Receiver()
    answers: list[tuple[str, int]] = []  # (webhook-id, status), in arrival order
    dropped: list[float] = []  # when each connection attempt during the outage came
    up = True

    async def handle(request: web.Request) -> web.Response:
        nonlocal up
        rec.requests.append((dict(request.headers), await request.read()))
        status = 503 if len(answers) < 2 else 204
        answers.append((request.headers["webhook-id"], status))
        response = web.Response(status=status)
        if len(answers) == 2:  # the outage starts with this answer: no later request
            up = False  # gets a connection, and this one is closed after the answer
            response.force_close()
        return response

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    serve = runner.server
    assert serve is not None

    def connection() -> asyncio.Protocol:
        return serve() if up else _CutOff(lambda: dropped.append(time.monotonic()))

    listener = await asyncio.get_running_loop().create_server(connection, "127.0.0.1", 0)
    rec.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/hook"
    # Backoff capped at 5 s: the outage needs ~20 attempts, far below max_attempts.
    d = Dispatcher(
        store, [target(rec.url, backoff_base_s=0.5, backoff_max_s=5.0, max_attempts=60)], Metrics()
    )
    await d.start()
    try:
        first = await fire(store)
        await until(lambda: not up)  # 503, 503: the outage has begun
        await serve.shutdown(1.0)  # and no kept-alive connection outlives it
        down_at = time.monotonic()
        during = [await fire(store, customer=f"cust-{i}") for i in range(2, 7)]
        # The outage is the scenario, not a wait for something: it lasts a minute.
        await asyncio.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
        assert len(answers) == 2  # nothing got through while it was away
        assert len(dropped) >= 6, dropped  # though the dispatcher kept trying
        up = True
        everything = {first, *during}
        await until(lambda: {i for i, s in answers if s == 204} == everything, timeout_s=30)
        # Nothing more may arrive: once every entry is acknowledged no attempt is due;
        # stopping ends any still running, and once the receiver's connections are
        # closed every request that reached it has been answered and recorded.
        deadline = time.monotonic() + 10
        while await undelivered(store):
            assert time.monotonic() < deadline, "deliveries never acknowledged"
            await asyncio.sleep(0.02)
        await d.stop()
        await until(lambda: not serve.connections)
    finally:
        await d.stop()
        listener.close()
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


@pytest.mark.slow  # a target that takes real seconds to answer
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
        await until_settled(store, "cti")
    finally:
        await d.stop()
    assert receiver.verified_ids() == [notify_id]


async def test_each_channel_reaches_the_targets_that_serve_it(
    store: Store, aiohttp_server: Any
) -> None:
    """The e-mail gateway gets e-mail, the SMS gateway SMS, the CTI phone callbacks: a
    callback that fell back to e-mail must not make the CTI dial the customer."""
    receivers = {name: await start_receiver(aiohttp_server) for name in ("cti", "mail", "sms")}
    d = Dispatcher(
        store,
        [
            target(receivers["cti"].url, name="cti", channels=("callback",)),
            target(receivers["mail"].url, name="mail", channels=("email",)),
            target(receivers["sms"].url, name="sms", channels=("sms",)),
        ],
        Metrics(),
    )
    await d.start()
    try:
        call = await fire(store, kind="callback", channel="callback")
        mail = await fire(store, kind="notify", channel="email")
        text = await fire(store, kind="notify", channel="sms")
        await until(lambda: all(len(r.requests) >= 1 for r in receivers.values()))
        await until_settled(store, "cti", "mail", "sms")
    finally:
        await d.stop()
    assert receivers["cti"].verified_ids() == [call]
    assert receivers["mail"].verified_ids() == [mail]
    assert receivers["sms"].verified_ids() == [text]


def test_dead_letters_cli_lists_and_replays(store_target: StoreTarget, tmp_path: Any) -> None:
    import subprocess
    import sys

    from conftest import REPO

    client = store_target.emptied_sync_client()
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
        *store_target.cli_args,
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
    from engine.core.settings import Secret, WebhookConfig

    await make_engine(
        settings, webhooks=(WebhookConfig(name="cti", url=receiver.url, secrets=(Secret(SECRET),)),)
    )
    trigger_id = await fire(store)
    await until(lambda: len(receiver.requests) == 1)
    assert receiver.verified_ids() == [trigger_id]


async def test_an_expired_trigger_is_dead_lettered_not_dropped(
    store: Store, receiver: Receiver
) -> None:
    """An outage longer than a trigger's life: its record has expired (two days past the
    trigger's expiry) but its customer was never erased, so after the last attempt it
    goes to the dead-letter stream instead of being acknowledged as withdrawn."""

    async def behaviour(n: int) -> int:
        return 503

    receiver.behaviour = behaviour
    prefix = keys.customer_prefix("cust-expired")
    trigger_id = new_decision_id()
    long_ago_ms = int(time.time() * 1000) - 3 * 86_400_000
    await write_trigger(
        store,
        prefix,
        {
            "id": trigger_id,
            "kind": "callback",
            "prefix": prefix,
            "created_ms": long_ago_ms,
            "expires_ms": long_ago_ms + 600_000,
        },
    )
    await store.client.delete(keys.trigger_record(trigger_id))  # what its TTL does
    metrics = Metrics()
    d = Dispatcher(store, [target(receiver.url, max_attempts=2)], metrics)
    await d.start()
    try:

        async def dead_lettered() -> bool:
            return bool(await store.client.xlen(dead_letter_stream("cti")) == 1)

        deadline = time.monotonic() + 10
        while not await dead_lettered():
            assert time.monotonic() < deadline, "never dead-lettered"
            await asyncio.sleep(0.02)
    finally:
        await d.stop()
    [(_, fields)] = await store.client.xrange(dead_letter_stream("cti"))
    assert fields["webhook_id"] == trigger_id
    assert metrics.webhook_deliveries.labels("cti", "withdrawn")._value.get() == 0


def test_a_webhook_target_never_shows_its_signing_secrets() -> None:
    """Targets end up in logs, tracebacks and debuggers: their repr names the target
    but holds no secret (anyone with one can forge deliveries)."""
    t = target("http://127.0.0.1:1/hook")
    for shown in (repr(t), str(t), f"{t!r}", repr([t])):
        assert SECRET not in shown and OLD_SECRET not in shown
        assert SECRET.removeprefix("whsec_") not in shown
        assert "cti" in shown
    assert t.secrets == (SECRET, OLD_SECRET)  # still there for signing
