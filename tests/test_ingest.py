"""POST /v1/events: a batch becomes a live profile, exactly once."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from conftest import EngineClient, calc, event, new_anon, now_ms

from engine.core.settings import load_settings


async def test_batch_updates_the_customer_profile(engine: EngineClient) -> None:
    anon = new_anon()
    t = now_ms()
    body = engine.batch(
        [
            event(
                "page_view",
                page="/mortgages/fixed-rate",
                ts=t - 3000,
                props={"utm_source": "newsletter", "utm_campaign": "spring-mortgage"},
            ),
            calc(
                "mortgage",
                320_000,
                300,
                ts=t - 2000,
                props={"rate": 4.2, "monthly_payment": 1725.5},
            ),
            calc("mortgage", 280_000, 240, ts=t - 1000),
            event("heartbeat", props={"dwell_ms": 15_000}, ts=t),
        ],
        anonymous_id=anon,
        identity=engine.token("cust-1001"),
    )

    status, resp, _ = await engine.post_events(body)

    assert status == 200, resp
    assert resp == {"accepted": 4, "duplicates": 0, "decisions": []}
    prof = (await engine.profile("cust-1001"))["profile"]
    assert prof["counts"] == {"page_view": 1, "calc": 2, "heartbeat": 1}
    assert prof["categories"] == {"mortgage": 1}
    mortgage = prof["calc"]["mortgage"]
    assert (mortgage["amount"], mortgage["term_months"]) == (280_000, 240)  # the latest
    assert mortgage["max_amount"] == 320_000 and mortgage["count"] == 2
    assert prof["session"]["pages"] == 1 and prof["session"]["dwell_ms"] == 15_000
    assert prof["online"] is True
    assert prof["campaign"]["utm_campaign"] == "spring-mortgage"
    # page view (1.0) + two calcs (3.0 each), barely decayed
    assert 6.9 < prof["intent"]["mortgage"] <= 7.0


async def test_same_batch_sent_three_times_counts_once(engine: EngineClient) -> None:
    body = engine.batch(
        [event("page_view", page="/cards"), calc("loans", 15_000, 48)],
        identity=engine.token("cust-dup"),
    )
    results = [await engine.post_events(body) for _ in range(3)]

    assert [r[1]["accepted"] for r in results] == [2, 0, 0]
    assert [r[1]["duplicates"] for r in results] == [0, 2, 2]
    prof = (await engine.profile("cust-dup"))["profile"]
    assert prof["counts"] == {"page_view": 1, "calc": 1}
    assert prof["calc"]["loans"]["count"] == 1


async def test_200_concurrent_batches_for_one_customer_give_exact_counts(make_engine: Any) -> None:
    base = load_settings(None, data_dir=Path(tempfile.mkdtemp()))
    engine: EngineClient = await make_engine(
        limits=replace(base.limits, batches_per_minute_per_visitor=10_000)
    )
    token = engine.token("cust-busy")
    anon = new_anon()
    bodies = [
        engine.batch(
            [event("page_view", page="/savings"), event("click")], anonymous_id=anon, identity=token
        )
        for _ in range(200)
    ]
    # Half of them are also retried, concurrently with the originals.
    sends = [engine.post_events(b) for b in bodies] + [engine.post_events(b) for b in bodies[:100]]
    results = await asyncio.gather(*sends)

    assert all(status == 200 for status, _, _ in results)
    assert sum(r["accepted"] for _, r, _ in results) == 400
    assert sum(r["duplicates"] for _, r, _ in results) == 200
    prof = (await engine.profile("cust-busy"))["profile"]
    assert prof["counts"] == {"page_view": 200, "click": 200}
    assert prof["categories"] == {"savings": 200}


async def test_duplicates_are_counted_in_metrics(engine: EngineClient) -> None:
    body = engine.batch([event("page_view", page="/loans")])
    await engine.post_events(body)
    await engine.post_events(body)
    async with engine.session.get(f"{engine.url}/metrics") as r:
        text = await r.text()
    assert 'ringback_events_total{type="page_view"} 1.0' in text
    assert "ringback_duplicates_total 1.0" in text


async def test_sendbeacon_text_plain_body_is_accepted(engine: EngineClient) -> None:
    status, resp, _ = await engine.post_events(
        engine.batch([event("page_view", page="/")]), content_type="text/plain;charset=UTF-8"
    )
    assert status == 200 and resp["accepted"] == 1


async def test_a_new_session_starts_after_the_gap(engine: EngineClient) -> None:
    t = now_ms()
    gap_ms = engine.settings.profile.session_gap_s * 1000
    token = engine.token("cust-sessions")
    await engine.post_events(
        engine.batch([event("page_view", page="/", ts=t - gap_ms - 60_000)], identity=token)
    )
    await engine.post_events(
        engine.batch(
            [event("page_view", page="/cards", ts=t), event("page_view", page="/cards/gold", ts=t)],
            identity=token,
        )
    )
    session = (await engine.profile("cust-sessions"))["profile"]["session"]
    assert session["number"] == 2
    assert session["pages"] == 2


async def test_anonymous_profiles_expire(engine: EngineClient, redis) -> None:  # type: ignore[no-untyped-def]
    anon = new_anon()
    await engine.post_events(engine.batch([event("page_view", page="/")], anonymous_id=anon))
    ttl = await redis.ttl(f"rb:{{a:demo-bank:{anon}}}:p")
    assert 0 < ttl <= engine.settings.profile.anonymous_ttl_s


async def test_form_events_carry_field_names_never_values(engine: EngineClient) -> None:
    body = engine.batch(
        [event("form", props={"field": "email", "action": "focus", "value": "jane@example.com"})]
    )
    status, resp, _ = await engine.post_events(body)
    assert status == 400
    assert resp["error"]["path"] == "$.events[0].props"
    ok = engine.batch(
        [
            event(
                "form",
                props={"field": "amount", "action": "abandon", "form": "personal-loan-application"},
            )
        ],
        identity=engine.token("cust-form"),
    )
    assert (await engine.post_events(ok))[0] == 200
    forms = (await engine.profile("cust-form"))["profile"]["forms"]
    assert forms["abandoned"] == 1
    assert forms["last_abandoned_form"] == "personal-loan-application"


async def test_event_ids_are_per_profile(engine: EngineClient) -> None:
    """Two visitors whose snippets happen to reuse an id are both counted."""
    shared_id = uuid.uuid4().hex[:8]
    for _ in range(2):
        status, resp, _ = await engine.post_events(
            engine.batch([event("page_view", id=shared_id, page="/")])
        )
        assert status == 200 and resp["accepted"] == 1


async def test_a_retry_overlapping_a_first_send_counts_only_new_events(
    engine: EngineClient,
) -> None:
    token = engine.token("cust-overlap")
    anon = new_anon()
    a, b, c = (calc("loans", 10_000 * (i + 1), 24) for i in range(3))
    first = await engine.post_events(engine.batch([a, b], anonymous_id=anon, identity=token))
    second = await engine.post_events(engine.batch([b, c, c], anonymous_id=anon, identity=token))
    assert first[1]["accepted"] == 2
    assert (second[1]["accepted"], second[1]["duplicates"]) == (1, 2)
    loans = (await engine.profile("cust-overlap"))["profile"]["calc"]["loans"]
    assert loans["count"] == 3 and loans["max_amount"] == 30_000
