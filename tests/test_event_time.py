"""Event time you can trust: a batch's `sent_at` corrects a client clock that is off.

A browser whose clock runs ahead stamps a calculator use "in the future", so a rule
asking `within(profile.calc.mortgage.ts, 60, now)` never held for it. With `sent_at`
(its clock at send time) the engine shifts every event by the offset to its own
receive time, keeps the raw stamp, range-checks and decides on the corrected time,
live and in replay alike. Without `sent_at` nothing changes.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from browser import chromium
from conftest import EngineClient, LiveEngine, calc, event, now_ms, write_pack

from engine.cli.rules import batch_time_ms, replay_traced
from engine.core.settings import Settings, load_settings
from engine.ingest.parse import MAX_CLOCK_OFFSET_S, parse_batch
from engine.profile import layout
from engine.valkey import keys

SECOND_MS = 1000
HOUR_MS = 3600 * SECOND_MS

# One rule that holds only for a calculator used within the last minute, by the
# engine's clock: a calc stamped in the future (a clock ahead) fails `within`.
PACK = """
offers:
  - {id: calc_help, title: Help with your mortgage, product: mortgage, value: 100,
     channels: [web]}
rules:
  - id: just_used_the_calculator
    when: known(profile.calc.mortgage.ts) and within(profile.calc.mortgage.ts, 60, now)
    action: {type: offer, offer: calc_help, slot: hero}
"""
RULE = "just_used_the_calculator"


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    return write_pack(tmp_path, PACK)


async def _engine(make_engine: Any, settings: Settings, rules: Path) -> EngineClient:
    return await make_engine(replace(settings, rules_dir=rules))  # type: ignore[no-any-return]


def _fired(decisions: list[dict[str, Any]]) -> list[str]:
    return [d["rule"] for d in decisions if "rule" in d]


def _skewed_batch(engine: EngineClient, skew_ms: int, *, sent_at: bool = True) -> dict[str, Any]:
    """A calculator use just now, by a client clock `skew_ms` ahead of the server's."""
    client_now = now_ms() + skew_ms
    body = engine.batch([calc(ts=client_now - 5)])
    if sent_at:
        body["sent_at"] = client_now
    return body


# -- (a) a clock ahead, with sent_at: accepted, decided on corrected times --------------


@pytest.mark.parametrize("skew_ms", [5 * SECOND_MS, 2 * HOUR_MS], ids=["5s", "2h"])
async def test_a_clock_ahead_with_sent_at_decides_on_corrected_times(
    make_engine: Any, settings: Settings, pack: Path, skew_ms: int
) -> None:
    engine = await _engine(make_engine, settings, pack)
    status, resp, _ = await engine.post_events(_skewed_batch(engine, skew_ms))
    assert status == 200, resp
    assert resp["accepted"] == 1
    assert _fired(resp["decisions"]) == [RULE]


