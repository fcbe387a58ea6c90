"""Erasure is complete: after `DELETE /v1/profiles/{id}` nothing in Valkey names the
customer, their anonymous ids or what they typed into the calculator, open callbacks
are withdrawn from the floor, and an agent's late claim or completion writes nothing."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from conftest import EngineClient, calc, event, new_anon

from engine import keys
from engine.embedded import free_port
from engine.settings import Secret, Settings, WebhookConfig
from engine.triggers import GATEWAY
from engine.webhooks import dead_letter_stream

SECRET = "whsec_" + base64.b64encode(b"ringback-test-secret-32-bytes!!!").decode()
CUSTOMER = "cust-erase-4711"
AMOUNT = 321_987  # the calculator value: personal data that must go too
NOTE = "prefers calls after 6pm, wife handles the paperwork"
ALWAYS = ", ".join(f'{d}: "00:00-24:00"' for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
PACK = f"""
calendars:
  - {{name: open, timezone: Europe/London, hours: {{{ALWAYS}}}}}
offers:
  - {{id: adviser, title: Adviser, text: "Call us", product: mortgage, value: 900,
      channels: [web, callback]}}
rules:
  - id: mortgage_callback
    description: Used the mortgage calculator
    when: profile.calc.mortgage.count >= 1
    action: {{type: callback, offer: adviser, channel: callback}}
    priority: 10
    policy: {{cooldown_s: 0, channel_cooldown_s: 0, max_per_day: 0, calendar: open,
              expires_s: 600}}
  - id: adviser_offer
    when: profile.counts.page_view >= 1
    action: {{type: offer, offer: adviser, slot: hero}}
"""


async def until(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """Wait for a condition (an awaitable check); no timing is asserted."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def dump(redis: aioredis.Redis) -> str:
    """Every key name and value in Valkey (streams entry by entry), as one text."""
    out: list[str] = []
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        value: Any
        if kind == "string":
            value = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "set":
            value = sorted(await redis.smembers(key))
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "stream":
            value = await redis.xrange(key)
        else:
            value = kind
        out.append(f"{key} {value!r}")
    return "\n".join(out)


def needles(anon: str) -> list[str]:
    return [CUSTOMER, anon, str(AMOUNT), NOTE]


async def _engine(make_engine: Any, settings: Settings, tmp_path: Path) -> EngineClient:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "pack.yaml").write_text(PACK)
    down = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: every delivery fails
    hook = WebhookConfig(name="cti", url=down, secrets=(Secret(SECRET),), max_attempts=1)
    engine: EngineClient = await make_engine(replace(settings, rules_dir=rules, webhooks=(hook,)))
    return engine


async def _post(engine: EngineClient, events: list[dict[str, Any]], anon: str, **kw: Any) -> Any:
    status, body, _ = await engine.post_events(engine.batch(events, anonymous_id=anon, **kw))
    assert status == 200, body
    return body


