"""A do-not-call customer's "call me" is an e-mail, never an agent's phone call.

The call-me rule falls back to e-mail for a customer on the bank's do-not-call list.
That fallback is a notification for webhooks: it must not reach the agents' live
queue, the capacity queue or a claim, where an agent could phone the customer.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from conftest import RULES_DIR, EngineClient, event, open_store

from engine.core.settings import Secret, Settings, WebhookConfig
from engine.http.state import GATEWAY
from engine.valkey.keys import CALLBACK_QUEUE as QUEUE_KEY

SECRET = "whsec_cmluZ2JhY2stdGVzdC1zZWNyZXQtMzItYnl0ZXMhISE="
ALWAYS = ", ".join(f'{d}: "00:00-24:00"' for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))


def _rules_open_around_the_clock(tmp_path: Path) -> Path:
    """The shipped rules, with the contact center open whenever the test runs."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    (rules / "calendars.yaml").write_text(
        f"calendars:\n  - {{name: contact_center, timezone: Europe/London, hours: {{{ALWAYS}}}}}\n"
    )
    return rules


async def _notifications_receiver(
    aiohttp_server: Any,
) -> tuple[str, list[dict[str, Any]], asyncio.Event]:
    """A bank's e-mail system on loopback, recording the webhook payloads it gets."""
    received: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        received.append(orjson.loads(await request.read()))
        arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/notify", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("/notify")), received, arrived


async def _press_call_me(engine: EngineClient, customer: str) -> dict[str, Any]:
    """The customer, signed in on the site, presses "call me" about a mortgage."""
    body = engine.batch(
        [event("interest", page="/mortgages", props={"product": "mortgage", "call_me": True})],
        identity=engine.token(customer),
    )
    status, reply, _ = await engine.post_events(body)
    assert status == 200, reply
    [decision] = [d for d in reply["decisions"] if d["rule"] == "call_me_requested"]
    return decision  # type: ignore[no-any-return]


async def _messages_until(
    ws: aiohttp.ClientWebSocketResponse, kind: str, trigger_id: str
) -> list[dict[str, Any]]:
    """Every message the agent's socket gets, up to the `kind` message about `trigger_id`."""
    seen = []
    while True:
        msg = orjson.loads((await ws.receive(timeout=10)).data)
        seen.append(msg)
        if msg["kind"] == kind and trigger_id in (msg.get("id"), msg.get("trigger_id")):
            return seen


async def test_a_do_not_call_customer_who_asks_for_a_call_never_reaches_an_agent(
    make_engine: Any, settings: Settings, tmp_path: Path, aiohttp_server: Any
) -> None:
    hook_url, notified, arrived = await _notifications_receiver(aiohttp_server)
    engine: EngineClient = await make_engine(
        settings,
        rules_dir=_rules_open_around_the_clock(tmp_path),
        webhooks=(
            WebhookConfig(name="mail", url=hook_url, secrets=(Secret(SECRET),), kinds=("notify",)),
        ),
    )
    async with engine.session.put(
        f"{engine.url}/v1/profiles/dnc-1/attributes",
        json={"do_not_call": True},
        headers=engine.api_headers,
    ) as r:
        assert r.status == 200, await r.text()
    agent, csrf = await engine.agent()
    store = open_store(engine.settings)
    try:
        async with agent.ws_connect(f"{engine.url}/v1/triggers/ws") as ws:
            assert orjson.loads((await ws.receive(timeout=5)).data)["kind"] == "snapshot"
            await engine.extra["app"][GATEWAY].ready.wait()

            dnc = await _press_call_me(engine, "dnc-1")
            assert dnc["channel"] == "email"  # the rule's fallback
            # Then a customer who may be phoned asks too; an agent claims that call.
            # Everything the gateway read before the claim has reached the socket by
            # the time the claim does, so the do-not-call request had its chance.
            phone = await _press_call_me(engine, "phone-ok-1")
            assert phone["channel"] == "callback"
            queue = await store.call("ZRANGE", QUEUE_KEY, 0, -1)
            assert phone["id"] in queue and dnc["id"] not in queue
            seen = await _messages_until(ws, "callback", phone["id"])
            async with agent.post(
                f"{engine.url}/v1/triggers/{phone['id']}/claim", headers={"X-CSRF-Token": csrf}
            ) as r:
                assert r.status == 200
            seen += await _messages_until(ws, "claimed", phone["id"])
            assert dnc["id"] not in {m.get("id") or m.get("trigger_id") for m in seen}
            assert [m["kind"] for m in seen if m.get("id") == phone["id"]] == ["callback"]

        # A dashboard opened now does not list it either.
        async with agent.ws_connect(f"{engine.url}/v1/triggers/ws") as ws:
            snapshot = orjson.loads((await ws.receive(timeout=5)).data)
            assert [t["id"] for t in snapshot["triggers"]] == [phone["id"]]

        # An agent who learnt its id anyway cannot claim it.
        async with agent.post(
            f"{engine.url}/v1/triggers/{dnc['id']}/claim", headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 409
            assert (await r.json())["error"]["code"] == "not_claimable"
        assert dnc["id"] not in await store.call("ZRANGE", QUEUE_KEY, 0, -1)

        # The bank's e-mail system gets it, as a notification on the e-mail channel.
        await asyncio.wait_for(arrived.wait(), 10)  # delivered in the background
        [payload] = notified
        assert payload["type"] == "ringback.notify"
        assert (payload["data"]["id"], payload["data"]["channel"]) == (dnc["id"], "email")
        assert payload["data"]["customer_id"] == "dnc-1"
    finally:
        await agent.close()
        await store.close()