async def test_a_clock_ahead_without_sent_at_misses_the_window_as_before(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    status, resp, _ = await engine.post_events(_skewed_batch(engine, 5 * SECOND_MS, sent_at=False))
    assert status == 200, resp
    assert _fired(resp["decisions"]) == []  # stamped 5 s ahead: not "within" yet


async def test_the_profile_keeps_corrected_times(
    make_engine: Any, settings: Settings, redis: Any
) -> None:
    engine = await make_engine(settings)
    before = now_ms()
    body = _skewed_batch(engine, 2 * HOUR_MS)
    status, resp, _ = await engine.post_events(body)
    after = now_ms()
    assert status == 200, resp
    raw = await redis.get(keys.anonymous_prefix("demo-bank", body["anonymous_id"]) + ":p")
    profile = json.loads(raw)
    # The server clock's time of the calculator use, not the client's 2 h ahead.
    assert before - 5 <= profile[layout.calc("mortgage", layout.CALC_TS)] <= after
    assert before - 5 <= profile[layout.LAST_TS] <= after


def test_parsing_shifts_each_event_by_the_offset_and_keeps_the_raw_stamp() -> None:
    receive_ms = 1_780_000_000_000
    sent_at = receive_ms + 2 * HOUR_MS + 250  # the client clock 2 h (and latency) ahead
    body = orjson.dumps(
        {
            "site": "demo-bank",
            "anonymous_id": "anon12345678",
            "sent_at": sent_at,
            "events": [
                event("page_view", ts=sent_at - 3000, page="/"),
                calc(ts=sent_at - 10, ts_raw=1),  # a client's ts_raw is not believed
            ],
        }
    )
    batch = parse_batch(body, receive_ms, max_age_s=86_400, max_future_s=300)
    assert [(e.ts, e.ts_raw) for e in batch.events] == [
        (receive_ms - 3000, sent_at - 3000),
        (receive_ms - 10, sent_at - 10),
    ]


# -- (b) without sent_at: unchanged --------------------------------------------------------


def test_without_sent_at_times_are_the_clients_and_no_raw_is_kept() -> None:
    receive_ms = 1_780_000_000_000
    body = orjson.dumps(
        {
            "site": "demo-bank",
            "anonymous_id": "anon12345678",
            "events": [event("page_view", ts=receive_ms + 200, ts_raw=7)],
        }
    )
    batch = parse_batch(body, receive_ms, max_age_s=86_400, max_future_s=300)
    assert [(e.ts, e.ts_raw) for e in batch.events] == [(receive_ms + 200, None)]


async def test_without_sent_at_a_future_timestamp_is_still_refused(engine: EngineClient) -> None:
    future_ms = now_ms() + (engine.settings.limits.max_event_future_s + 60) * SECOND_MS
    status, resp, _ = await engine.post_events(engine.batch([event("page_view", ts=future_ms)]))
    assert status == 400
    assert (resp["error"]["code"], resp["error"]["path"]) == (
        "timestamp_out_of_range",
        "$.events[0].ts",
    )


async def test_corrected_times_still_face_the_age_and_future_limits(engine: EngineClient) -> None:
    # The client's own clock says the event came an hour after it sent the batch.
    client_now = now_ms() + 2 * HOUR_MS
    body = engine.batch([event("page_view", ts=client_now + HOUR_MS)], sent_at=client_now)
    status, resp, _ = await engine.post_events(body)
    assert status == 400
    assert (resp["error"]["code"], resp["error"]["path"]) == (
        "timestamp_out_of_range",
        "$.events[0].ts",
    )
    assert "sent_at" in resp["error"]["message"]


# -- (c) a bad sent_at is refused at its path ---------------------------------------------


@pytest.mark.parametrize(
    ("sent_at", "code"),
    [
        ("now", "invalid_event"),
        (True, "invalid_event"),
        (-1, "invalid_event"),
        (1.5e15, "invalid_event"),
        # Seconds, not ms: ~55 years "behind", no clock error but a unit mistake.
        (int(time.time()), "sent_at_out_of_range"),
        ("year_ahead", "sent_at_out_of_range"),
    ],
    ids=["text", "bool", "negative", "microseconds", "seconds", "over_a_year_ahead"],
)
async def test_a_bad_sent_at_is_refused_at_its_path(
    engine: EngineClient, redis: Any, sent_at: Any, code: str
) -> None:
    if sent_at == "year_ahead":
        sent_at = now_ms() + (MAX_CLOCK_OFFSET_S + 60) * SECOND_MS
    body = engine.batch([event("page_view")], sent_at=sent_at)
    status, resp, _ = await engine.post_events(body)
    assert status == 400, resp
    assert (resp["error"]["code"], resp["error"]["path"]) == (code, "$.sent_at")
    assert not await redis.exists(keys.anonymous_prefix("demo-bank", body["anonymous_id"]) + ":p")


def test_a_clock_off_by_less_than_the_limit_is_corrected() -> None:
    receive_ms = 1_780_000_000_000
    sent_at = receive_ms - (MAX_CLOCK_OFFSET_S - 60) * SECOND_MS  # a mistyped year, behind
    body = orjson.dumps(
        {
            "site": "demo-bank",
            "anonymous_id": "anon12345678",
            "sent_at": sent_at,
            "events": [event("page_view", ts=sent_at)],
        }
    )
    batch = parse_batch(body, receive_ms, max_age_s=86_400, max_future_s=300)
    assert batch.events[0].ts == receive_ms


# -- (d) replay decides on the same corrected times ---------------------------------------


async def test_replay_of_a_recorded_sent_at_decides_as_live(
    make_engine: Any, settings: Settings, pack: Path
) -> None:
    engine = await _engine(make_engine, settings, pack)
    recorded = []
    live = []
    for skew_ms in (5 * SECOND_MS, 2 * HOUR_MS):
        body = _skewed_batch(engine, skew_ms)
        status, resp, _ = await engine.post_events(body)
        assert status == 200, resp
        live.append(_fired(resp["decisions"]))
        recorded.append(orjson.dumps({**body, "received_at": now_ms()}))
    assert live == [[RULE], [RULE]]

    replayed = await replay_traced(pack, recorded, settings)
    assert [(r.status, _fired(r.decisions)) for r in replayed] == [(200, [RULE]), (200, [RULE])]


async def test_replay_of_a_recording_a_month_old_corrects_by_its_received_at(
    pack: Path, tmp_path: Path
) -> None:
    received_at = now_ms() - 30 * 24 * HOUR_MS
    sent_at = received_at + 2 * HOUR_MS  # that day's client clock, 2 h ahead
    body = {
        "site": "demo-bank",
        "anonymous_id": "anon-month-old",
        "events": [calc(ts=sent_at - 5)],
        "sent_at": sent_at,
    }
    lines = [orjson.dumps({**body, "received_at": received_at})]
    replay_settings = load_settings(None, data_dir=tmp_path / "replay")
    (r,) = await replay_traced(pack, lines, replay_settings)
    assert (r.status, r.now_ms, _fired(r.decisions)) == (200, received_at, [RULE])


def test_a_recording_without_received_at_is_replayed_at_its_sent_at() -> None:
    body = {"sent_at": 1_780_000_000_000, "events": [{"ts": 1_780_000_000_500}]}
    assert batch_time_ms(body) == 1_780_000_000_000
    assert batch_time_ms({**body, "received_at": 1_770_000_000_000}) == 1_770_000_000_000
    assert batch_time_ms({"events": [{"ts": 5}, {"ts": 9}]}) == 9


# -- (e) the snippet sends sent_at --------------------------------------------------------


async def test_a_browser_clock_two_hours_ahead_still_sends_and_is_corrected(
    live_engine: LiveEngine,
) -> None:
    async with chromium() as browser:
        context = await browser.new_context()
        # This browser's clock runs two hours fast; its timers are untouched.
        await context.add_init_script(
            "{const n = Date.now; Date.now = () => n.call(Date) + 7200000;}"
        )
        page = await context.new_page()
        bodies: list[str] = []
        page.on(
            "request",
            lambda r: (
                bodies.append(r.post_data or "")
                if r.url.startswith(live_engine.url + "/v1/events")
                else None
            ),
        )
        before = now_ms()
        await page.goto(f"{live_engine.url}/demo/mortgages")
        await page.wait_for_function("localStorage.getItem('rb_aid')")
        anon = await page.evaluate("localStorage.getItem('rb_aid')")
        key = keys.anonymous_prefix("demo-bank", anon) + ":p"
        deadline = time.monotonic() + 10  # a hang guard, not a timing assertion
        while not await live_engine.redis.exists(key):
            assert time.monotonic() < deadline, f"the page view never arrived: {bodies}"
            await page.wait_for_timeout(100)
        after = now_ms()
        profile = json.loads(await live_engine.redis.get(key) or "{}")
        sent = json.loads(bodies[0])
        assert sent["sent_at"] >= sent["events"][0]["ts"] >= before + 2 * HOUR_MS
        # Arrived (no 2 h future refusal) and dated by the engine's clock.
        assert before <= profile[layout.FIRST_TS] <= after
