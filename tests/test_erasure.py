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
import pytest
import redis.asyncio as aioredis
from conftest import CLUSTER, EngineClient, StoreTarget, calc, event, new_anon
from redis.asyncio.client import NEVER_DECODE

from engine.core.settings import Secret, Settings, WebhookConfig
from engine.delivery import audit_codec
from engine.delivery.webhooks import dead_letter_stream
from engine.http.state import ERASER, GATEWAY, STORE
from engine.privacy.erasure import AofRewrites
from engine.profile import layout
from engine.valkey import keys, refs
from engine.valkey.embedded import free_port
from engine.valkey.janitor import StreamJanitor

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
        if kind == "string" and key.startswith("rb:{uplift:"):
            value = "<hyperloglog of decision ids>"  # binary; holds no readable id
        elif (
            kind == "string"
            and (await redis.execute_command("GETRANGE", key, 0, 3, **{NEVER_DECODE: True}))
            == b"HYLL"
        ):
            # Report counts (per dimension, segment members): HyperLogLogs, binary;
            # they hold hashed registers, no readable id.
            value = "<hyperloglog>"
        elif kind == "string" and key.startswith("rb:{d:"):
            # Audit records are stored deflated: read them as the engine does, so the
            # scan sees every identifier they hold.
            stored = await redis.execute_command("GET", key, **{NEVER_DECODE: True})
            value = audit_codec.decode(stored)
        elif kind == "string":
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


async def without_markers(redis: aioredis.Redis) -> str:
    """`dump` without the erasure markers, after checking they hold nothing but a time
    and go by themselves: the one thing an erasure leaves (in the profile's slot, so
    the functions that index its data can check it atomically; named by a digest)."""
    lines = []
    for line in (await dump(redis)).splitlines():
        key, _, value = line.partition(" ")
        if ":erased:" in key:
            assert value.strip("'").isdigit(), line
            assert 0 < await redis.pttl(key) <= refs.MARKER_TTL_MS, line
        else:
            lines.append(line)
    return "\n".join(lines)


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
    after = await without_markers(redis)
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