async def test_erased_customer_leaves_nothing_behind_and_callbacks_are_withdrawn(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    async with engine.session.put(
        f"{engine.url}/v1/profiles/{CUSTOMER}/attributes",
        json={"consent_call": True},
        headers=engine.api_headers,
    ) as r:
        assert r.status == 200, await r.text()
    anon = new_anon()
    agent, csrf = await engine.agent()
    headers = {"X-CSRF-Token": csrf}
    try:
        async with agent.ws_connect(f"{engine.url}/v1/triggers/ws") as ws:
            assert orjson.loads((await ws.receive(timeout=5)).data)["kind"] == "snapshot"
            await engine.extra["app"][GATEWAY].ready.wait()

            # Anonymous: a page offer and the calculator (no callback for strangers).
            body = await _post(
                engine, [event("page_view", page="/mortgages"), calc(amount=AMOUNT)], anon
            )
            offer_ids = [d["id"] for d in body["decisions"] if d["action"] == "offer"]
            assert offer_ids
            # Signed in: merged, and a callback the agent takes and completes with a note.
            identity = engine.token(CUSTOMER)
            body = await _post(engine, [calc(amount=AMOUNT)], anon, identity=identity)
            done_id = next(d["id"] for d in body["decisions"] if d["action"] == "callback")
            async with agent.post(
                f"{engine.url}/v1/triggers/{done_id}/claim", headers=headers
            ) as r:
                assert r.status == 200, await r.text()
            async with agent.post(
                f"{engine.url}/v1/triggers/{done_id}/complete",
                json={"outcome": "converted", "note": NOTE},
                headers=headers,
            ) as r:
                assert r.status == 200, await r.text()
            history = (await engine.profile(CUSTOMER))["contact_history"]
            assert history[0]["note"] == NOTE  # the note is kept (and so must be erased)
            # A second callback stays open on the floor.
            body = await _post(engine, [calc(amount=AMOUNT)], anon, identity=identity)
            open_id = next(d["id"] for d in body["decisions"] if d["action"] == "callback")
            assert await redis.zscore("rb:{cap}:queue", open_id) is not None

            # The down webhook target gave both callbacks up (dead letters).
            async def dead_lettered() -> bool:
                return int(await redis.xlen(dead_letter_stream("cti"))) == 2

            await until(dead_lettered)
            before = await dump(redis)
            assert all(n in before for n in needles(anon))  # the scan does see them

            async with engine.session.delete(
                f"{engine.url}/v1/profiles/{CUSTOMER}", headers=engine.api_headers
            ) as r:
                assert r.status == 200, await r.text()
                erased = await r.json()
            assert erased["customer_id"] == CUSTOMER and erased["erased"] is True
            assert erased["triggers_withdrawn"] == 1
            assert erased["anonymous_profiles"] == 1
            assert erased["stream_entries_deleted"] >= 5  # 2 triggers, 1 outcome, 2 dead

            # Every agent's dashboard is told to drop the open callback.
            async def withdrawn() -> bool:
                msg = orjson.loads((await ws.receive(timeout=5)).data)
                return msg.get("kind") == "withdrawn" and msg.get("trigger_id") == open_id

            await until(withdrawn)
        assert await redis.zscore("rb:{cap}:queue", open_id) is None

        # A late agent cannot claim or complete it, and writes nothing doing so.
        async with agent.post(f"{engine.url}/v1/triggers/{open_id}/claim", headers=headers) as r:
            assert r.status in (404, 410)
        async with agent.post(
            f"{engine.url}/v1/triggers/{open_id}/complete",
            json={"outcome": "connected", "note": NOTE},
            headers=headers,
        ) as r:
            assert r.status in (404, 410)
    finally:
        await agent.close()

    for decision_id in [*offer_ids, done_id, open_id]:
        status, _ = await engine.get_json(
            f"/v1/decisions/{decision_id}", headers=engine.api_headers
        )
        assert status == 404, decision_id
    after = await dump(redis)
    leaks = [n for n in needles(anon) if n in after]
    assert leaks == [], after
    assert await redis.keys(f"*{CUSTOMER}*") == []


async def test_erasure_leaves_a_receipt_without_the_customer_id(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    anon = new_anon()
    await _post(engine, [event("page_view", page="/cards")], anon, identity=engine.token(CUSTOMER))
    async with engine.session.delete(
        f"{engine.url}/v1/profiles/{CUSTOMER}", headers=engine.api_headers
    ) as r:
        assert r.status == 200
        receipt_id = (await r.json())["receipt"]
    [(entry_id, receipt)] = await redis.xrange(keys.erasures_stream())
    assert entry_id == receipt_id
    assert receipt["by"] and int(receipt["keys_deleted"]) >= 1
    assert CUSTOMER not in orjson.dumps(receipt).decode()
    assert anon not in orjson.dumps(receipt).decode()
    # The same id erased again gives the same subject: a DPO can prove it was erased.
    async with engine.session.delete(
        f"{engine.url}/v1/profiles/{CUSTOMER}", headers=engine.api_headers
    ) as r:
        assert r.status == 200
    first, second = await redis.xrange(keys.erasures_stream())
    assert first[1]["subject"] == second[1]["subject"]


async def test_a_webhook_retry_for_an_erased_customer_is_dropped(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis, aiohttp_server: Any
) -> None:
    """A target failing with retries pending: once the customer is erased the dispatcher
    acknowledges the entry instead of retrying or dead-lettering it."""
    from aiohttp import web

    calls: list[bytes] = []

    async def failing(request: web.Request) -> web.Response:
        calls.append(await request.read())
        return web.Response(status=503)

    app = web.Application()
    app.router.add_post("/hook", failing)
    server = await aiohttp_server(app, host="127.0.0.1")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "pack.yaml").write_text(PACK)
    # 8 attempts with the dispatcher's default backoff (1 s, 2 s, 4 s, ...): the erasure
    # lands while a retry is waiting.
    hook = WebhookConfig(name="cti", url=str(server.make_url("/hook")), secrets=(Secret(SECRET),))
    engine: EngineClient = await make_engine(replace(settings, rules_dir=rules, webhooks=(hook,)))
    async with engine.session.put(
        f"{engine.url}/v1/profiles/{CUSTOMER}/attributes",
        json={"consent_call": True},
        headers=engine.api_headers,
    ) as r:
        assert r.status == 200
    await _post(engine, [calc(amount=AMOUNT)], new_anon(), identity=engine.token(CUSTOMER))

    async def first_attempt() -> bool:
        return len(calls) >= 1

    await until(first_attempt)
    async with engine.session.delete(
        f"{engine.url}/v1/profiles/{CUSTOMER}", headers=engine.api_headers
    ) as r:
        assert r.status == 200
    metrics = engine.metrics
    assert metrics is not None

    async def dropped() -> bool:
        return bool(metrics.webhook_deliveries.labels("cti", "withdrawn")._value.get() == 1)

    await until(dropped, timeout_s=20)
    assert len(calls) < 8
    assert await redis.xlen(dead_letter_stream("cti")) == 0
    shard = keys.trigger_shard(keys.customer_prefix(CUSTOMER))
    pending = await redis.xpending(keys.trigger_stream(shard), "wh:cti")
    assert pending["pending"] == 0
    assert CUSTOMER not in await dump(redis)


def test_the_profile_index_is_the_last_profile_key() -> None:
    """The Lua functions address profile keys by position: new ones go at the end."""
    assert keys.PROFILE_SUFFIXES[:6] == ("p", "seen", "links", "attrs", "hist", "pol")
    assert keys.profile_keys("rb:{c:x}")[-1] == keys.profile_refs("rb:{c:x}") == "rb:{c:x}:refs"
