"""The engine, unchanged, on a real Valkey Cluster (issue 13).

`--redis seed,seed --cluster` is the only difference a bank's deployment sees: the
snippet's batches, identity merges, decisions, the agents' live queue, claims and the
uplift of a holdout all work as on one node, with every profile's keys in its own slot
and the trigger shards spread over the primaries. During a primary's failover the
batches it owns are answered 503 with Retry-After (the snippet keeps and resends
them), never 500, and the engine serves them again by itself once a replica took over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import EngineClient, calc, event, new_anon, write_pack
from redis.asyncio.cluster import RedisCluster

from engine.core.errors import ConfigError
from engine.core.settings import Settings, load_settings
from engine.http.state import GATEWAY
from engine.valkey import keys
from engine.valkey.embedded_cluster import EmbeddedCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ALWAYS = (
    '{mon: "00:00-24:00", tue: "00:00-24:00", wed: "00:00-24:00", '
    'thu: "00:00-24:00", fri: "00:00-24:00", sat: "00:00-24:00", sun: "00:00-24:00"}'
)
PACK = f"""
calendars:
  - {{name: open, timezone: Europe/London, hours: {ALWAYS}}}
offers:
  - {{id: adviser, title: Adviser, product: mortgage, value: 900, channels: [callback]}}
rules:
  - id: call_me
    when: profile.calc.mortgage.count >= 3
    action: {{type: callback, offer: adviser, channel: callback}}
    value: 900
    policy: {{cooldown_s: 3600, channel_cooldown_s: 600, calendar: open}}
"""


async def _engine(
    make_engine: Any, settings: Settings, cluster: EmbeddedCluster, tmp_path: Path
) -> EngineClient:
    s = replace(
        settings,
        redis_url=",".join(cluster.urls),
        redis_cluster=True,
        rules_dir=write_pack(tmp_path, PACK),
    )
    return await make_engine(s)  # type: ignore[no-any-return]


async def _consent(engine: EngineClient, customer: str) -> None:
    url = f"{engine.url}/v1/profiles/{customer}/attributes"
    async with engine.session.put(
        url, json={"consent_call": True}, headers=engine.api_headers
    ) as r:
        assert r.status == 200, await r.text()


async def test_a_visitor_on_any_node_is_merged_decided_and_called_once(
    make_engine: Any,
    settings: Settings,
    valkey_cluster: EmbeddedCluster,
    cluster_redis: RedisCluster,
    tmp_path: Path,
) -> None:
    engine = await _engine(make_engine, settings, valkey_cluster, tmp_path)
    # Customers whose profiles live on each of the three primaries.
    customers = [f"c-{i}" for i in range(30)]
    owners = {valkey_cluster.primary_for_key(keys.customer_prefix(c)).index for c in customers}
    assert len(owners) == len(valkey_cluster.primaries())
    for c in customers:
        await _consent(engine, c)
    agent, _ = await engine.agent()
    try:
        async with agent.ws_connect(f"{engine.url}/v1/triggers/ws") as ws:
            assert orjson.loads((await ws.receive(timeout=5)).data)["kind"] == "snapshot"
            await engine.extra["app"][GATEWAY].ready.wait()
            calls: dict[str, str] = {}
            for c in customers:
                anon = new_anon()
                # Browsing anonymously first: the identified batch merges it (two
                # slots, explicit steps), then three calculations call.
                status, _, _ = await engine.post_events(
                    engine.batch([event("page_view", page="/mortgages")], anonymous_id=anon)
                )
                assert status == 200
                batch = [calc("mortgage", 250_000 + i, 300) for i in range(3)]
                status, resp, _ = await engine.post_events(
                    engine.batch(batch, anonymous_id=anon, identity=engine.token(c))
                )
                assert status == 200, resp
                (call,) = [d for d in resp["decisions"] if d["action"] == "callback"]
                calls[call["id"]] = c
            pushed: list[dict[str, Any]] = []
            with contextlib.suppress(TimeoutError):
                while len([m for m in pushed if m.get("kind") == "callback"]) < len(calls):
                    pushed.append(orjson.loads((await ws.receive(timeout=3.0)).data))
    finally:
        await agent.close()
    arrived = [m["id"] for m in pushed if m.get("kind") == "callback"]
    assert sorted(arrived) == sorted(calls)  # each exactly once, from every shard
    profile = await engine.profile(customers[0])
    assert profile["profile"]["counts"]["page_view"] == 1  # the anonymous history merged
    assert profile["profile"]["calc"]["mortgage"]["count"] == 3


async def test_batches_of_a_failing_over_primary_get_503_then_land(
    make_engine: Any,
    settings: Settings,
    valkey_cluster: EmbeddedCluster,
    cluster_redis: RedisCluster,
    tmp_path: Path,
) -> None:
    engine = await _engine(make_engine, settings, valkey_cluster, tmp_path)
    victim = valkey_cluster.primaries()[0]
    anon = next(
        a
        for a in (new_anon() for _ in range(500))
        if valkey_cluster.primary_for_key(keys.anonymous_prefix("demo-bank", a)) is victim
    )
    body = engine.batch([event("page_view", page="/")], anonymous_id=anon)
    assert (await engine.post_events(body))[0] == 200
    valkey_cluster.kill(victim)

    statuses: list[int] = []
    retry_after: set[str] = set()
    failover = asyncio.create_task(
        asyncio.to_thread(valkey_cluster.wait_for_failover, victim, 20.0)
    )
    resent = engine.batch([event("page_view", page="/mortgages")], anonymous_id=anon)
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:  # the snippet's behaviour: resend the same batch
        status, answer, headers = await engine.post_events(resent)
        statuses.append(status)
        if status == 200:
            break
        assert status == 503, answer
        assert answer["error"]["code"] == "store_unavailable"
        retry_after.add(headers.get("Retry-After", ""))
        await asyncio.sleep(0.2)
    print(f"failover {(await failover).elapsed_s:.2f} s; answers {statuses[:3]}...{statuses[-1]}")
    assert 503 in statuses and statuses[-1] == 200 and 500 not in statuses
    assert retry_after and "" not in retry_after
    # Counted once, in the profile the new primary serves.
    status, answer, _ = await engine.post_events(resent)
    assert (status, answer["accepted"], answer["duplicates"]) == (200, 0, 1)


def test_cluster_mode_needs_seed_nodes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"store\.cluster"):
        load_settings(None, data_dir=tmp_path, overrides={"redis_cluster": True})
