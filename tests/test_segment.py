"""Segment-compatible ingestion: Segment's own Python library, unmodified, against a
real engine (engine/http/segment.py, engine/ingest/segment.py).

The library (segment-analytics-python) is synchronous (requests): every call runs in
a thread, so the in-process engine keeps serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import re
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from conftest import EngineClient, new_anon, now_ms, write_pack
from segment.analytics import Client
from segment.analytics.request import APIError

from engine.core.errors import ConfigError
from engine.core.settings import DEMO_CREDENTIALS_FILE, Settings, load_settings
from engine.http.segment import SegmentAnswer, SegmentRefusal

BROWSER_KEY = "demo-bank"  # the demo's browser write key is the site key (public anyway)

PACK = """
offers:
  - {id: adviser, title: Talk to an adviser, product: mortgage, value: 900, channels: [web]}
rules:
  - id: mortgage_research
    description: Mortgage calculator used 3 times
    when: profile.calc.mortgage.count >= 3
    action: {type: offer, offer: adviser, slot: hero}
"""


def server_key(engine: EngineClient) -> str:
    return engine.credentials["segment_server_write_key"]


def client(engine: EngineClient, write_key: str, **kw: Any) -> Client:
    """Segment's client as a bank would configure it, only `host` pointed at us."""
    kw.setdefault("sync_mode", True)
    return Client(write_key, host=engine.url, max_retries=1, **kw)


async def call(fn: Any, *args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kw)


async def metric(engine: EngineClient, name: str, labels: str = "") -> float:
    async with engine.session.get(f"{engine.url}/metrics") as r:
        text = await r.text()
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def post(
    engine: EngineClient,
    path: str,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    expect: int = 200,
) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with engine.session.post(f"{engine.url}{path}", data=data, headers=hdrs) as r:
        answer = orjson.loads(await r.read())
        assert r.status == expect, (r.status, answer)
    msgspec.convert(answer, SegmentAnswer if expect == 200 else SegmentRefusal)
    return answer  # type: ignore[no-any-return]


def track(event: str, **kw: Any) -> dict[str, Any]:
    msg = {
        "type": "track",
        "event": event,
        "messageId": kw.pop("messageId", str(uuid.uuid4())),
        "anonymousId": kw.pop("anonymousId", new_anon()),
        "timestamp": kw.pop("timestamp", None),
    }
    msg.update(kw)
    if msg["timestamp"] is None:
        del msg["timestamp"]
    return msg


def mortgage(amount: float = 250_000, term: int = 300, **kw: Any) -> dict[str, Any]:
    return track("Mortgage Calculated", properties={"amount": amount, "term_months": term}, **kw)


# -- the official client against a real engine -------------------------------------


async def test_the_official_client_sends_events_the_engine_counts(
    engine: EngineClient,
) -> None:
    seg = client(engine, BROWSER_KEY)
    anon = str(uuid.uuid4())  # analytics.js-style anonymous id, used as is
    await call(
        seg.page,
        anonymous_id=anon,
        name="Mortgages",
        properties={"path": "/mortgages", "title": "Mortgages"},
    )
    await call(
        seg.track,
        anonymous_id=anon,
        event="Mortgage Calculated",
        properties={"amount": 250_000, "term_months": 300},
    )
    await call(seg.track, anonymous_id=anon, event="Brochure Downloaded", properties={"n": 1})
    assert await metric(engine, "ringback_events_total", '{type="page_view"}') == 1
    assert await metric(engine, "ringback_events_total", '{type="calc"}') == 1
    assert await metric(engine, "ringback_events_total", '{type="custom"}') == 1


