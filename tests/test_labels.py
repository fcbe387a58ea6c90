"""Labels the models learn from, beyond agents' calls: offer clicks and impressions from
the page, and conversions from the bank's systems, each an outcome entry naming the
decision it belongs to (engine/learning/labels.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
from conftest import EngineClient, event, new_anon, now_ms, write_pack

from engine.core.settings import Learning, Settings
from engine.http.answers import ConversionAnswer
from engine.http.state import STORE
from engine.learning import labels
from engine.valkey import keys, streams

PACK = """
offers:
  - {id: mortgage_offer, title: Mortgages, product: mortgage, value: 100, channels: [web]}
rules:
  - id: mortgage_hero
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: mortgage_offer, slot: hero}
"""


async def _engine(make_engine: Any, settings: Settings, tmp_path: Path, **changes: Any) -> Any:
    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, PACK), **changes)
    )
    return engine


async def _offer(engine: EngineClient, anon: str, customer: str | None = None) -> str:
    """A page view that gets the mortgage offer; returns its decision id."""
    extra = {"identity": engine.token(customer)} if customer else {}
    status, body, _ = await engine.post_events(
        engine.batch([event("page_view", page="/mortgages")], anonymous_id=anon, **extra)
    )
    assert status == 200, body
    (offer,) = [d for d in body["decisions"] if d["action"] == "offer"]
    return str(offer["id"])


def _page_event(name: str, decision_id: str) -> dict[str, Any]:
    """As the snippet sends it (sdk-js/src/offers.js)."""
    data = {"decision_id": decision_id, "offer_id": "mortgage_offer"}
    return event("custom", props={"name": name, "data": data})


async def _send(engine: EngineClient, anon: str, *events: dict[str, Any]) -> None:
    status, body, _ = await engine.post_events(engine.batch(list(events), anonymous_id=anon))
    assert status == 200, body


async def _outcomes(redis: aioredis.Redis) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for shard in range(keys.TRIGGER_SHARDS):
        entries: Any = await redis.xrange(keys.outcome_stream(shard))
        out += [streams.decode_fields(fields) for _, fields in entries]
    return out


async def _conversion(engine: EngineClient, body: dict[str, Any], **kw: Any) -> tuple[int, Any]:
    headers = kw.get("headers", engine.api_headers)
    async with engine.session.post(f"{engine.url}/v1/conversions", json=body, headers=headers) as r:
        return r.status, await r.json()


# -- page outcomes -----------------------------------------------------------------------


async def test_an_offer_click_records_clicked_for_its_decision_once(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    anon = new_anon()
    decision_id = await _offer(engine, anon)
    await _send(engine, anon, _page_event("offer_impression", decision_id))
    await _send(engine, anon, _page_event("offer_click", decision_id))
    await _send(engine, anon, _page_event("offer_click", decision_id))  # clicked again

    (entry,) = await _outcomes(redis)
    assert entry["decision_id"] == decision_id
    assert (entry["outcome"], entry["rule"], entry["channel"]) == (
        "clicked",
        "mortgage_hero",
        "web",
    )
    assert entry["by"] == "page"


async def test_a_click_on_another_visitor_s_decision_records_nothing(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    someone_else_s = await _offer(engine, new_anon())
    intruder = new_anon()
    await _send(engine, intruder, event("page_view", page="/"))
    await _send(
        engine,
        intruder,
        _page_event("offer_click", someone_else_s),
        _page_event("offer_click", "f" * 24),  # no such decision
        _page_event("offer_impression", someone_else_s),
    )
    assert await _outcomes(redis) == []
    assert await redis.zcard(keys.LABELS_PENDING) == 0
    assert engine.metrics is not None
    ignored = engine.metrics.rejected.labels("offer_event_ignored")._value.get()
    assert ignored == 3


async def test_an_impression_left_unclicked_is_ignored_once_its_window_closes(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    anon = new_anon()
    decision_id = await _offer(engine, anon)
    await _send(engine, anon, _page_event("offer_impression", decision_id))
    store = engine.extra["app"][STORE]
    window_ms = settings.learning.click_window_s * 1000

    assert await labels.sweep(store, now_ms()) == 0  # the window is still open
    assert await labels.sweep(store, now_ms() + window_ms + 1_000) == 1
    assert await labels.sweep(store, now_ms() + window_ms + 2_000) == 0  # popped once

    (entry,) = await _outcomes(redis)
    assert (entry["decision_id"], entry["outcome"]) == (decision_id, "ignored")


async def test_a_clicked_impression_is_not_swept(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    anon = new_anon()
    decision_id = await _offer(engine, anon)
    await _send(engine, anon, _page_event("offer_impression", decision_id))
    await _send(engine, anon, _page_event("offer_click", decision_id))
    store = engine.extra["app"][STORE]

    assert await labels.sweep(store, now_ms() + 86_400_000) == 0
    assert [e["outcome"] for e in await _outcomes(redis)] == ["clicked"]


async def test_an_impression_after_the_click_cannot_make_it_a_negative(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    """The page re-renders the offer after the click: the label stays `clicked`."""
    engine = await _engine(make_engine, settings, tmp_path)
    anon = new_anon()
    decision_id = await _offer(engine, anon)
    await _send(engine, anon, _page_event("offer_click", decision_id))
    await _send(engine, anon, _page_event("offer_impression", decision_id))

    assert await labels.sweep(engine.extra["app"][STORE], now_ms() + 86_400_000) == 0
    assert [e["outcome"] for e in await _outcomes(redis)] == ["clicked"]


# -- conversions -------------------------------------------------------------------------


async def test_a_conversion_is_credited_to_the_customer_s_offer_decision(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    decision_id = await _offer(engine, new_anon(), customer="c-conv")
    body = {"customer_id": "c-conv", "product": "mortgage", "value": 1200.0, "ts": now_ms()}

    status, answer = await _conversion(engine, body)
    assert status == 200, answer
    msgspec.convert(answer, ConversionAnswer)
    assert answer == {
        "customer_id": "c-conv",
        "product": "mortgage",
        "attributed": decision_id,
        "recorded": True,
    }
    (entry,) = await _outcomes(redis)
    assert (entry["decision_id"], entry["outcome"]) == (decision_id, "converted")
    assert float(entry["value"]) == 1200.0

    status, answer = await _conversion(engine, {**body, "product": "loans"})
    assert (status, answer["attributed"]) == (200, None)  # no decision for that product
    assert len(await _outcomes(redis)) == 1


async def test_a_conversion_outside_the_window_is_credited_to_nothing(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(
        make_engine, settings, tmp_path, learning=Learning(conversion_window_s=1)
    )
    made_ms = now_ms()
    await _offer(engine, new_anon(), customer="c-late")
    late = {"customer_id": "c-late", "product": "mortgage", "ts": made_ms + 60_000}
    status, answer = await _conversion(engine, late)
    assert (status, answer["attributed"]) == (200, None)
    early = {"customer_id": "c-late", "product": "mortgage", "ts": made_ms - 60_000}
    status, answer = await _conversion(engine, early)  # a sale before the decision
    assert (status, answer["attributed"]) == (200, None)
    assert await _outcomes(redis) == []


async def test_the_same_conversion_id_twice_records_once(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    decision_id = await _offer(engine, new_anon(), customer="c-twice")
    body = {"customer_id": "c-twice", "product": "mortgage", "ts": now_ms(), "conversion_id": "L1"}

    first = await _conversion(engine, body)
    again = await _conversion(engine, body)
    assert first == (200, {**first[1], "attributed": decision_id, "recorded": True})
    assert again == (200, {**first[1], "recorded": False})
    assert len(await _outcomes(redis)) == 1


async def test_conversions_need_a_token_and_a_known_customer(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, tmp_path)
    await _offer(engine, new_anon(), customer="c-gone")
    body = {"customer_id": "c-gone", "product": "mortgage", "ts": now_ms()}

    status, answer = await _conversion(engine, body, headers={})
    assert (status, answer["error"]["code"]) == (401, "missing_credentials")
    status, answer = await _conversion(engine, {**body, "customer_id": "c-never"})
    assert (status, answer["error"]["code"]) == (404, "unknown_customer")
    status, answer = await _conversion(engine, {**body, "product": "Mortgage!"})
    assert (status, answer["error"]["path"]) == (400, "$.product")

    async with engine.session.delete(
        f"{engine.url}/v1/profiles/c-gone", headers=engine.api_headers
    ) as r:
        assert r.status == 200
    status, answer = await _conversion(engine, body)
    assert (status, answer["error"]["code"]) == (404, "unknown_customer")
    assert await _outcomes(redis) == []
