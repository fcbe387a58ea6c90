"""Agents: sign-in, CSRF, exactly one claim, outcomes into history, the live queue."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import EngineClient, event, open_store

from engine.core.ids import new_decision_id
from engine.delivery.records import write_audit, write_trigger
from engine.http.state import GATEWAY
from engine.valkey import keys


async def _agent(engine: EngineClient) -> tuple[aiohttp.ClientSession, str]:
    return await engine.agent()


async def _trigger(engine: EngineClient, customer: str = "cust-t", ttl_ms: int = 600_000) -> str:
    store = open_store(engine.settings)
    trigger_id = new_decision_id()
    now = int(time.time() * 1000)
    prefix = keys.customer_prefix(customer)
    trigger = {
        "id": trigger_id,
        "kind": "callback",
        "customer_id": customer,
        "prefix": prefix,
        "rule": "mortgage_callback",
        "channel": "callback",
        "reason": "Used the mortgage calculator 6 times",
        "priority": 1,
        "created_ms": now,
        "expires_ms": now + ttl_ms,
    }
    await write_trigger(store, prefix, trigger)
    await write_audit(store, trigger_id, trigger)
    await store.close()
    return trigger_id


async def test_sign_in_rejects_wrong_passwords(engine: EngineClient) -> None:
    async with engine.session.post(
        f"{engine.url}/v1/agents/login",
        json={"user": engine.credentials["agent_user"], "password": "guess"},
    ) as r:
        assert r.status == 401
    async with engine.session.post(
        f"{engine.url}/v1/agents/login", json={"user": "nobody", "password": "guess"}
    ) as r:
        assert r.status == 401


async def test_exactly_one_agent_wins_a_claim(engine: EngineClient) -> None:
    trigger_id = await _trigger(engine)
    agents = [await _agent(engine) for _ in range(6)]

    async def claim(session: aiohttp.ClientSession, csrf: str) -> tuple[int, Any]:
        async with session.post(
            f"{engine.url}/v1/triggers/{trigger_id}/claim", headers={"X-CSRF-Token": csrf}
        ) as r:
            return r.status, await r.json()

    try:
        results = await asyncio.gather(*[claim(s, c) for s, c in agents for _ in range(3)])
    finally:
        for s, _ in agents:
            await s.close()
    assert sorted(status for status, _ in results) == [200] + [409] * 17
    losers = [body for status, body in results if status == 409]
    assert all(b["error"]["code"] == "already_claimed" for b in losers)


async def test_state_changes_need_the_csrf_token(engine: EngineClient) -> None:
    trigger_id = await _trigger(engine)
    session, _ = await _agent(engine)
    try:
        async with session.post(f"{engine.url}/v1/triggers/{trigger_id}/claim") as r:
            assert r.status == 403
            assert (await r.json())["error"]["code"] == "csrf_failed"
    finally:
        await session.close()
    async with engine.session.post(f"{engine.url}/v1/triggers/{trigger_id}/claim") as r:
        assert r.status == 401  # no credentials at all


async def test_expired_callbacks_cannot_be_claimed(engine: EngineClient) -> None:
    trigger_id = await _trigger(engine, ttl_ms=-1000)
    session, csrf = await _agent(engine)
    try:
        async with session.post(
            f"{engine.url}/v1/triggers/{trigger_id}/claim", headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 410
    finally:
        await session.close()


async def test_completion_lands_in_the_contact_history(engine: EngineClient) -> None:
    await engine.post_events(
        engine.batch([event("page_view", page="/mortgages")], identity=engine.token("cust-t"))
    )
    trigger_id = await _trigger(engine, "cust-t")
    session, csrf = await _agent(engine)
    headers = {"X-CSRF-Token": csrf}
    try:
        async with session.post(
            f"{engine.url}/v1/triggers/{trigger_id}/complete",
            json={"outcome": "converted"},
            headers=headers,
        ) as r:
            assert r.status == 409 and (await r.json())["error"]["code"] == "not_claimed"
        async with session.post(
            f"{engine.url}/v1/triggers/{trigger_id}/claim", headers=headers
        ) as r:
            assert r.status == 200
        async with session.post(
            f"{engine.url}/v1/triggers/{trigger_id}/complete",
            json={"outcome": "maybe"},
            headers=headers,
        ) as r:
            assert r.status == 400 and (await r.json())["error"]["path"] == "$.outcome"
        async with session.post(
            f"{engine.url}/v1/triggers/{trigger_id}/complete",
            json={"outcome": "converted", "value": 1200},
            headers=headers,
        ) as r:
            assert r.status == 200
        async with session.post(
            f"{engine.url}/v1/triggers/{trigger_id}/complete",
            json={"outcome": "no_answer"},
            headers=headers,
        ) as r:
            assert r.status == 409
    finally:
        await session.close()
    history = (await engine.profile("cust-t"))["contact_history"]
    assert history[0]["kind"] == "outcome" and history[0]["outcome"] == "converted"
    assert history[0]["decision_id"] == trigger_id


async def test_bank_systems_post_outcomes_with_an_api_token(engine: EngineClient) -> None:
    await engine.post_events(
        engine.batch([event("page_view", page="/cards")], identity=engine.token("cust-t"))
    )
    decision_id = await _trigger(engine, "cust-t")
    body = {"decision_id": decision_id, "outcome": "applied", "value": 5000}
    async with engine.session.post(f"{engine.url}/v1/outcomes", json=body) as r:
        assert r.status == 401
    async with engine.session.post(
        f"{engine.url}/v1/outcomes", json=body, headers=engine.api_headers
    ) as r:
        assert r.status == 200
    async with engine.session.post(
        f"{engine.url}/v1/outcomes",
        headers=engine.api_headers,
        json={"decision_id": "0" * 24, "outcome": "applied"},
    ) as r:
        assert r.status == 404
    history = (await engine.profile("cust-t"))["contact_history"]
    assert history[0]["outcome"] == "applied"


async def test_the_live_queue_shows_new_callbacks_and_claims(engine: EngineClient) -> None:
    older = await _trigger(engine, "cust-a")
    watcher, _ = await _agent(engine)
    claimer, csrf = await _agent(engine)
    try:
        async with watcher.ws_connect(f"{engine.url}/v1/triggers/ws") as ws:
            snapshot = orjson.loads((await ws.receive(timeout=5)).data)
            assert snapshot["kind"] == "snapshot"
            assert [t["id"] for t in snapshot["triggers"]] == [older]
            await engine.extra["app"][GATEWAY].ready.wait()
            started = time.monotonic()
            newer = await _trigger(engine, "cust-b")
            msg = orjson.loads((await ws.receive(timeout=5)).data)
            assert (msg["kind"], msg["id"]) == ("callback", newer)
            assert time.monotonic() - started < 1.0
            async with claimer.post(
                f"{engine.url}/v1/triggers/{newer}/claim", headers={"X-CSRF-Token": csrf}
            ) as r:
                assert r.status == 200
            msg = orjson.loads((await ws.receive(timeout=5)).data)
            assert (msg["kind"], msg["trigger_id"]) == ("claimed", newer)
            assert msg["by"] == engine.credentials["agent_user"]
    finally:
        await watcher.close()
        await claimer.close()


async def test_the_live_queue_needs_credentials_and_its_own_origin(engine: EngineClient) -> None:
    async with aiohttp.ClientSession() as anon:
        async with anon.get(f"{engine.url}/v1/triggers/ws") as r:
            assert r.status == 401
    watcher, _ = await _agent(engine)
    try:
        async with watcher.get(
            f"{engine.url}/v1/triggers/ws", headers={"Origin": "https://evil.example"}
        ) as r:
            assert r.status == 403
    finally:
        await watcher.close()


async def test_decision_audit_records_are_readable_by_id_with_a_token(engine: EngineClient) -> None:
    decision_id = await _trigger(engine, "cust-audit")
    status, body = await engine.get_json(f"/v1/decisions/{decision_id}")
    assert status == 401
    status, body = await engine.get_json(f"/v1/decisions/{decision_id}", headers=engine.api_headers)
    assert status == 200 and body["rule"] == "mortgage_callback"
    status, body = await engine.get_json("/v1/decisions/" + "f" * 24, headers=engine.api_headers)
    assert status == 404


@pytest.mark.slow  # waits for presence to expire: real seconds
async def test_the_live_queue_shows_when_the_customer_comes_online_and_leaves(
    make_engine: Any, settings: Any
) -> None:
    # Presence lapses 2 s after the customer's last event, so "left" shows quickly.
    engine: EngineClient = await make_engine(
        settings, profile=replace(settings.profile, presence_ttl_s=2)
    )
    trigger_id = await _trigger(engine, "cust-presence")  # no activity yet: offline
    watcher, _ = await _agent(engine)

    async def next_presence(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        while True:
            msg = orjson.loads((await ws.receive(timeout=5)).data)
            if msg["kind"] == "presence" and msg["trigger_id"] == trigger_id:
                return msg  # type: ignore[no-any-return]

    try:
        async with watcher.ws_connect(f"{engine.url}/v1/triggers/ws") as ws:
            snapshot = orjson.loads((await ws.receive(timeout=5)).data)
            assert [t["id"] for t in snapshot["triggers"]] == [trigger_id]
            assert not snapshot["triggers"][0].get("online")
            await engine.post_events(
                engine.batch(
                    [event("heartbeat", props={"dwell_ms": 15_000})],
                    identity=engine.token("cust-presence"),
                )
            )
            came = await next_presence(ws)
            assert came["online"] is True and came["last_seen"]
            left = await next_presence(ws)  # no more events: gone within ~2-3 s
            assert left["online"] is False
            await engine.post_events(
                engine.batch(
                    [event("page_view", page="/mortgages")], identity=engine.token("cust-presence")
                )
            )
            assert (await next_presence(ws))["online"] is True
            # A dashboard opened now sees presence as of now, not as of the trigger.
            async with watcher.ws_connect(f"{engine.url}/v1/triggers/ws") as late:
                snapshot = orjson.loads((await late.receive(timeout=5)).data)
                assert snapshot["triggers"][0]["online"] is True
    finally:
        await watcher.close()


async def test_expired_callbacks_stop_being_watched_even_with_no_agent_online(
    engine: EngineClient,
) -> None:
    gateway = engine.extra["app"][GATEWAY]
    await gateway.ready.wait()
    await _trigger(engine, "cust-expiring", ttl_ms=300)
    seen = []
    for _ in range(50):  # every 0.1 s for up to 5 s
        seen.append(gateway.presence.watched)
        if seen[-1] == 0 and 1 in seen:
            break
        await asyncio.sleep(0.1)
    assert 1 in seen  # the gateway saw it on the stream
    assert seen[-1] == 0  # expired: the watch does not grow forever


async def test_the_funnel_is_cached_briefly_and_fresh_on_request(engine: EngineClient) -> None:
    async def fired(query: str = "") -> int:
        status, body = await engine.get_json(
            f"/v1/supervisor/funnel{query}", headers=engine.api_headers
        )
        assert status == 200, body
        return int(body["rules"].get("mortgage_callback", {}).get("fired", 0))

    await _trigger(engine, "cust-funnel-1")
    assert await fired() == 1
    await _trigger(engine, "cust-funnel-2")
    assert await fired() == 1  # a second tab within 5 s: the same read
    assert await fired("?fresh=1") == 2  # the Refresh button reads now