async def test_batches_gzip_and_a_retried_message_id_counts_once(engine: EngineClient) -> None:
    # The library's default mode: a background thread batches to /v1/batch, gzipped.
    seg = client(engine, server_key(engine), sync_mode=False, gzip=True, upload_interval=0.05)
    errors: list[Exception] = []
    seg.on_error = seg.consumers[0].on_error = lambda e, batch: errors.append(e)
    anon = new_anon()
    for i in range(30):
        seg.track(
            anonymous_id=anon,
            event="Mortgage Calculated",
            properties={"amount": 200_000 + i, "term_months": 300},
            message_id=f"m-{anon}-{i}",
        )
    for i in range(5):  # the same messageIds again: a client retrying after a timeout
        seg.track(
            anonymous_id=anon,
            event="Mortgage Calculated",
            properties={"amount": 200_000 + i, "term_months": 300},
            message_id=f"m-{anon}-{i}",
        )
    await call(seg.flush)
    await call(seg.join)
    assert errors == []
    assert await metric(engine, "ringback_events_total", '{type="calc"}') == 30
    assert await metric(engine, "ringback_duplicates_total") == 5


async def test_decisions_are_made_from_mapped_calc_events(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, PACK))
    )
    seg = client(engine, server_key(engine))
    for amount in (200_000, 250_000, 300_000):
        await call(
            seg.track,
            user_id="c-seg-decide",
            event="Mortgage Calculated",
            properties={"amount": amount, "term_months": 300},
        )
    status, body = await engine.get_json(
        "/v1/customers/c-seg-decide/decisions", headers=engine.api_headers
    )
    assert status == 200, body
    assert [d["rule"] for d in body["decisions"]] == ["mortgage_research"]
    profile = (await engine.profile("c-seg-decide"))["profile"]
    assert profile["calc"]["mortgage"]["count"] == 3


async def test_a_server_source_user_id_is_the_customer_a_browser_one_only_a_hint(
    engine: EngineClient,
) -> None:
    trusted, browser = client(engine, server_key(engine)), client(engine, BROWSER_KEY)
    await call(
        trusted.track,
        user_id="c-seg-trusted",
        event="Loan Calculated",
        properties={"product": "Personal Loan", "amount": "12000", "term_months": 48},
    )
    loans = (await engine.profile("c-seg-trusted"))["profile"]["calc"]
    assert loans["personal_loan"]["count"] == 1  # "Personal Loan" -> personal_loan

    # Anyone can read a browser write key from the page: its userId must link nothing.
    anon = new_anon()
    await call(
        browser.track,
        user_id="c-seg-victim",
        anonymous_id=anon,
        event="Mortgage Calculated",
        properties={"amount": 1, "term_months": 12},
    )
    await call(browser.identify, user_id="c-seg-victim", anonymous_id=anon)
    await call(browser.alias, previous_id=anon, user_id="c-seg-victim")
    status, _ = await engine.get_json("/v1/profiles/c-seg-victim", headers=engine.api_headers)
    assert status == 404

    # The bank's backend identifies the same visitor: the anonymous history is theirs now.
    await call(trusted.identify, user_id="c-seg-known", anonymous_id=anon)
    body = await engine.profile("c-seg-known")
    assert body["profile"]["calc"]["mortgage"]["count"] == 1
    assert anon in {link["anonymous_id"] for link in body["linked_anonymous_ids"]}


async def test_wrong_write_key_and_bad_payloads_are_refused_as_the_client_expects(
    engine: EngineClient,
) -> None:
    with pytest.raises(APIError) as info:
        await call(client(engine, "not-a-key").track, anonymous_id=new_anon(), event="X")
    assert (info.value.status, info.value.code) == (401, "invalid_write_key")

    with pytest.raises(APIError) as info:
        await call(
            client(engine, BROWSER_KEY).track,
            anonymous_id=new_anon(),
            event="Mortgage Calculated",
            properties={"amount": "lots", "term_months": 300},
        )
    assert (info.value.status, info.value.code) == (400, "invalid_event")
    assert info.value.response.json()["path"] == "$.batch[0].properties.amount"
    assert await metric(engine, "ringback_events_total", '{type="calc"}') == 0


# -- the wire, raw ------------------------------------------------------------------


