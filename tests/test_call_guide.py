"""The agent's call guide: the bank's quote for what the visitor calculated, what they
changed and when, the offer and why; inbound calls found by phone number (kept only as
a keyed hash) and written to the contact history."""

from __future__ import annotations

import asyncio
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from conftest import (
    REPO,
    EngineClient,
    StoreTarget,
    calc,
    event,
    mortgage_callback_trigger,
    open_store,
)

from engine.contact_center.quote import annuity_monthly, quote
from engine.core.errors import ConfigError
from engine.core.ids import new_decision_id
from engine.core.settings import (
    DEMO_CREDENTIALS_FILE,
    PHONE_KEY_FILE,
    QuoteConfig,
    Settings,
    load_settings,
)
from engine.delivery.records import write_trigger
from engine.http.state import GATEWAY
from engine.profile.phones import phone_hash_key, phone_ref
from engine.valkey import keys

PHONE = "+441632960001"  # Ofcom's drama range: never a real subscriber
OTHER_PHONE = "+441632960002"
MORTGAGE = QuoteConfig("mortgage", 4.1, "Mortgage", 60, 420)


# -- the quote -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "rate_pct", "months", "monthly"),
    [
        (100_000, 5.0, 360, 536.82),  # the textbook 30-year mortgage
        (400_000, 4.1, 300, 2133.50),
        (10_000, 6.9, 48, 239.00),
        (12_000, 0.0, 24, 500.00),  # no interest: equal parts
        (1_000, 0.0, 3, 333.33),
    ],
)
def test_the_monthly_payment_is_the_annuity_at_the_rate(
    amount: float, rate_pct: float, months: int, monthly: float
) -> None:
    assert annuity_monthly(amount, rate_pct, months) == monthly


def test_a_quote_sets_the_banks_figures_beside_the_visitors() -> None:
    q = quote(MORTGAGE, {"amount": 400_000.0, "term_months": 300, "rate": 3.5, "monthly": 1999.0})
    assert q is not None
    assert (q["amount"], q["term_months"], q["rate_pct"]) == (400_000.0, 300, 4.1)
    assert (q["monthly"], q["total"], q["interest"]) == (2133.50, 640_050.00, 240_050.00)
    assert q["visitor_monthly"] == 1999.0  # what their calculator showed wins
    assert q["monthly_difference"] == 134.50
    assert q["changed"] is None


def test_the_visitors_figure_is_what_their_calculator_showed_compared_at_one_term() -> None:
    rate_only = quote(MORTGAGE, {"amount": 400_000.0, "term_months": 300, "rate": 3.5})
    assert rate_only is not None
    # Their rate is shown; a monthly figure they never saw is not made up for them.
    assert (rate_only["visitor_rate_pct"], rate_only["visitor_monthly"]) == (3.5, None)
    assert rate_only["monthly_difference"] is None
    # Quoted at the bank's longest term: their 40-year payment is not a price comparison.
    other_term = quote(MORTGAGE, {"amount": 200_000.0, "term_months": 480, "monthly": 800.0})
    assert other_term is not None and other_term["term_months"] == 420
    assert other_term["visitor_monthly"] == 800.0 and other_term["monthly_difference"] is None


def test_a_term_the_bank_does_not_offer_is_quoted_at_the_nearest_it_does() -> None:
    long = quote(MORTGAGE, {"amount": 200_000.0, "term_months": 480})
    short = quote(MORTGAGE, {"amount": 200_000.0, "term_months": 24})
    assert long is not None and short is not None
    assert (long["term_months"], long["visitor_term_months"]) == (420, 480)
    assert (short["term_months"], short["visitor_term_months"]) == (60, 24)
    assert quote(MORTGAGE, {"amount": 0, "term_months": 300}) is None  # nothing to quote
    assert quote(MORTGAGE, {"term_months": 300}) is None


def test_a_quote_says_what_the_visitor_changed_and_when() -> None:
    q = quote(
        MORTGAGE,
        {
            "amount": 400_000.0,
            "term_months": 240,
            "ts": 2_000,
            "previous": {"amount": 300_000.0, "term_months": 300, "ts": 1_000},
        },
    )
    assert q is not None and q["changed"] is not None
    assert q["changed"]["fields"] == ["amount", "term_months"]
    assert q["changed"]["before"] == {"amount": 300_000.0, "term_months": 300}
    assert q["changed"]["after"] == {"amount": 400_000.0, "term_months": 240}
    assert (q["changed"]["before_ms"], q["changed"]["at_ms"]) == (1_000, 2_000)