@pytest.mark.skipif(
    CLUSTER, reason="the AOF rewrite is for serve's own embedded valkey-server, never a cluster"
)
async def test_erasure_rewrites_the_embedded_valkeys_append_only_file(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    """The AOF still holds what was erased until it is rewritten: with its own Valkey the
    engine asks for a rewrite after the erasure (rate-limited; once here)."""
    profiles = engine.extra["app"][ERASER]
    # The test engine talks to the suite's Valkey (redis_url set): not its to rewrite...
    assert profiles.aof_rewrites is None
    # ...so stand in for `serve` with its embedded Valkey.
    profiles.aof_rewrites = AofRewrites(engine.extra["app"][STORE], min_interval_s=3600)
    profiles.second_sweep_delay_s = 0
    before = int((await redis.info("persistence"))["aof_rewrites"])
    await _post(
        engine, [event("page_view", page="/cards")], new_anon(), identity=engine.token(CUSTOMER)
    )
    for _ in range(2):  # two erasures within the interval: one rewrite
        async with engine.session.delete(
            f"{engine.url}/v1/profiles/{CUSTOMER}", headers=engine.api_headers
        ) as r:
            assert r.status == 200

    async def rewritten() -> dict[str, Any]:
        while True:
            info = await redis.info("persistence")
            if info["aof_rewrites"] > before and not info["aof_rewrite_in_progress"]:
                return info
            await asyncio.sleep(0.05)

    info = await asyncio.wait_for(rewritten(), 30)
    assert profiles.aof_rewrites.done == 1
    assert info["aof_last_bgrewrite_status"] == "ok"


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
    assert CUSTOMER not in await without_markers(redis)


def test_the_erasure_marker_shares_the_profile_slot_without_naming_it() -> None:
    """In a cluster the functions that check the marker can only reach keys of the
    profile's slot; the customer's id is that slot's hash tag, so the marker gets
    another tag hashing to the same slot."""
    for prefix in (keys.customer_prefix(CUSTOMER), keys.anonymous_prefix("s", "anon-1")):
        marker = keys.profile_erased(prefix)
        assert keys.key_slot(marker) == keys.key_slot(keys.profile_refs(prefix))
        assert CUSTOMER not in marker and "anon-1" not in marker
    assert keys.profile_erased(keys.customer_prefix("a")) != keys.profile_erased(
        keys.customer_prefix("b")
    )


def test_the_profile_index_is_the_last_profile_key() -> None:
    """The Lua functions address profile keys by position: new ones go at the end."""
    assert keys.PROFILE_SUFFIXES[:6] == ("p", "seen", "links", "attrs", "hist", "pol")
    assert keys.profile_keys("rb:{c:x}")[-1] == keys.profile_refs("rb:{c:x}") == "rb:{c:x}:refs"


# -- Erasure racing the writers -----------------------------------------------------
# The engine's own code runs; only this engine's Store, in this test process, is
# wrapped so the DELETE lands at the exact point under test.


def erase_at(
    engine: EngineClient, point: Callable[[tuple[Any, ...]], bool], *, before: bool = False
) -> list[int]:
    """Make the first store command matching `point` run with `DELETE /v1/profiles` in
    between: right after it answers, or (`before`) right before it is sent. Returns a
    list that gets the DELETE's status once it ran."""
    store = engine.extra["app"][STORE]
    original = store.call
    statuses: list[int] = []

    async def erase() -> None:
        async with engine.session.delete(
            f"{engine.url}/v1/profiles/{CUSTOMER}", headers=engine.api_headers
        ) as r:
            statuses.append(r.status)

    def call(*args: Any, writes: bool = False, raw: bool = False) -> Any:
        if getattr(call, "fired", False) or not point(args):
            return original(*args, writes=writes, raw=raw)
        call.fired = True  # type: ignore[attr-defined]

        async def racing() -> Any:
            if before:
                await erase()
                return await original(*args, writes=writes, raw=raw)
            result = await original(*args, writes=writes, raw=raw)
            await erase()
            return result

        return asyncio.ensure_future(racing())

    store.call = call
    return statuses


async def swept(engine: EngineClient) -> None:
    """Wait for the erasures' second sweeps (their delay set to 0 by `_racing_engine`)."""
    profiles = engine.extra["app"][ERASER]
    while profiles.sweeps:
        await asyncio.gather(*profiles.sweeps)


async def _racing_engine(
    make_engine: Any, settings: Settings, tmp_path: Path, **changes: Any
) -> EngineClient:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "pack.yaml").write_text(PACK)
    engine: EngineClient = await make_engine(replace(settings, rules_dir=rules, **changes))
    engine.extra["app"][ERASER].second_sweep_delay_s = 0
    async with engine.session.put(
        f"{engine.url}/v1/profiles/{CUSTOMER}/attributes",
        json={"consent_call": True},
        headers=engine.api_headers,
    ) as r:
        assert r.status == 200, await r.text()
    return engine


async def assert_nothing_left(engine: EngineClient, redis: aioredis.Redis, anon: str) -> None:
    await swept(engine)
    after = await without_markers(redis)
    leaks = [n for n in needles(anon) if n in after]
    assert leaks == [], after
    for shard in range(keys.TRIGGER_SHARDS):
        assert await redis.xlen(keys.outcome_stream(shard)) == 0
    assert await redis.exists(keys.profile_refs(keys.customer_prefix(CUSTOMER))) == 0
    assert await redis.exists(keys.profile_refs(keys.anonymous_prefix("demo-bank", anon))) == 0


