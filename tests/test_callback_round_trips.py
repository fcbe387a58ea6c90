"""A callback's reservation rides along with the profile update (issue 12, item 1).

The profile function takes the contact reservation in the same call when a contact
rule's pre-check holds, so the callback waits for two Valkey round trips (profile +
reservation, then the trigger with its records) instead of three. What a customer, an
agent and ops would notice: still exactly one call, no cooldown left behind by a
call that was not made, and `ringback_callback_round_trips` saying how many it took.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from conftest import EngineClient, calc, event, write_pack

from engine.core.settings import Settings
from engine.decisions.loader import load_rules
from engine.decisions.precheck import Candidates
from engine.valkey import keys

ALWAYS = (
    '{mon: "00:00-24:00", tue: "00:00-24:00", wed: "00:00-24:00", '
    'thu: "00:00-24:00", fri: "00:00-24:00", sat: "00:00-24:00", sun: "00:00-24:00"}'
)


def _pack(*rules: str) -> str:
    return f"""
calendars:
  - name: open
    timezone: Europe/London
    hours: {ALWAYS}
offers:
  - {{id: adviser, title: Adviser, product: mortgage, value: 900, channels: [callback]}}
  - {{id: saver, title: Saver, product: savings, value: 800, channels: [callback]}}
levers: {{mortgage: 1.0, savings: 2.0}}
rules:
""" + "".join(rules)


MORTGAGE_CALL = """
  - id: mortgage_call
    when: >
      profile.calc.mortgage.count >= 3
      and "mortgage" not in default(customer.products_held, [])
    action: {type: callback, offer: adviser, channel: callback}
    value: 900
    priority: 10
    policy: {cooldown_s: 3600, channel_cooldown_s: 600, max_per_day: 2, calendar: open}
"""
# No term rb_ingest can read (`or`): always reserves with a call of its own.
SAVINGS_CALL = """
  - id: savings_call
    when: profile.calc.mortgage.count >= 3 or profile.intent.savings > 100
    action: {type: callback, offer: saver, channel: callback}
    value: 800
    priority: 5
    policy: {cooldown_s: 3600, channel_cooldown_s: 600, calendar: open}
