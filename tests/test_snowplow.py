"""Snowplow-compatible ingestion: Snowplow's own Python tracker, unmodified, against a
real engine (engine/http/snowplow.py, engine/ingest/snowplow.py).

The tracker (snowplow-tracker) is synchronous (requests): every flush runs in a
thread, so the in-process engine keeps serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from conftest import EngineClient, new_anon, now_ms, write_pack
from snowplow_tracker import (
    Emitter,
    PageView,
    SelfDescribing,
    SelfDescribingJson,
    StructuredEvent,
    Subject,
    Tracker,
)

from engine.core.errors import ConfigError
from engine.core.settings import Settings, TrackMapping, load_settings
from engine.core.vocabulary import EventType
from engine.http.snowplow import PIXEL, SnowplowAnswer
from engine.ingest.snowplow import PIXEL_VALUE_MAX

TP2 = "/com.snowplowanalytics.snowplow/tp2"
PAYLOAD_DATA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
LOAN = "iglu:com.bank/loan_calculated/jsonschema/1-0-0"
BROWSER_APP, SERVER_APP = "demo-bank", "demo-bank-backend"
ALLOWED_ORIGIN = "http://127.0.0.1:8080"  # in the demo site's allowed_origins

PACK = """
offers:
  - {id: adviser, title: Talk to an adviser, product: mortgage, value: 900, channels: [web]}
rules:
  - id: mortgage_research
    description: Mortgage calculator used 3 times
    when: profile.calc.mortgage.count >= 3
    action: {type: offer, offer: adviser, slot: hero}
"""


class Sent:
    """What the tracker's callbacks reported: events sent, and the failed ones."""

    def __init__(self) -> None:
        self.ok: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []

    def on_success(self, events: list[dict[str, Any]]) -> None:
        self.ok.extend(events)

    def on_failure(self, _sent: int, events: list[dict[str, Any]]) -> None:
        self.failed.extend(events)


def tracker(
    engine: EngineClient,
    *,
    method: str = "post",
    app_id: str = BROWSER_APP,
    duid: str | None = None,
    uid: str | None = None,
    key: str | None = None,
    encode_base64: bool = True,
) -> tuple[Tracker, Emitter, Sent]:
    """Snowplow's tracker as a bank would configure it, the engine as its collector.
    A server app's key goes in a `requests.Session`'s headers (the Emitter's `session`)."""
    sent = Sent()
    session = None
    if key is not None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
    emitter = Emitter(
        engine.url,
        method=method,  # type: ignore[arg-type]
        on_success=sent.on_success,
        on_failure=sent.on_failure,
        session=session,
    )
    subject = Subject()
    if duid is not None:
        subject.set_domain_user_id(duid)
    if uid is not None:
        subject.set_user_id(uid)
    t = Tracker("rb-test", emitter, subject, app_id=app_id, encode_base64=encode_base64)
    return t, emitter, sent


async def send(t: Tracker, emitter: Emitter, *events: Any) -> None:
    """Track `events` and flush, in a thread: the tracker blocks on its HTTP calls
    (a GET emitter sends as each event is tracked)."""

    def run() -> None:
        for ev in events:
            t.track(ev)
        emitter.flush()

    await asyncio.to_thread(run)


async def flush(emitter: Emitter) -> None:
    await asyncio.to_thread(emitter.flush)


async def metric(engine: EngineClient, name: str, labels: str = "") -> float:
    async with engine.session.get(f"{engine.url}/metrics") as r:
        text = await r.text()
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


def server_key(engine: EngineClient) -> str:
    """The demo's server app key: the demo backend's one generated secret."""
    return engine.credentials["segment_server_write_key"]


def mortgage(amount: float = 250_000, term: int = 300) -> StructuredEvent:
    return StructuredEvent("calculator", "mortgage", property_=str(term), value=amount)


def loan_calculated(**data: Any) -> SelfDescribing:
    return SelfDescribing(SelfDescribingJson(LOAN, data))


def raw_event(**fields: str) -> dict[str, str]:
    ev = {
        "e": "se",
        "eid": str(uuid.uuid4()),
        "aid": BROWSER_APP,
        "duid": new_anon(),
        "dtm": str(now_ms()),
        "se_ca": "calculator",
        "se_ac": "mortgage",
        "se_pr": "300",
        "se_va": "250000",
    }
    ev.update(fields)
    return {k: v for k, v in ev.items() if v != ""}