async def test_every_route_answers_in_segment_shape(engine: EngineClient) -> None:
    anon, auth = new_anon(), basic(server_key(engine))
    answer = await post(engine, "/v1/batch", {"batch": [mortgage(anonymousId=anon)]}, headers=auth)
    assert answer["success"] is True and answer["accepted"] == 1
    one = mortgage(anonymousId=anon)
    one.pop("type")
    assert (await post(engine, "/v1/track", one, headers=auth))["accepted"] == 1
    page = {"anonymousId": anon, "properties": {"url": "https://bank.example/loans?x=1"}}
    assert (await post(engine, "/v1/page", page, headers=auth))["accepted"] == 1
    ident = {"anonymousId": anon, "userId": "c-seg-raw"}
    assert (await post(engine, "/v1/identify", ident, headers=auth))["links"] == 1
    alias = {"previousId": new_anon(), "userId": "c-seg-raw"}
    assert (await post(engine, "/v1/alias", alias, headers=auth))["links"] == 1
    prof = await engine.profile("c-seg-raw")
    assert prof["profile"]["counts"] == {"calc": 2, "page_view": 1}
    assert prof["recent_pages"][0]["path"] == "/loans"

    # The key in the body (Segment accepts it there too), and as Bearer.
    body = {"batch": [mortgage()], "writeKey": BROWSER_KEY}
    assert (await post(engine, "/v1/batch", body))["accepted"] == 1
    bearer = {"Authorization": f"Bearer {BROWSER_KEY}"}
    assert (await post(engine, "/v1/batch", {"batch": [mortgage()]}, headers=bearer))["accepted"]


@pytest.mark.parametrize(
    ("body", "status", "code", "path"),
    [
        (b"{", 400, "invalid_json", "$"),
        ({"batch": []}, 400, "invalid_message", "$.batch"),
        (
            {"batch": [{"type": "track", "anonymousId": "a1234567"}]},
            400,
            "invalid_message",
            "$.batch[0]",
        ),
        ({"batch": [{"type": "track", "event": "X"}]}, 400, "no_user_anon_id", "$.batch[0]"),
        (
            {"batch": [{"type": "nope", "anonymousId": "a1234567"}]},
            400,
            "invalid_message",
            "$.batch[0].type",
        ),
        (
            {"batch": [mortgage(), mortgage(term=0)]},
            400,
            "invalid_event",
            "$.batch[1].properties.term_months",
        ),
        (
            {"batch": [track("Mortgage Calculated", properties={"amount": 1})]},
            400,
            "invalid_event",
            "$.batch[0].properties.term_months",
        ),
        (
            {"batch": [track("X", timestamp="2001-01-01T00:00:00Z")]},
            400,
            "timestamp_out_of_range",
            "$.batch[0].timestamp",
        ),
        (
            {"batch": [track("X")], "sentAt": "1971-01-01T00:00:00Z"},
            400,
            "sent_at_out_of_range",
            "$.sentAt",
        ),
        (
            {"batch": [track("X", properties={"pad": "x" * 40_000})]},
            400,
            "message_too_large",
            "$.batch[0]",
        ),
        ({"batch": [track("X", userId="has space")]}, 400, "invalid_user_id", "$.batch[0].userId"),
    ],
)
async def test_bad_payloads_are_refused_with_a_stable_code_and_path(
    engine: EngineClient, body: Any, status: int, code: str, path: str
) -> None:
    answer = await post(engine, "/v1/batch", body, headers=basic(server_key(engine)), expect=status)
    assert (answer["code"], answer["path"]) == (code, path), answer
    assert await metric(engine, "ringback_events_total", '{type="calc"}') == 0  # none written


async def test_a_browser_user_id_without_anonymous_id_is_refused(engine: EngineClient) -> None:
    body = {"batch": [{"type": "track", "event": "X", "userId": "c-1"}]}
    answer = await post(engine, "/v1/batch", body, headers=basic(BROWSER_KEY), expect=400)
    assert (answer["code"], answer["path"]) == ("anonymous_id_required", "$.batch[0].anonymousId")