# -- the engine ------------------------------------------------------------------------


async def _put(engine: EngineClient, customer: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with engine.session.put(
        f"{engine.url}/v1/profiles/{customer}/attributes", json=body, headers=engine.api_headers
    ) as r:
        return r.status, await r.json()


async def _inbound(
    engine: EngineClient,
    body: dict[str, Any],
    session: aiohttp.ClientSession | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with (session or engine.session).post(
        f"{engine.url}/v1/agents/inbound",
        json=body,
        headers=engine.api_headers if headers is None else headers,
    ) as r:
        return r.status, await r.json()


async def _calculates(engine: EngineClient, customer: str, *amounts: float) -> None:
    """The customer reworks the mortgage calculator: one calculation per amount."""
    start = int(time.time() * 1000) - 60_000 * len(amounts)
    for i, amount in enumerate(amounts):
        status, body, _ = await engine.post_events(
            engine.batch(
                [calc("mortgage", amount, 300, ts=start + i * 60_000)],
                identity=engine.token(customer),
            )
        )
        assert status == 200, body


async def _raw(redis: aioredis.Redis, key: str) -> bytes:
    value = await redis.get(key)
    return value.encode() if isinstance(value, str) else (value or b"")


async def _phone_keys(redis: aioredis.Redis) -> list[str]:
    return [k.decode() if isinstance(k, bytes) else k for k in await redis.keys("rb:{ph:*")]


async def test_the_screen_pop_carries_the_banks_quote_and_what_changed(
    engine: EngineClient,
) -> None:
    await _put(engine, "cust-quote", {"consent_call": True})
    await _calculates(engine, "cust-quote", 300_000, 400_000)
    status, ctx = await engine.get_json(
        "/v1/customers/cust-quote/context", headers=engine.api_headers
    )
    assert status == 200, ctx
    guide = ctx["call_guide"]
    assert (guide["locale"], guide["currency"]) == ("en-GB", "EUR")  # the demo site's
    (q,) = guide["quotes"]
    assert (q["product"], q["amount"], q["term_months"], q["rate_pct"]) == (
        "mortgage",
        400_000.0,
        300,
        4.1,  # engine/demo_config.toml [quotes.mortgage]
    )
    assert (q["monthly"], q["total"]) == (2133.50, 640_050.00)
    assert q["changed"]["fields"] == ["amount"]
    assert (q["changed"]["before"]["amount"], q["changed"]["after"]["amount"]) == (
        300_000.0,
        400_000.0,
    )
    assert q["changed"]["at_ms"] > q["changed"]["before_ms"]


async def test_the_guide_uses_the_sites_locale_and_currency(
    make_engine: Any, settings: Settings
) -> None:
    sites = {k: replace(v, locale="de-DE", currency="CHF") for k, v in settings.sites.items()}
    engine: EngineClient = await make_engine(settings, sites=sites)
    await _calculates(engine, "cust-de", 250_000)
    _, ctx = await engine.get_json("/v1/customers/cust-de/context", headers=engine.api_headers)
    assert (ctx["call_guide"]["locale"], ctx["call_guide"]["currency"]) == ("de-DE", "CHF")


async def test_callbacks_reach_the_agents_with_their_call_guide(engine: EngineClient) -> None:
    store = open_store(engine.settings)
    now = int(time.time() * 1000)
    prefix = keys.customer_prefix("cust-card")
    trigger = mortgage_callback_trigger(
        engine.site,
        now,
        {
            "amount": 400_000.0,
            "term_months": 300,
            "ts": now,
            "previous": {"amount": 300_000.0, "term_months": 300, "ts": now - 60_000},
        },
        "Talk to a mortgage adviser today",
    )
    await write_trigger(store, prefix, trigger)
    await store.close()
    agent, _ = await engine.agent()
    try:
        async with agent.ws_connect(f"{engine.url}/v1/triggers/ws") as ws:
            snapshot = orjson.loads((await ws.receive(timeout=5)).data)
            (card,) = [t for t in snapshot["triggers"] if t["id"] == trigger["id"]]
            guide = card["call_guide"]
            assert guide["quotes"][0]["monthly"] == 2133.50
            assert guide["quotes"][0]["changed"]["before"]["amount"] == 300_000.0
            assert guide["offer"]["title"] == "Talk to a mortgage adviser today"
            assert guide["why"]["reason"] == "Reworked the mortgage calculator"
            assert guide["why"]["propensity"] == 0.41
            # A new callback arrives live with its guide too.
            await engine.extra["app"][GATEWAY].ready.wait()
            live = {**trigger, "id": new_decision_id(now + 1)}
            store = open_store(engine.settings)
            await write_trigger(store, prefix, live)
            await store.close()
            msg = orjson.loads((await ws.receive(timeout=5)).data)
            assert msg["id"] == live["id"] and msg["call_guide"]["quotes"][0]["amount"] == 400_000
    finally:
        await agent.close()


async def test_a_phone_number_is_never_stored_only_its_keyed_hash(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    status, body = await _put(
        engine, "cust-phone", {"consent_call": True, "phone": PHONE, "balance": 12_500.5}
    )
    assert status == 200, body
    assert "phone" not in body["attributes"] and body["attributes"]["balance"] == 12_500.5
    stored = await _raw(redis, "rb:{c:cust-phone}:p")
    assert stored, "the profile exists"
    for form in (PHONE, PHONE[1:], PHONE[3:]):  # with or without + and country code
        assert form.encode() not in stored
    digest = phone_ref(phone_hash_key(engine.settings), PHONE)
    assert orjson.loads(stored)["attrs"]["phone_ref"] == digest
    assert await _phone_keys(redis) == [keys.phone_index(digest)]
    profile = await engine.profile("cust-phone")
    # Neither the number nor its hash (the index's bookkeeping) is shown as an attribute.
    assert "phone" not in profile["attributes"] and "phone_ref" not in profile["attributes"]
    assert PHONE not in orjson.dumps(profile).decode()


async def test_invalid_phone_numbers_are_refused_with_their_path(engine: EngineClient) -> None:
    for phone in ("07700 900123", "+0441632960001", "441632960001", "+44-1632-960001", "+1"):
        status, body = await _put(engine, "cust-badphone", {"phone": phone})
        assert status == 400, phone
        assert (body["error"]["code"], body["error"]["path"]) == ("invalid_attributes", "$.phone")


async def test_an_inbound_call_finds_the_caller_and_is_written_to_the_history(
    engine: EngineClient,
) -> None:
    await _put(engine, "cust-in", {"consent_call": True, "phone": PHONE})
    await _calculates(engine, "cust-in", 400_000)
    agent, csrf = await engine.agent()
    try:
        status, ctx = await _inbound(engine, {"phone": PHONE}, agent, {"X-CSRF-Token": csrf})
        assert status == 200, ctx
        assert ctx["customer_id"] == "cust-in"
        first = ctx["contact_history"][0]
        assert (first["kind"], first["by"], first["matched_by"]) == (
            "inbound_call",
            engine.credentials["agent_user"],
            "phone",
        )
        assert abs(int(first["ts"]) - time.time() * 1000) < 60_000
        assert ctx["call_guide"]["quotes"][0]["monthly"] == 2133.50
        assert "phone_ref" not in ctx["attributes"]
        # The screen-pop read later shows the call too; a system can report one by id.
        status, again = await _inbound(engine, {"customer_id": "cust-in"})
        assert status == 200
        kinds = [h["kind"] for h in again["contact_history"][:2]]
        assert kinds == ["inbound_call", "inbound_call"]
        assert again["contact_history"][0]["matched_by"] == "customer_id"
        status, read = await engine.get_json(
            "/v1/customers/cust-in/context", headers=engine.api_headers
        )
        assert [h["kind"] for h in read["contact_history"][:2]] == kinds
    finally:
        await agent.close()


async def test_an_unknown_caller_is_a_404_and_writes_nothing(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    status, body = await _inbound(engine, {"phone": OTHER_PHONE})
    assert (status, body["error"]["code"]) == (404, "unknown_caller")
    assert OTHER_PHONE not in orjson.dumps(body).decode()  # not said back
    status, body = await _inbound(engine, {"customer_id": "nobody-here"})
    assert (status, body["error"]["code"]) == (404, "unknown_caller")
    assert await redis.keys("*nobody-here*") == []


async def test_inbound_needs_credentials_and_the_csrf_token(engine: EngineClient) -> None:
    await _put(engine, "cust-auth", {"phone": PHONE})
    status, body = await _inbound(engine, {"phone": PHONE}, headers={})
    assert (status, body["error"]["code"]) == (401, "missing_credentials")
    agent, csrf = await engine.agent()
    try:
        status, body = await _inbound(engine, {"phone": PHONE}, agent, {})
        assert (status, body["error"]["code"]) == (403, "csrf_failed")
        status, _ = await _inbound(engine, {"phone": PHONE}, agent, {"X-CSRF-Token": csrf})
        assert status == 200
    finally:
        await agent.close()
    for bad in ({}, {"phone": PHONE, "customer_id": "cust-auth"}, {"phone": "12345"}):
        status, body = await _inbound(engine, bad)
        assert (status, body["error"]["code"]) == (400, "invalid_inbound"), bad


async def test_a_changed_phone_drops_the_old_index_entry(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    await _put(engine, "cust-move", {"phone": PHONE})
    await _put(engine, "cust-move", {"phone": OTHER_PHONE})
    assert (await _inbound(engine, {"phone": PHONE}))[0] == 404
    status, ctx = await _inbound(engine, {"phone": OTHER_PHONE})
    assert (status, ctx["customer_id"]) == (200, "cust-move")
    assert len(await _phone_keys(redis)) == 1
    # The CRM no longer has a number for the customer: nothing is left.
    await _put(engine, "cust-move", {"consent_call": True})
    assert (await _inbound(engine, {"phone": OTHER_PHONE}))[0] == 404
    assert await _phone_keys(redis) == []
    assert "phone_ref" not in orjson.loads(await _raw(redis, "rb:{c:cust-move}:p"))["attrs"]


async def test_a_number_given_to_another_customer_stays_theirs(engine: EngineClient) -> None:
    await _put(engine, "cust-old-owner", {"phone": PHONE})
    await _put(engine, "cust-new-owner", {"phone": PHONE})
    await _put(engine, "cust-old-owner", {"phone": OTHER_PHONE})  # the old owner moves on
    status, ctx = await _inbound(engine, {"phone": PHONE})
    assert (status, ctx["customer_id"]) == (200, "cust-new-owner")


async def test_erasure_deletes_the_phone_index(engine: EngineClient, redis: aioredis.Redis) -> None:
    await _put(engine, "cust-gone", {"phone": PHONE, "consent_call": True})
    assert len(await _phone_keys(redis)) == 1
    async with engine.session.delete(
        f"{engine.url}/v1/profiles/cust-gone", headers=engine.api_headers
    ) as r:
        assert r.status == 200, await r.text()
    assert await _phone_keys(redis) == []
    status, body = await _inbound(engine, {"phone": PHONE})
    assert (status, body["error"]["code"]) == (404, "unknown_caller")


async def _history_kinds(engine: EngineClient, customer: str) -> list[str]:
    status, ctx = await engine.get_json(
        f"/v1/customers/{customer}/context", headers=engine.api_headers
    )
    assert status == 200, ctx
    return [h["kind"] for h in ctx["contact_history"]]


async def _erase(engine: EngineClient, customer: str) -> None:
    async with engine.session.delete(
        f"{engine.url}/v1/profiles/{customer}", headers=engine.api_headers
    ) as r:
        assert r.status == 200, await r.text()


async def _members(redis: aioredis.Redis, engine: EngineClient, phone: str) -> set[str]:
    entry = keys.phone_index(phone_ref(phone_hash_key(engine.settings), phone))
    return {m.decode() if isinstance(m, bytes) else m for m in await redis.smembers(entry)}


async def test_a_shared_number_asks_the_agent_to_pick_and_writes_nothing_until_then(
    engine: EngineClient,
) -> None:
    """A joint account: the number opens neither customer's screen-pop on a guess."""
    await _put(engine, "cust-joint-b", {"consent_call": True, "phone": PHONE})
    await _put(engine, "cust-joint-a", {"consent_call": True, "phone": PHONE})
    status, body = await _inbound(engine, {"phone": PHONE})
    assert (status, body["error"]["code"]) == (409, "ambiguous_caller")
    assert body["candidates"] == ["cust-joint-a", "cust-joint-b"]
    assert set(body) == {"error", "candidates"}  # ids only, nothing about either customer
    assert PHONE not in orjson.dumps(body).decode()
    for customer in ("cust-joint-a", "cust-joint-b"):
        assert "inbound_call" not in await _history_kinds(engine, customer)
    # The caller says who they are; the agent opens that one.
    status, ctx = await _inbound(engine, {"customer_id": "cust-joint-b"})
    assert (status, ctx["customer_id"], ctx["matched_by"]) == (200, "cust-joint-b", "customer_id")
    assert (await _history_kinds(engine, "cust-joint-b")).count("inbound_call") == 1
    assert "inbound_call" not in await _history_kinds(engine, "cust-joint-a")


async def test_the_screen_pop_says_it_was_matched_by_phone(engine: EngineClient) -> None:
    await _put(engine, "cust-matched", {"phone": PHONE})
    status, ctx = await _inbound(engine, {"phone": PHONE})
    assert (status, ctx["matched_by"]) == (200, "phone")
    status, ctx = await _inbound(engine, {"customer_id": "cust-matched"})
    assert (status, ctx["matched_by"]) == (200, "customer_id")


async def test_erasing_the_old_owner_of_a_moved_number_keeps_the_new_owner_found(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    """The CRM gave the number to someone else before updating (or erasing) the old
    owner: the old owner's erasure takes only their own membership."""
    await _put(engine, "cust-was-mine", {"phone": PHONE})
    await _put(engine, "cust-now-mine", {"phone": PHONE})
    await _erase(engine, "cust-was-mine")
    status, ctx = await _inbound(engine, {"phone": PHONE})
    assert (status, ctx["customer_id"]) == (200, "cust-now-mine")
    assert await _members(redis, engine, PHONE) == {"cust-now-mine"}
    # The new owner's erasure leaves nothing behind: no empty set, no index key at all.
    await _erase(engine, "cust-now-mine")
    assert await _phone_keys(redis) == []
    assert (await _inbound(engine, {"phone": PHONE}))[0] == 404


async def test_a_changed_number_leaves_the_others_sharing_the_old_one(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    await _put(engine, "cust-house-1", {"phone": PHONE})
    await _put(engine, "cust-house-2", {"phone": PHONE})
    await _put(engine, "cust-house-1", {"phone": OTHER_PHONE})  # moved out
    assert await _members(redis, engine, PHONE) == {"cust-house-2"}
    assert (await _inbound(engine, {"phone": OTHER_PHONE}))[1]["customer_id"] == "cust-house-1"
    assert (await _inbound(engine, {"phone": PHONE}))[1]["customer_id"] == "cust-house-2"


async def test_an_index_entry_from_before_sets_is_replaced_when_the_number_changes(
    engine: EngineClient, redis: aioredis.Redis
) -> None:
    """The first cut kept one customer id per number as a plain string."""
    await _put(engine, "cust-legacy", {"phone": PHONE})
    (entry,) = await _phone_keys(redis)
    await redis.delete(entry)
    await redis.set(entry, "cust-legacy")
    status, body = await _put(engine, "cust-legacy", {"phone": OTHER_PHONE})
    assert status == 200, body
    assert await redis.exists(entry) == 0
    assert await _members(redis, engine, OTHER_PHONE) == {"cust-legacy"}


async def test_rotating_the_api_token_and_identity_secret_keeps_every_number_found(
    make_engine: Any, settings: Settings, store_target: StoreTarget
) -> None:
    first: EngineClient = await make_engine(settings)
    await _put(first, "cust-rotate", {"phone": PHONE})
    path = settings.data_dir / DEMO_CREDENTIALS_FILE
    creds = orjson.loads(path.read_bytes())
    creds["api_token"] = "rb_rotated_" + "t" * 32
    creds["identity_secret"] = "rotated_" + "s" * 32
    path.write_bytes(orjson.dumps(creds))
    reloaded = await asyncio.to_thread(
        load_settings, None, data_dir=settings.data_dir, overrides=store_target.overrides
    )
    rotated = replace(reloaded, rules_dir=None)
    assert {t.sha256 for t in rotated.api_tokens}.isdisjoint(t.sha256 for t in settings.api_tokens)
    second: EngineClient = await make_engine(rotated)
    status, ctx = await _inbound(second, {"phone": PHONE})
    assert (status, ctx["customer_id"]) == (200, "cust-rotate")


def test_the_generated_phone_key_is_private_and_the_same_for_every_worker(
    tmp_path: Path,
) -> None:
    """Workers starting together on a fresh data dir agree on one key, kept 0600."""
    data = tmp_path / "data"
    config = tmp_path / "ringback.toml"
    config.write_text("# no [privacy] phone key: generated\n")
    with ThreadPoolExecutor(8) as pool:
        loaded = list(pool.map(lambda _: load_settings(config, data_dir=data), range(8)))
    assert len({phone_hash_key(s) for s in loaded}) == 1
    key_file = data / PHONE_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in data.iterdir() if p.name.startswith(PHONE_KEY_FILE)] == [
        PHONE_KEY_FILE
    ]  # no leftovers of the race
    assert phone_hash_key(load_settings(config, data_dir=data)) == phone_hash_key(loaded[0])
    other = load_settings(config, data_dir=tmp_path / "other")
    assert phone_hash_key(other) != phone_hash_key(loaded[0])


def test_a_configured_phone_key_is_used_and_a_short_one_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ringback.toml"
    config.write_text('[privacy]\nphone_key_env = "RB_TEST_PHONE_KEY"\n')
    monkeypatch.setenv("RB_TEST_PHONE_KEY", "k" * 40)
    one = load_settings(config, data_dir=tmp_path / "one")
    two = load_settings(config, data_dir=tmp_path / "two")
    assert phone_hash_key(one) == phone_hash_key(two)  # hosts sharing a Valkey agree
    assert not (tmp_path / "one" / PHONE_KEY_FILE).exists()
    assert "k" * 40 not in repr(one)
    monkeypatch.setenv("RB_TEST_PHONE_KEY", "short")
    with pytest.raises(ConfigError, match=r"privacy\.phone_key"):
        load_settings(config, data_dir=tmp_path / "one")


async def test_ringback_import_indexes_phone_numbers_without_storing_them(
    make_engine: Any, settings: Settings, store_target: StoreTarget, redis: aioredis.Redis
) -> None:
    engine: EngineClient = await make_engine(settings)
    lines = settings.data_dir.parent / "crm.jsonl"
    lines.write_text(
        "".join(
            orjson.dumps(
                {"customer_id": f"imp{i}", "attributes": {"phone": f"+4416329601{i:02d}"}}
            ).decode()
            + "\n"
            for i in range(20)
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine",
        "import",
        str(lines),
        *store_target.cli_args,
        "--data-dir",
        str(settings.data_dir),  # the engine's: the same derived phone key
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert b"+4416329601" not in await _raw(redis, "rb:{c:imp7}:p")
    status, ctx = await _inbound(engine, {"phone": "+441632960107"})
    assert (status, ctx["customer_id"]) == (200, "imp7")
    assert len(await _phone_keys(redis)) == 20


async def test_calculations_stay_visible_in_the_context_without_a_quote_table(
    make_engine: Any, settings: Settings
) -> None:
    """A product the bank has no rate for is not quoted (and nothing breaks)."""
    engine: EngineClient = await make_engine(settings, quotes={})
    await engine.post_events(
        engine.batch(
            [event("page_view", page="/mortgages"), calc("mortgage", 250_000, 300)],
            identity=engine.token("cust-norate"),
        )
    )
    _, ctx = await engine.get_json("/v1/customers/cust-norate/context", headers=engine.api_headers)
    assert ctx["calculators"]["mortgage"]["amount"] == 250_000
    assert ctx["call_guide"]["quotes"] == []
