"""Anonymous -> known: a verified identity merges the visitor's history exactly once."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from conftest import EngineClient, calc, event, new_anon, now_ms


async def _browse_anonymously(engine: EngineClient, anon: str) -> None:
    t = now_ms()
    status, _, _ = await engine.post_events(
        engine.batch(
            [
                event("page_view", page="/mortgages", ts=t - 5000),
                calc("mortgage", 300_000, 300, ts=t - 4000),
                event("page_view", page="/mortgages/rates", ts=t - 3000),
            ],
            anonymous_id=anon,
        )
    )
    assert status == 200


async def test_identify_merges_the_anonymous_history(engine: EngineClient) -> None:
    anon = new_anon()
    await _browse_anonymously(engine, anon)

    status, resp, _ = await engine.post_events(
        engine.batch(
            [event("page_view", page="/cards")],
            anonymous_id=anon,
            identity=engine.token("cust-merge"),
        )
    )

    assert status == 200 and resp["accepted"] == 1
    body = await engine.profile("cust-merge")
    prof = body["profile"]
    assert prof["counts"] == {"page_view": 3, "calc": 1}
    assert prof["categories"] == {"mortgage": 2, "cards": 1}
    assert prof["calc"]["mortgage"]["amount"] == 300_000
    assert body["linked_anonymous_ids"] == [{"site": "demo-bank", "anonymous_id": anon}]
    assert [p["path"] for p in body["recent_pages"]] == ["/cards", "/mortgages/rates", "/mortgages"]


async def test_merge_is_idempotent_under_concurrent_identified_batches(
    engine: EngineClient,
) -> None:
    anon = new_anon()
    await _browse_anonymously(engine, anon)
    token = engine.token("cust-race")

    results = await asyncio.gather(
        *[
            engine.post_events(engine.batch([event("click")], anonymous_id=anon, identity=token))
            for _ in range(20)
        ]
    )

    assert all(status == 200 for status, _, _ in results)
    prof = (await engine.profile("cust-race"))["profile"]
    assert prof["counts"] == {"page_view": 2, "calc": 1, "click": 20}
    assert prof["calc"]["mortgage"]["count"] == 1
    assert engine.metrics is not None
    merged = engine.metrics.merges.labels("merged")._value.get()
    assert merged == 1


async def test_events_retried_after_identify_are_not_double_counted(engine: EngineClient) -> None:
    """A batch first sent anonymously and retried after login counts once."""
    anon = new_anon()
    events = [event("page_view", page="/loans"), calc("loans", 12_000, 36)]
    await engine.post_events(engine.batch(events, anonymous_id=anon))
    await engine.post_events(
        engine.batch(events, anonymous_id=anon, identity=engine.token("cust-retry"))
    )
    prof = (await engine.profile("cust-retry"))["profile"]
    assert prof["counts"] == {"page_view": 1, "calc": 1}


async def test_an_anonymous_id_merges_into_one_customer_only(engine: EngineClient) -> None:
    """A shared computer: the second customer to log in does not inherit the first's history."""
    anon = new_anon()
    await _browse_anonymously(engine, anon)
    await engine.post_events(
        engine.batch([event("click")], anonymous_id=anon, identity=engine.token("cust-first"))
    )
    await engine.post_events(
        engine.batch([event("click")], anonymous_id=anon, identity=engine.token("cust-second"))
    )
    first = (await engine.profile("cust-first"))["profile"]
    second = (await engine.profile("cust-second"))["profile"]
    assert first["counts"] == {"page_view": 2, "calc": 1, "click": 1}
    assert second["counts"] == {"click": 1}


async def test_merged_customer_keeps_later_calculator_values(engine: EngineClient) -> None:
    anon = new_anon()
    t = now_ms()
    token = engine.token("cust-latest")
    # Logged in first with an older calculation, then an anonymous newer one (other tab).
    await engine.post_events(
        engine.batch(
            [calc("mortgage", 100_000, 120, ts=t - 60_000)], anonymous_id=new_anon(), identity=token
        )
    )
    await engine.post_events(
        engine.batch([calc("mortgage", 450_000, 360, ts=t - 1000)], anonymous_id=anon)
    )
    await engine.post_events(engine.batch([event("click")], anonymous_id=anon, identity=token))
    mortgage = (await engine.profile("cust-latest"))["profile"]["calc"]["mortgage"]
    assert (mortgage["amount"], mortgage["term_months"]) == (450_000, 360)
    assert mortgage["count"] == 2 and mortgage["max_amount"] == 450_000


async def test_profile_api_needs_a_token_and_erase_leaves_no_key(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    anon = new_anon()
    await _browse_anonymously(engine, anon)
    await engine.post_events(
        engine.batch([event("click")], anonymous_id=anon, identity=engine.token("cust-erase"))
    )
    other = new_anon()
    await engine.post_events(engine.batch([event("click")], anonymous_id=other))
    assert await redis.keys(f"*{anon}*") and await redis.keys("*cust-erase*")

    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        for method in ("GET", "DELETE"):
            async with engine.session.request(
                method, f"{engine.url}/v1/profiles/cust-erase", headers=headers
            ) as r:
                assert r.status == 401
                assert (await r.json())["error"]["code"] in (
                    "missing_credentials",
                    "invalid_credentials",
                )

    async with engine.session.delete(
        f"{engine.url}/v1/profiles/cust-erase", headers=engine.api_headers
    ) as r:
        assert r.status == 200
        assert (await r.json())["erased"] is True

    assert await redis.keys(f"*{anon}*") == []
    assert await redis.keys("*cust-erase*") == []
    assert await redis.keys(f"*{other}*")  # someone else's profile is untouched
    status, body = await engine.get_json("/v1/profiles/cust-erase", headers=engine.api_headers)
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_unknown_profile_is_404_and_bad_id_is_400(engine: EngineClient) -> None:
    status, body = await engine.get_json("/v1/profiles/nobody", headers=engine.api_headers)
    assert status == 404
    status, body = await engine.get_json("/v1/profiles/bad%20id", headers=engine.api_headers)
    assert status == 400 and body["error"]["code"] == "invalid_customer_id"


async def test_decisions_endpoint_validates_its_query(engine: EngineClient) -> None:
    anon = new_anon()
    await engine.post_events(engine.batch([event("page_view", page="/")], anonymous_id=anon))
    status, body = await engine.get_json(f"/v1/decisions?site=demo-bank&anonymous_id={anon}")
    assert status == 200 and body == {"decisions": []}
    status, body = await engine.get_json("/v1/decisions?site=nope&anonymous_id=" + anon)
    assert status == 404
    status, body = await engine.get_json("/v1/decisions?site=demo-bank&anonymous_id=x")
    assert status == 400 and body["error"]["path"] == "$.anonymous_id"