async def post(
    engine: EngineClient,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    expect: int = 200,
) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    async with engine.session.post(f"{engine.url}{TP2}", data=data, headers=hdrs) as r:
        answer = orjson.loads(await r.read())
        assert r.status == expect, (r.status, answer)
    if expect == 200:
        assert set(answer) == set(SnowplowAnswer.__struct_fields__)
    else:
        assert set(answer["error"]) == {"code", "message", "path"}
    return answer  # type: ignore[no-any-return]


def payload(*events: dict[str, str]) -> dict[str, Any]:
    return {"schema": PAYLOAD_DATA, "data": list(events)}


# -- the official tracker against a real engine --------------------------------------


@pytest.mark.parametrize("encode_base64", [True, False])
async def test_the_official_tracker_posts_events_the_engine_counts(
    engine: EngineClient, encode_base64: bool
) -> None:
    anon = str(uuid.uuid4())  # the JS tracker's duid is a UUID: used as is
    t, emitter, sent = tracker(engine, duid=anon, encode_base64=encode_base64)
    await send(
        t,
        emitter,
        PageView("https://bank.example/mortgages?utm_source=news&x=1", "Mortgages"),
        mortgage(),  # structured, mapped by (category, action)
        loan_calculated(product="Personal Loan", amount=12_000, termMonths=48),  # ue_px/ue_pr
        StructuredEvent("brochure", "download", label="fees"),  # unmapped: custom
        SelfDescribing(SelfDescribingJson("iglu:com.acme/other/jsonschema/1-0-0", {})),
    )
    assert (len(sent.ok), sent.failed) == (5, [])
    assert await metric(engine, "ringback_events_total", '{type="page_view"}') == 1
    assert await metric(engine, "ringback_events_total", '{type="calc"}') == 2
    assert await metric(engine, "ringback_events_total", '{type="custom"}') == 1  # other: ignored


async def test_get_i_takes_one_event_and_answers_a_gif(engine: EngineClient) -> None:
    t, emitter, sent = tracker(engine, method="get", duid=new_anon())
    await send(
        t,
        emitter,
        PageView("https://bank.example/loans", "Loans"),
        mortgage(),
        loan_calculated(amount=9000, termMonths=24),
    )
    assert (len(sent.ok), sent.failed) == (3, [])
    assert await metric(engine, "ringback_events_total", '{type="page_view"}') == 1
    assert await metric(engine, "ringback_events_total", '{type="calc"}') == 2
    query = {"e": "pv", "aid": BROWSER_APP, "duid": new_anon(), "url": "https://b.example/x"}
    async with engine.session.get(f"{engine.url}/i", params=query) as r:
        assert r.status == 200 and r.content_type == "image/gif"
        assert await r.read() == PIXEL


async def test_get_i_bounds_each_value_so_an_event_fits_a_url(engine: EngineClient) -> None:
    """A value past PIXEL_VALUE_MAX is refused as ours (JSON, code, path), never left to
    the HTTP layer's plain-text 'line too long'; such events go by POST."""
    duid = new_anon()
    query = {"e": "pv", "aid": BROWSER_APP, "duid": duid, "page": "x" * (PIXEL_VALUE_MAX + 1)}
    async with engine.session.get(f"{engine.url}/i", params=query) as r:
        assert r.status == 400 and r.content_type == "application/json"
        error = (await r.json())["error"]
    assert (error["code"], error["path"]) == ("invalid_event", "$.page")
    query["page"] = "x" * PIXEL_VALUE_MAX
    async with engine.session.get(f"{engine.url}/i", params=query) as r:
        assert r.status == 200


async def test_a_resent_eid_counts_once(engine: EngineClient) -> None:
    # A tracker that resends after a lost answer sends the same payload, the same eid.
    t, emitter, sent = tracker(engine, duid=new_anon())
    again = t.complete_payload(mortgage()).nv_pairs
    for _ in range(3):
        emitter.input(dict(again))
        await flush(emitter)
    assert (len(sent.ok), sent.failed) == (3, [])
    assert await metric(engine, "ringback_events_total", '{type="calc"}') == 1
    assert await metric(engine, "ringback_duplicates_total") == 2


