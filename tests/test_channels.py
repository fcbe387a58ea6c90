"""Webhooks are routed by channel, end to end: a batch posted to /v1/events fires rules
whose contacts reach the bank system that serves their channel, and no other.

The e-mail gateway gets e-mail (a `notify` rule on the e-mail channel, and a callback
that fell back to e-mail for a do-not-call customer); the CTI, which dials phones,
gets only the phone callback. An e-mail reaching the CTI would have an agent's phone
ring a customer who asked not to be called.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from conftest import EngineClient, event

from engine.core.settings import Secret, Settings, WebhookConfig
from engine.delivery.webhooks import group_name
from engine.valkey import keys

SECRET = "whsec_cmluZ2JhY2stdGVzdC1zZWNyZXQtMzItYnl0ZXMhISE="

RULES = """\
rules:
  - id: savings_guide
    description: Interested in savings - send the savings guide by e-mail
    when: 'event.type == "interest" and event.props.product == "savings"'
    action: {type: notify, channel: email}
  - id: mortgage_call
    description: Interested in a mortgage - an adviser calls, or e-mails if they may not
    when: 'event.type == "interest" and event.props.product == "mortgage"'
    action: {type: callback, channel: callback, fallback: email}
"""


async def _bank_system(aiohttp_server: Any) -> tuple[str, list[dict[str, Any]]]:
    """A bank system on loopback, recording the webhook payloads it gets."""
    received: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(orjson.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("/hook")), received


async def _interested(engine: EngineClient, customer: str, product: str) -> dict[str, Any]:
    """The signed-in customer registers interest in `product`; the one contact it fired."""
    body = engine.batch(
        [event("interest", page=f"/{product}", props={"product": product})],
        identity=engine.token(customer),
    )
    status, reply, _ = await engine.post_events(body)
    assert status == 200, reply
    [decision] = reply["decisions"]
    return decision  # type: ignore[no-any-return]


async def _settled(client: aioredis.Redis, *targets: str) -> bool:
    """Every target's group has read every trigger entry and acknowledged it: delivered,
    or skipped as not its channel. Nothing more can reach any of them."""
    for shard in range(keys.TRIGGER_SHARDS):
        stream = keys.trigger_stream(shard)
        if not await client.exists(stream):
            continue
        last = (await client.xinfo_stream(stream))["last-generated-id"]
        groups = {g["name"]: g for g in await client.xinfo_groups(stream)}
        for target in targets:
            group = groups.get(group_name(target))
            if group is None or group["last-delivered-id"] != last or group["pending"]:
                return False
    return True


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_email_contacts_reach_the_email_gateway_and_only_phone_calls_reach_the_cti(
    make_engine: Any,
    settings: Settings,
    tmp_path: Path,
    aiohttp_server: Any,
    redis: aioredis.Redis,
) -> None:
    mail_url, mails = await _bank_system(aiohttp_server)
    cti_url, calls = await _bank_system(aiohttp_server)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "channels.yaml").write_text(RULES)
    engine: EngineClient = await make_engine(
        settings,
        rules_dir=rules,
        webhooks=(
            WebhookConfig(
                name="mail", url=mail_url, secrets=(Secret(SECRET),), channels=("email",)
            ),
            WebhookConfig(
                name="cti", url=cti_url, secrets=(Secret(SECRET),), channels=("callback",)
            ),
        ),
    )
    for customer, attributes in (
        ("dnc-1", {"do_not_call": True}),
        ("phone-1", {"consent_call": True}),
    ):
        async with engine.session.put(
            f"{engine.url}/v1/profiles/{customer}/attributes",
            json=attributes,
            headers=engine.api_headers,
        ) as r:
            assert r.status == 200, await r.text()

    guide = await _interested(engine, "saver-1", "savings")
    fallback = await _interested(engine, "dnc-1", "mortgage")
    phone = await _interested(engine, "phone-1", "mortgage")
    assert (guide["action"], guide["channel"]) == ("notify", "email")
    assert (fallback["action"], fallback["channel"]) == ("callback", "email")
    assert (phone["action"], phone["channel"]) == ("callback", "callback")

    async def all_arrived() -> bool:
        return len(mails) >= 2 and len(calls) >= 1

    await _until(all_arrived)
    await _until(lambda: _settled(redis, "mail", "cti"))

    by_id = {m["data"]["id"]: m for m in mails}
    assert sorted(by_id) == sorted([guide["id"], fallback["id"]])
    assert len(mails) == 2
    assert by_id[guide["id"]]["type"] == "ringback.notify"
    assert by_id[fallback["id"]]["type"] == "ringback.notify"  # never the agents' work
    assert {m["data"]["channel"] for m in mails} == {"email"}
    assert by_id[fallback["id"]]["data"]["customer_id"] == "dnc-1"
    assert [(c["type"], c["data"]["id"], c["data"]["channel"]) for c in calls] == [
        ("ringback.callback", phone["id"], "callback")
    ]