"""


async def _engine(make_engine: Any, settings: Settings, tmp_path: Path, pack: str) -> EngineClient:
    rules = write_pack(tmp_path, pack)
    return await make_engine(replace(settings, rules_dir=rules))  # type: ignore[no-any-return]


async def _attrs(engine: EngineClient, customer: str, **attrs: Any) -> None:
    url = f"{engine.url}/v1/profiles/{customer}/attributes"
    async with engine.session.put(url, json=attrs, headers=engine.api_headers) as r:
        assert r.status == 200, await r.text()


async def _calls(engine: EngineClient, customer: str) -> list[dict[str, Any]]:
    """Three mortgage calculations by `customer` on their usual browser: the callbacks
    in the answer. (A browser's first signed-in batch also merges its anonymous
    history, three round trips more: `_signed_in` does that first.)"""
    batch = [calc("mortgage", 250_000 + i * 10_000, 300) for i in range(3)]
    status, body, _ = await engine.post_events(
        engine.batch(batch, anonymous_id=f"browser-{customer}", identity=engine.token(customer))
    )
    assert status == 200, body
    return [d for d in body["decisions"] if d["action"] == "callback"]


async def _signed_in(engine: EngineClient, customer: str) -> None:
    body = engine.batch(
        [event("page_view", page="/")],
        anonymous_id=f"browser-{customer}",
        identity=engine.token(customer),
    )
    status, answer, _ = await engine.post_events(body)
    assert status == 200, answer


def _round_trips(engine: EngineClient) -> tuple[float, float]:
    """(callbacks observed, round trips summed) of `ringback_callback_round_trips`."""
    assert engine.metrics is not None
    value = engine.metrics.registry.get_sample_value
    count = value("ringback_callback_round_trips_count") or 0.0
    return count, value("ringback_callback_round_trips_sum") or 0.0


async def _policy(redis: aioredis.Redis, customer: str) -> dict[str, str]:
    pol = keys.profile_keys(keys.customer_prefix(customer))[5]
    return await redis.hgetall(pol)  # type: ignore[no-any-return]


async def test_a_callback_is_reserved_by_the_profile_update_and_takes_two_round_trips(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, tmp_path, _pack(MORTGAGE_CALL))
    await _attrs(engine, "c-fast", consent_call=True)
    await _signed_in(engine, "c-fast")

    calls = await _calls(engine, "c-fast")
    assert [c["rule"] for c in calls] == ["mortgage_call"]
    assert _round_trips(engine) == (1.0, 2.0)
    # The policy was taken (cooldowns, the day's count) and the history written, as a
    # separate reservation would have.
    policy = await _policy(redis, "c-fast")
    assert "r:mortgage_call" in policy and "c:callback" in policy
    assert [v for k, v in policy.items() if k.startswith("d:callback:")] == ["1"]
    history = (await engine.profile("c-fast"))["contact_history"]
    assert [(h["rule"], h["decision_id"]) for h in history if h["kind"] == "decision"] == [
        ("mortgage_call", calls[0]["id"])
    ]
    # ... and it holds: the next batch inside the cooldown gets no second call.
    assert await _calls(engine, "c-fast") == []
    assert _round_trips(engine) == (1.0, 2.0)


async def test_a_reservation_the_decision_does_not_use_is_given_back(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    """The pre-check (three calculations, consent) holds, but the customer already has
    a mortgage, which only the decision can see: no call, and no cooldown left behind
    that would block the call once the rule does match."""
    engine = await _engine(make_engine, settings, tmp_path, _pack(MORTGAGE_CALL))
    await _attrs(engine, "c-holds", consent_call=True, products_held=["mortgage"])
    await _signed_in(engine, "c-holds")

    assert await _calls(engine, "c-holds") == []
    policy = await _policy(redis, "c-holds")
    assert "r:mortgage_call" not in policy and "c:callback" not in policy
    assert all(v == "0" for k, v in policy.items() if k.startswith("d:"))

    await _attrs(engine, "c-holds", consent_call=True, products_held=[])
    assert [c["rule"] for c in await _calls(engine, "c-holds")] == ["mortgage_call"]


async def test_when_another_contact_wins_the_reservation_moves_to_it(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    """mortgage_call has a pre-check and is reserved with the profile; savings_call has
    none but ranks higher (value 800 x lever 2.0 against 900 x 1.0). The one call made
    is savings_call's, and mortgage_call is left free, not on a phantom cooldown."""
    engine = await _engine(make_engine, settings, tmp_path, _pack(MORTGAGE_CALL, SAVINGS_CALL))
    await _attrs(engine, "c-two", consent_call=True)
    await _signed_in(engine, "c-two")

    calls = await _calls(engine, "c-two")
    assert [c["rule"] for c in calls] == ["savings_call"]
    policy = await _policy(redis, "c-two")
    assert "r:savings_call" in policy and "r:mortgage_call" not in policy
    # Profile + reservation, the release, savings_call's own reservation, then the trigger.
    assert _round_trips(engine) == (1.0, 4.0)


async def test_a_rule_whose_condition_cannot_be_prechecked_reserves_on_its_own(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, tmp_path, _pack(SAVINGS_CALL))
    await _attrs(engine, "c-slow", consent_call=True)
    await _signed_in(engine, "c-slow")
    assert [c["rule"] for c in await _calls(engine, "c-slow")] == ["savings_call"]
    assert _round_trips(engine) == (1.0, 3.0)


async def test_without_consent_nothing_is_reserved_and_the_fallback_is_decided_as_before(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(
        make_engine,
        settings,
        tmp_path,
        _pack(MORTGAGE_CALL.replace("channel: callback}", "channel: callback, fallback: email}")),
    )
    await _attrs(engine, "c-mail", consent_call=False)
    await _signed_in(engine, "c-mail")
    calls = await _calls(engine, "c-mail")
    assert [(c["rule"], c["channel"]) for c in calls] == [("mortgage_call", "email")]
    policy = await _policy(redis, "c-mail")
    assert "c:email" in policy and "c:callback" not in policy


def test_pre_checks_come_from_the_terms_a_profile_stores(tmp_path: Path) -> None:
    rules = load_rules(write_pack(tmp_path, _pack(MORTGAGE_CALL, SAVINGS_CALL)))
    cands = Candidates(rules)
    out = cands.for_batch("c-1", 1_795_000_000_000, _measured_idle())
    assert [(c["rule"], c["pre"], c["consent"]) for c in out] == [
        ("mortgage_call", (("c:mortgage:n", ">=", 3.0),), True)
    ]
    assert cands.for_batch(None, 1_795_000_000_000, _measured_idle()) == []


def _measured_idle() -> Any:
    from engine.decisions.inputs import Capacity

    return Capacity(agents_online=1, queue=0, measured=True)