async def test_decisions_are_made_from_mapped_events_of_a_server_app(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, PACK))
    )
    t, emitter, sent = tracker(engine, app_id=SERVER_APP, uid="c-sp-decide", key=server_key(engine))
    await send(t, emitter, *(mortgage(amount) for amount in (200_000, 250_000, 300_000)))
    assert sent.failed == []
    status, body = await engine.get_json(
        "/v1/customers/c-sp-decide/decisions", headers=engine.api_headers
    )
    assert status == 200, body
    assert [d["rule"] for d in body["decisions"]] == ["mortgage_research"]
    profile = (await engine.profile("c-sp-decide"))["profile"]
    assert profile["calc"]["mortgage"]["count"] == 3

    # The same events straight to tp2: the answer carries the decision too.
    raw = [raw_event(aid=SERVER_APP, uid="c-sp-raw", duid="") for _ in range(3)]
    answer = await post(
        engine, payload(*raw), headers={"Authorization": f"Bearer {server_key(engine)}"}
    )
    assert answer["accepted"] == 3
    assert [d["rule"] for d in answer["decisions"]] == ["mortgage_research"]


async def test_a_browser_uid_is_only_a_hint_and_a_server_app_needs_its_key(
    engine: EngineClient,
) -> None:
    # Anyone can read the browser app id from a page: its uid must link nothing.
    anon = new_anon()
    t, emitter, sent = tracker(engine, duid=anon, uid="c-sp-victim")
    await send(t, emitter, mortgage())
    assert sent.failed == []
    status, _ = await engine.get_json("/v1/profiles/c-sp-victim", headers=engine.api_headers)
    assert status == 404

    # The server app's id without its key: refused (401), not retried by the tracker.
    t, emitter, sent = tracker(engine, app_id=SERVER_APP, uid="c-sp-victim")
    await send(t, emitter, mortgage())
    assert len(sent.failed) == 1 and not emitter.retry_timer.is_active()
    headers = {"Authorization": "Bearer not-the-key-of-any-app"}
    refusal = await post(engine, payload(raw_event()), headers=headers, expect=401)
    assert refusal["error"]["code"] == "invalid_source_key"
    missing = await post(engine, payload(raw_event(aid=SERVER_APP)), expect=401)
    assert (missing["error"]["code"], missing["error"]["path"]) == (
        "missing_credentials",
        "$.data[0].aid",
    )

    # With the key, the server app's uid is the customer and its duid is linked.
    t, emitter, sent = tracker(
        engine, app_id=SERVER_APP, uid="c-sp-known", duid=anon, key=server_key(engine)
    )
    await send(t, emitter, mortgage())
    assert sent.failed == []
    body = await engine.profile("c-sp-known")
    assert body["profile"]["calc"]["mortgage"]["count"] == 2  # the browser one merged in
    assert anon in {link["anonymous_id"] for link in body["linked_anonymous_ids"]}


async def test_bad_payloads_are_refused_and_the_tracker_does_not_retry_them(
    engine: EngineClient,
) -> None:
    t, emitter, sent = tracker(engine, app_id="no-such-app", duid=new_anon())
    await send(t, emitter, mortgage())
    assert len(sent.failed) == 1 and sent.ok == []
    assert not emitter.retry_timer.is_active()  # a 400: dropped, as Snowplow trackers do
    assert await metric(engine, "ringback_rejected_total", '{code="unknown_app_id"}') == 1


async def test_a_mapping_can_read_a_context_entity(make_engine: Any, settings: Settings) -> None:
    # Banks often put calculator state in a context entity of a structured event.
    loan = TrackMapping(
        "calculator/loan",
        EventType.CALC,
        (("amount", "com.bank/loan:amount"), ("term_months", "com.bank/loan:termMonths")),
        (("product", "personal_loan"),),
    )
    sp = replace(settings.snowplow, structured={("calculator", "loan"): loan})
    engine: EngineClient = await make_engine(replace(settings, snowplow=sp))
    entity = SelfDescribingJson(
        "iglu:com.bank/loan/jsonschema/1-0-0", {"amount": 9000, "termMonths": 36}
    )
    for encode_base64 in (True, False):  # cx, then co
        t, emitter, sent = tracker(
            engine,
            app_id=SERVER_APP,
            uid="c-sp-ctx",
            key=server_key(engine),
            encode_base64=encode_base64,
        )
        await send(t, emitter, StructuredEvent("calculator", "loan", context=[entity]))
        assert sent.failed == []
    calcs = (await engine.profile("c-sp-ctx"))["profile"]["calc"]
    assert calcs["personal_loan"]["count"] == 2

    auth = {"Authorization": f"Bearer {server_key(engine)}"}
    bad = raw_event(aid=SERVER_APP, uid="c-sp-ctx", se_ac="loan", cx="bm90IGpzb24")
    refusal = await post(engine, payload(bad), headers=auth, expect=400)
    assert (refusal["error"]["code"], refusal["error"]["path"]) == ("invalid_json", "$.data[0].cx")
    none = raw_event(aid=SERVER_APP, uid="c-sp-ctx", se_ac="loan")  # no context: no amount
    refusal = await post(engine, payload(none), headers=auth, expect=400)
    assert (refusal["error"]["code"], refusal["error"]["path"]) == ("invalid_event", "$.data[0].co")