async def test_credentials_are_checked_before_the_body_is_used(engine: EngineClient) -> None:
    body = {"batch": [mortgage()]}
    missing = await post(engine, "/v1/batch", body, expect=401)
    assert missing["code"] == "missing_credentials"
    wrong = await post(engine, "/v1/batch", body, headers=basic("demo-bank-x"), expect=401)
    assert wrong["code"] == "invalid_write_key"
    garbled = {"Authorization": "Basic !!!"}
    assert (await post(engine, "/v1/batch", body, headers=garbled, expect=401))["code"] == (
        "invalid_credentials"
    )
    assert await metric(engine, "ringback_rejected_total", '{code="invalid_write_key"}') == 1


async def test_origins_the_site_does_not_allow_are_refused(engine: EngineClient) -> None:
    body = {"batch": [mortgage()]}
    evil = {**basic(BROWSER_KEY), "Origin": "https://evil.example"}
    answer = await post(engine, "/v1/batch", body, headers=evil, expect=403)
    assert answer["code"] == "origin_not_allowed"


async def test_gzip_bodies_up_to_500_kb_and_bombs_refused(engine: EngineClient) -> None:
    auth = basic(server_key(engine))
    anon = new_anon()
    # ~480 KB of messages: over /v1/events' 64 KB, within Segment's 500 KB.
    big = {
        "batch": [
            {**mortgage(anonymousId=anon), "context": {"pad": "x" * 3000}} for _ in range(150)
        ]
    }
    raw = orjson.dumps(big)
    assert 400_000 < len(raw) < 500_000
    answer = await post(
        engine, "/v1/batch", gzip.compress(raw), headers={**auth, "Content-Encoding": "gzip"}
    )
    assert answer["accepted"] == 150  # in chunks of limits.max_events_per_batch

    bomb = await call(gzip.compress, b'{"batch": [' + b" " * 20_000_000 + b"]}")
    assert len(bomb) < 50_000
    hdrs = {**auth, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{engine.url}/v1/batch", data=bomb, headers=hdrs) as r:
            refusal = await r.json()
            assert r.status == 413 and r.headers.get("Connection", "").lower() == "close"
    assert refusal["success"] is False and refusal["code"] == "payload_too_large"


async def test_messages_of_many_visitors_in_one_batch_land_on_their_profiles(
    engine: EngineClient,
) -> None:
    users = [f"c-seg-many-{i}" for i in range(5)]
    batch = [mortgage(userId=u, anonymousId=None) for u in users for _ in range(2)]
    for msg in batch:
        del msg["anonymousId"]
    answer = await post(engine, "/v1/batch", {"batch": batch}, headers=basic(server_key(engine)))
    assert answer["accepted"] == 10
    for u in users:
        assert (await engine.profile(u))["profile"]["calc"]["mortgage"]["count"] == 2


async def test_sent_at_corrects_a_wrong_client_clock(engine: EngineClient) -> None:
    # A device clock two hours fast: the event is dated by the server's clock.
    skew_ms = 2 * 3600 * 1000
    iso = _iso(now_ms() + skew_ms)
    body = {"batch": [mortgage(userId="c-seg-clock", timestamp=iso)], "sentAt": iso}
    await post(engine, "/v1/batch", body, headers=basic(server_key(engine)))
    profile = (await engine.profile("c-seg-clock"))["profile"]
    assert abs(profile["last_seen"] - now_ms()) < 60_000, profile


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


# -- config ------------------------------------------------------------------------


def test_the_demo_config_maps_page_and_calculator_events(settings: Settings) -> None:
    seg = settings.segment
    assert seg.page == "page_view"
    assert {"Loan Calculated", "Mortgage Calculated"} <= set(seg.tracks)
    browser, server = (
        seg.source_for("demo-bank"),
        seg.source_for(
            settings.demo_credentials["segment_server_write_key"]  # type: ignore[index]
        ),
    )
    assert browser is not None and not browser.trusted and browser.site == "demo-bank"
    assert server is not None and server.trusted
    assert seg.source_for("demo-bank ") is None
    assert settings.demo_credentials["segment_server_write_key"] not in repr(settings)  # type: ignore[index]


def test_older_demo_credentials_gain_a_server_write_key(tmp_path: Path) -> None:
    old = {
        "identity_secret": "s" * 40,
        "api_token": "rb_t",
        "agent_user": "agent",
        "agent_password": "pw",
    }
    (tmp_path / DEMO_CREDENTIALS_FILE).write_bytes(orjson.dumps(old))
    creds = load_settings(None, data_dir=tmp_path).demo_credentials
    assert creds is not None and old.items() <= creds.items()
    assert len(creds["segment_server_write_key"]) >= 16
    again = load_settings(None, data_dir=tmp_path).demo_credentials
    assert again == creds
    assert (tmp_path / DEMO_CREDENTIALS_FILE).stat().st_mode & 0o077 == 0


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        (
            '[[segment.sources]]\nname = "s"\nsite = "nope"\ntrust = "browser"\nwrite_key = "k"',
            "segment.sources[0].site",
        ),
        (
            '[[segment.sources]]\nname = "s"\nsite = "bank"\ntrust = "server"\nwrite_key = "short"',
            "segment.sources[0].write_key",
        ),
        (
            '[[segment.sources]]\nname = "s"\nsite = "bank"\ntrust = "browser"',
            "segment.sources[0].write_key",
        ),
        (
            '[[segment.tracks]]\nevent = "A"\ntype = "calc"\n[[segment.tracks]]\nevent = "A"\n'
            'type = "calc"',
            "segment.tracks[1].event",
        ),
        ('[[segment.tracks]]\nevent = "A"\ntype = "teleport"', "segment.tracks[0].type"),
    ],
)
def test_segment_config_errors_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "ringback.toml"
    path.write_text(
        '[[sites]]\nkey = "bank"\nidentity = { algorithms = ["HS256"], secret = "'
        + "x" * 32
        + '" }\n'
        + toml
        + "\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, data_dir=tmp_path)
    assert info.value.key == key


async def test_messages_without_message_id_count_by_content_and_time(engine: EngineClient) -> None:
    auth, anon = basic(BROWSER_KEY), new_anon()
    stamped = {
        "type": "page",
        "anonymousId": anon,
        "timestamp": _iso(now_ms()),
        "properties": {"path": "/loans"},
    }
    unstamped = {"type": "page", "anonymousId": anon, "properties": {"path": "/loans"}}
    first = await post(
        engine, "/v1/batch", {"batch": [stamped, unstamped, unstamped]}, headers=auth
    )
    again = await post(engine, "/v1/batch", {"batch": [stamped]}, headers=auth)
    assert (first["accepted"], again["accepted"], again["duplicates"]) == (3, 0, 1)


def test_the_route_table_declares_the_segment_answers() -> None:
    from engine.http.routes import ROUTES, openapi_document

    routes = {r.path: r for r in ROUTES if "segment" in r.tags}
    assert set(routes) == {"/v1/batch", "/v1/track", "/v1/page", "/v1/identify", "/v1/alias"}
    doc = openapi_document()
    for path, route in routes.items():
        assert route.method == "POST" and route.replies[200].body is SegmentAnswer
        for status in (400, 401, 413, 415, 429):
            assert route.replies[status].body is SegmentRefusal, (path, status)
        op = doc["paths"][path]["post"]
        assert op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/SegmentRefusal"
        )
    batch = doc["components"]["schemas"]["BatchBody"]
    assert batch["properties"]["batch"]["maxItems"] == 2500


async def test_a_full_batch_of_many_visitors_does_not_block_the_engine(
    engine: EngineClient,
) -> None:
    # 2500 messages (Segment's cap), 500 visitors: translated in slices and ingested
    # visitor by visitor; the loop guard fails the test if the engine blocks its loop.
    visitors = [new_anon() for _ in range(500)]
    batch = [
        {
            "type": "page",
            "anonymousId": visitors[i % 500],
            "messageId": f"m{i}",
            "properties": {"path": "/mortgages"},
        }
        for i in range(2500)
    ]
    answer = await post(engine, "/v1/batch", {"batch": batch}, headers=basic(BROWSER_KEY))
    assert (answer["accepted"], answer["duplicates"]) == (2500, 0)
    assert await metric(engine, "ringback_events_total", '{type="page_view"}') == 2500