@pytest.mark.parametrize("point", ["after_rb_complete", "after_outcome_entry"])
async def test_a_completion_racing_the_erasure_keeps_no_note_and_answers_not_found(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis, point: str
) -> None:
    engine = await _racing_engine(make_engine, settings, tmp_path)
    anon = new_anon()
    body = await _post(engine, [calc(amount=AMOUNT)], anon, identity=engine.token(CUSTOMER))
    trigger_id = next(d["id"] for d in body["decisions"] if d["action"] == "callback")
    agent, csrf = await engine.agent()
    try:
        async with agent.post(
            f"{engine.url}/v1/triggers/{trigger_id}/claim", headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 200, await r.text()
        if point == "after_rb_complete":
            erased = erase_at(engine, lambda a: a[:2] == ("FCALL", "rb_complete"))
        else:
            erased = erase_at(engine, lambda a: a[0] == "XADD" and a[1].startswith("rb:{o:"))
        async with agent.post(
            f"{engine.url}/v1/triggers/{trigger_id}/complete",
            json={"outcome": "converted", "note": NOTE},
            headers={"X-CSRF-Token": csrf},
        ) as r:
            assert r.status in (404, 410), await r.text()
            assert (await r.json())["error"]["code"] == "not_found"
    finally:
        await agent.close()
    assert erased == [200]
    await assert_nothing_left(engine, redis, anon)


async def test_an_outcome_racing_the_erasure_is_not_recorded(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    """`POST /v1/outcomes`: the audit read, then the erasure, then the outcome."""
    engine = await _racing_engine(make_engine, settings, tmp_path)
    anon = new_anon()
    body = await _post(
        engine,
        [event("page_view", page="/mortgages"), calc(amount=AMOUNT)],
        anon,
        identity=engine.token(CUSTOMER),
    )
    decision_id = next(d["id"] for d in body["decisions"] if d["action"] == "offer")
    audit = keys.decision_key(decision_id)
    erased = erase_at(engine, lambda a: a == ("GET", audit))
    async with engine.session.post(
        f"{engine.url}/v1/outcomes",
        json={"decision_id": decision_id, "outcome": "applied", "value": AMOUNT},
        headers=engine.api_headers,
    ) as r:
        assert r.status == 404, await r.text()
        assert (await r.json())["error"]["code"] == "unknown_decision"
    assert erased == [200]
    await assert_nothing_left(engine, redis, anon)


async def test_a_trigger_written_during_the_erasure_deletes_itself(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    """The trigger's entry is on its stream, the erasure runs, then its reference is
    written: `rb_refs` refuses it and the trigger removes its entry and record."""
    engine = await _racing_engine(make_engine, settings, tmp_path)
    anon = new_anon()
    erased = erase_at(
        engine, lambda a: a[0] == "XADD" and a[1].startswith("rb:{t:") and "callback" in a
    )
    body = await _post(engine, [calc(amount=AMOUNT)], anon, identity=engine.token(CUSTOMER))
    trigger_id = next(d["id"] for d in body["decisions"] if d["action"] == "callback")
    assert erased == [200]
    assert await redis.exists(keys.trigger_record(trigger_id)) == 0
    assert await redis.zscore("rb:{cap}:queue", trigger_id) is None
    await assert_nothing_left(engine, redis, anon)


async def test_a_dead_letter_written_during_the_erasure_deletes_itself(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    down = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: every delivery fails
    hook = WebhookConfig(name="cti", url=down, secrets=(Secret(SECRET),), max_attempts=1)
    engine = await _racing_engine(make_engine, settings, tmp_path, webhooks=(hook,))
    dead = dead_letter_stream("cti")
    erased = erase_at(
        engine, lambda a: a[:2] == ("FCALL", "rb_refs") and dead in str(a), before=True
    )
    anon = new_anon()
    await _post(engine, [calc(amount=AMOUNT)], anon, identity=engine.token(CUSTOMER))
    metrics = engine.metrics
    assert metrics is not None

    async def withdrawn() -> bool:
        return bool(metrics.webhook_deliveries.labels("cti", "withdrawn")._value.get() == 1)

    await until(withdrawn)
    assert erased == [200]
    assert await redis.xlen(dead) == 0
    assert metrics.webhook_dead_letters.labels("cti")._value.get() == 0
    await assert_nothing_left(engine, redis, anon)


async def test_a_page_offer_audit_in_flight_is_caught_by_the_second_sweep(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    """The audit's index entry is a plain ZADD (no erasure check): one landing after
    the erasure re-creates the index, and the second sweep erases what it points at."""
    engine = await _racing_engine(make_engine, settings, tmp_path)
    # The sweep must come after the late ZADD, which the wrapper sends as soon as the
    # DELETE has answered (the engine waits SECOND_SWEEP_DELAY_S).
    engine.extra["app"][ERASER].second_sweep_delay_s = 0.2
    anon = new_anon()
    erased = erase_at(engine, lambda a: a[0] == "ZADD" and str(a[1]).endswith(":refs"), before=True)
    body = await _post(
        engine, [event("page_view", page="/mortgages")], anon, identity=engine.token(CUSTOMER)
    )
    offer_id = next(d["id"] for d in body["decisions"] if d["action"] == "offer")
    assert erased == [200]
    await swept(engine)
    status, _ = await engine.get_json(f"/v1/decisions/{offer_id}", headers=engine.api_headers)
    assert status == 404
    await assert_nothing_left(engine, redis, anon)


async def test_a_customer_who_comes_back_after_erasure_is_indexed_and_erasable_again(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _racing_engine(make_engine, settings, tmp_path)
    profiles = engine.extra["app"][ERASER]
    profiles.erase_skew_ms = 0  # the customer comes back within the skew allowance here
    anon = new_anon()
    await _post(engine, [calc(amount=AMOUNT)], anon, identity=engine.token(CUSTOMER))
    async with engine.session.delete(
        f"{engine.url}/v1/profiles/{CUSTOMER}", headers=engine.api_headers
    ) as r:
        assert r.status == 200
    await swept(engine)
    assert await redis.get(keys.profile_erased(keys.customer_prefix(CUSTOMER))) is not None

    # Back: a new visit, a new callback, completed with a note - all of it indexed.
    async with engine.session.put(
        f"{engine.url}/v1/profiles/{CUSTOMER}/attributes",
        json={"consent_call": True},
        headers=engine.api_headers,
    ) as r:
        assert r.status == 200
    anon = new_anon()
    body = await _post(
        engine,
        [event("page_view", page="/mortgages"), calc(amount=AMOUNT)],
        anon,
        identity=engine.token(CUSTOMER),
    )
    trigger_id = next(d["id"] for d in body["decisions"] if d["action"] == "callback")
    assert await redis.exists(keys.trigger_record(trigger_id)) == 1
    agent, csrf = await engine.agent()
    try:
        for step, payload in (
            ("claim", None),
            ("complete", {"outcome": "no_answer", "note": NOTE}),
        ):
            async with agent.post(
                f"{engine.url}/v1/triggers/{trigger_id}/{step}",
                json=payload,
                headers={"X-CSRF-Token": csrf},
            ) as r:
                assert r.status == 200, await r.text()
    finally:
        await agent.close()
    index = await redis.zrange(keys.profile_refs(keys.customer_prefix(CUSTOMER)), 0, -1)
    assert f"t|{trigger_id}" in index
    assert any(ref.startswith("x|rb:{o:") for ref in index)  # the outcome with the note
    assert NOTE in await dump(redis)

    async with engine.session.delete(
        f"{engine.url}/v1/profiles/{CUSTOMER}", headers=engine.api_headers
    ) as r:
        assert r.status == 200
        assert (await r.json())["stream_entries_deleted"] >= 2
    await assert_nothing_left(engine, redis, anon)


async def test_the_janitor_trims_a_quiet_stream(
    store_target: StoreTarget, redis: aioredis.Redis
) -> None:
    """A dead-letter stream nobody writes to any more still loses entries past the
    streams' age limit (their index references have expired: erasure would miss them)."""
    store = store_target.store()
    try:
        dead = dead_letter_stream("cti")
        now_ms = int(time.time() * 1000)
        old_id = f"{now_ms - refs.STREAM_KEEP_MS - 60_000}-0"
        await redis.xadd(dead, {"customer_id": CUSTOMER}, id=old_id)
        new_id = await redis.xadd(dead, {"customer_id": "still-recent"})
        assert await StreamJanitor(store, ["cti"]).trim() == 1
        assert [entry_id for entry_id, _ in await redis.xrange(dead)] == [new_id]
    finally:
        await store.close()


async def test_ingest_drops_expired_index_references_hourly(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    """Page-offer audits index with a plain ZADD; the profile's hourly trim in
    `rb_ingest` drops references whose data is gone, and only those."""
    anon = new_anon()
    prefix = keys.anonymous_prefix("demo-bank", anon)
    await _post(engine, [event("page_view", page="/cards")], anon)
    now_ms = int(time.time() * 1000)
    index = keys.profile_refs(prefix)
    await redis.zadd(index, {"k|rb:{d:gone}": now_ms - 1000, "k|rb:{d:alive}": now_ms + 10**9})
    profile = orjson.loads(await redis.get(keys.profile_keys(prefix)[0]))
    profile[layout.TRIM_TS] = 0  # due for its hourly trim
    await redis.set(keys.profile_keys(prefix)[0], orjson.dumps(profile))
    await _post(engine, [event("page_view", page="/cards")], anon)
    kept = await redis.zrange(index, 0, -1)
    assert "k|rb:{d:gone}" not in kept and "k|rb:{d:alive}" in kept
    assert await redis.pttl(index) > 0