# -- the wire, raw ------------------------------------------------------------------


def _b64(data: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


@pytest.mark.parametrize(
    ("body", "code", "path"),
    [
        (b"{", "invalid_json", "$"),
        ({"schema": PAYLOAD_DATA, "data": []}, "invalid_payload", "$.data"),
        (
            {"schema": "iglu:com.acme/x/jsonschema/1-0-0", "data": [raw_event()]},
            "invalid_schema",
            "$.schema",
        ),
        (payload(raw_event(e="")), "invalid_event", "$.data[0]"),
        (payload(raw_event(), raw_event(aid="nope")), "unknown_app_id", "$.data[1].aid"),
        (payload(raw_event(duid="")), "no_user_id", "$.data[0]"),
        (payload(raw_event(duid="", uid="c-1")), "anonymous_id_required", "$.data[0].duid"),
        (payload(raw_event(se_va="lots")), "invalid_event", "$.data[0].se_va"),
        (payload(raw_event(se_pr="")), "invalid_event", "$.data[0].se_pr"),
        (payload(raw_event(se_ac="")), "invalid_event", "$.data[0].se_ac"),
        (payload(raw_event(dtm="yesterday")), "invalid_timestamp", "$.data[0].dtm"),
        (payload(raw_event(dtm="978307200000")), "timestamp_out_of_range", "$.data[0].dtm"),
        (payload(raw_event(stm="31536000000")), "sent_at_out_of_range", "$.data[0].stm"),
        (payload(raw_event(e="ue", ue_px="bm90IGpzb24")), "invalid_json", "$.data[0].ue_px"),
        (
            payload(
                raw_event(
                    e="ue",
                    ue_px=_b64(
                        {
                            "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/"
                            "jsonschema/1-0-0",
                            "data": {"schema": LOAN, "data": {"amount": -5, "termMonths": 12}},
                        }
                    ),
                )
            ),
            "invalid_event",
            "$.data[0].ue_px.data.data.amount",
        ),
        (payload(raw_event(pad="x" * 70_000)), "event_too_large", "$.data[0]"),
        (payload(*[raw_event() for _ in range(501)]), "too_many_events", "$.data"),
    ],
)
async def test_bad_payloads_are_refused_with_a_stable_code_and_path(
    engine: EngineClient, body: Any, code: str, path: str
) -> None:
    answer = await post(engine, body, expect=400)
    assert (answer["error"]["code"], answer["error"]["path"]) == (code, path), answer
    assert await metric(engine, "ringback_events_total", '{type="calc"}') == 0  # none written


async def test_too_large_or_unsupported_bodies_are_400_which_trackers_do_not_retry(
    engine: EngineClient,
) -> None:
    events = [raw_event(pad="x" * 60_000) for _ in range(20)]  # ~1.2 MB
    answer = await post(engine, payload(*events), expect=400)
    assert answer["error"]["code"] == "payload_too_large"
    async with engine.session.post(
        f"{engine.url}{TP2}", data=b"<xml/>", headers={"Content-Type": "application/xml"}
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "unsupported_media_type"


async def test_a_bad_pixel_is_refused_with_the_field_at_fault(engine: EngineClient) -> None:
    query = {"e": "se", "aid": BROWSER_APP, "duid": new_anon(), "se_ca": "x"}
    async with engine.session.get(f"{engine.url}/i", params=query) as r:
        assert r.status == 400
        assert (await r.json())["error"] == {
            "code": "invalid_event",
            "message": "a structured event needs se_ca and se_ac",
            "path": "$.se_ac",
        }


async def test_device_times_are_corrected_by_the_sent_time(engine: EngineClient) -> None:
    # A device clock two hours fast: the event is dated by the server's clock.
    skew = 2 * 3600 * 1000
    ev = raw_event(
        aid=SERVER_APP, uid="c-sp-clock", dtm=str(now_ms() + skew), stm=str(now_ms() + skew)
    )
    await post(engine, payload(ev), headers={"Authorization": f"Bearer {server_key(engine)}"})
    profile = (await engine.profile("c-sp-clock"))["profile"]
    assert abs(profile["last_seen"] - now_ms()) < 60_000, profile


async def test_page_views_keep_the_path_title_and_campaign(engine: EngineClient) -> None:
    ev = raw_event(
        e="pv",
        aid=SERVER_APP,
        uid="c-sp-page",
        url="https://bank.example/loans/car?utm_campaign=spring&session=secret",
        page="Car loans",
    )
    await post(engine, payload(ev), headers={"Authorization": f"Bearer {server_key(engine)}"})
    body = await engine.profile("c-sp-page")
    assert body["recent_pages"][0]["path"] == "/loans/car"
    assert body["profile"]["counts"] == {"page_view": 1}


# -- CORS, for the JS tracker in bank pages -------------------------------------------


async def test_cors_preflight_and_answers_for_allowed_origins_only(engine: EngineClient) -> None:
    preflight = {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"}
    async with engine.session.options(f"{engine.url}{TP2}", headers=preflight) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert r.headers["Access-Control-Allow-Credentials"] == "true"  # JS tracker default
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
    evil = {**preflight, "Origin": "https://evil.example"}
    async with engine.session.options(f"{engine.url}{TP2}", headers=evil) as r:
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers

    hdrs = {"Content-Type": "application/json", "Origin": ALLOWED_ORIGIN}
    body = orjson.dumps(payload(raw_event()))
    async with engine.session.post(f"{engine.url}{TP2}", data=body, headers=hdrs) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
    bad = orjson.dumps(payload(raw_event(se_va="lots")))
    async with engine.session.post(f"{engine.url}{TP2}", data=bad, headers=hdrs) as r:
        assert r.status == 400  # the page's tracker can read the refusal, and not retry
        assert r.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    refusal = await post(
        engine, payload(raw_event()), headers={"Origin": "https://evil.example"}, expect=403
    )
    assert refusal["error"]["code"] == "origin_not_allowed"


# -- config ------------------------------------------------------------------------


def test_the_demo_config_maps_page_views_and_calculator_events(settings: Settings) -> None:
    sp = settings.snowplow
    assert sp.page_views == "page_view"
    assert ("calculator", "mortgage") in sp.structured
    browser, server = sp.apps[BROWSER_APP], sp.apps[SERVER_APP]
    assert not browser.trusted and browser.site == "demo-bank"
    assert server.trusted and sp.app_for_key(settings.demo_credentials["segment_server_write_key"])  # type: ignore[index]
    assert sp.app_for_key(BROWSER_APP) is None
    assert settings.demo_credentials["segment_server_write_key"] not in repr(settings)  # type: ignore[index]


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        (
            '[[snowplow.apps]]\napp_id = "a"\nsite = "nope"\ntrust = "browser"',
            "snowplow.apps[0].site",
        ),
        (
            '[[snowplow.apps]]\napp_id = "a"\nsite = "bank"\ntrust = "server"\nkey = "short"',
            "snowplow.apps[0].key",
        ),
        (
            '[[snowplow.apps]]\napp_id = "a"\nsite = "bank"\ntrust = "server"',
            "snowplow.apps[0].key",
        ),
        (
            '[[snowplow.apps]]\napp_id = "a"\nsite = "bank"\ntrust = "browser"\nkey = "'
            + "k" * 20
            + '"',
            "snowplow.apps[0].key",
        ),
        (
            '[[snowplow.apps]]\napp_id = "a"\nsite = "bank"\ntrust = "browser"\n'
            '[[snowplow.apps]]\napp_id = "a"\nsite = "bank"\ntrust = "browser"',
            "snowplow.apps[1].app_id",
        ),
        (
            '[[snowplow.structured]]\ncategory = "c"\naction = "a"\ntype = "calc"\n'
            'properties = { amount = "price" }',
            "snowplow.structured[0].properties[...]",  # msgspec names a dict value so
        ),
        (
            '[[snowplow.self_describing]]\nschema = "com.bank/x"\ntype = "calc"',
            "snowplow.self_describing[0].schema",
        ),
    ],
)
def test_snowplow_config_errors_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
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


def test_the_route_table_declares_the_snowplow_routes() -> None:
    from engine.http.cors import BROWSER_PATHS
    from engine.http.routes import ROUTES, openapi_document

    routes = {(r.method, r.path) for r in ROUTES if "snowplow" in r.tags}
    assert routes == {("POST", TP2), ("OPTIONS", TP2), ("GET", "/i")}
    assert TP2 in BROWSER_PATHS
    doc = openapi_document()
    assert doc["paths"][TP2]["post"]["responses"]["400"]
    params = {p["name"] for p in doc["paths"]["/i"]["get"]["parameters"]}
    assert {"e", "eid", "aid", "duid", "uid", "se_ca", "ue_px", "dtm", "stm"} <= params
