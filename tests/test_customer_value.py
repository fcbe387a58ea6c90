"""Customer value: a documented 0..100 score from the CRM (products, tier, balance) and
engagement (sessions, dwell, intent, recency), read by rules as `customer.value`, weighed
in arbitration only when configured, and carried with attribution, segments and branch
on every trigger and audit record.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import EngineClient, calc, event, new_anon, write_pack

from engine.core.settings import Settings
from engine.decisions.inputs import Capacity, DecisionInput
from engine.decisions.loader import RuleSetError, load_rules
from engine.decisions.plan import decide
from engine.decisions.value import CustomerValue, ValueWeights, band, score
from engine.delivery.reports import dims_of
from engine.valkey import keys
from engine.valkey.streams import decode_fields

NOW = 1_795_000_000_000
DAY_MS = 86_400_000
ENGAGED = {
    "session": {"number": 3},
    "dwell_ms": 900_000,
    "intent": {"mortgage": 5.0, "cards": 1.0},
    "last_seen": NOW,
}
PRIVATE = {
    "products_held": ["current", "savings", "cards", "mortgage", "pension", "isa"],
    "value_tier": "private",
    "balance": 2_000_000,
}


# -- the score -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "customer", "expected"),
    [
        ({}, {}, 0.0),  # never seen, nothing known
        (ENGAGED, {}, 23.0),  # anonymous: 10 x (0.3 sessions + 0.5 dwell + 0.5 intent + 1 recency)
        ({**ENGAGED, "last_seen": NOW - 7 * DAY_MS}, {}, 18.0),  # a week away: recency halves
        (ENGAGED, {"value_tier": "vip"}, 35.0),  # + 20 x 0.6 tier
        (ENGAGED, {"products_held": ["a", "b", "c"], "value_tier": "vip", "balance": 50_000}, 62.7),
        (ENGAGED, PRIVATE, 83.0),  # products and balance capped at full
        (
            {"session": {"number": 50}, "dwell_ms": 10**9, "intent": {"x": 99.0}, "last_seen": NOW},
            PRIVATE,
            100.0,
        ),
        (ENGAGED, {"value_tier": "unheard_of", "balance": "lots", "products_held": "x"}, 23.0),
    ],
    ids=[
        "nothing",
        "anonymous",
        "away_a_week",
        "vip",
        "vip_with_products",
        "private",
        "everything_full",
        "junk_is_zero",
    ],
)
def test_the_score_follows_its_documented_formula(
    profile: dict[str, Any], customer: dict[str, Any], expected: float
) -> None:
    assert score(CustomerValue(), profile, customer, NOW) == expected


def test_weights_change_what_counts() -> None:
    engagement_only = CustomerValue(weights=ValueWeights(products=0, tier=0, balance=0))
    assert score(engagement_only, ENGAGED, {}, NOW) == 57.5  # (0.3 + 0.5 + 0.5 + 1) / 4
    assert score(engagement_only, ENGAGED, PRIVATE, NOW) == 57.5  # the CRM no longer counts


def test_an_anonymous_visitor_never_reaches_high() -> None:
    most = {"session": {"number": 99}, "dwell_ms": 10**9, "intent": {"x": 1e6}, "last_seen": NOW}
    assert score(CustomerValue(), most, {}, NOW) == 40.0
    assert band(40.0) == "mid"


# -- configuring it ------------------------------------------------------------------------


def _load(tmp_path: Path, *files: str) -> Any:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    for i, text in enumerate(files):
        (d / f"f{i}.yaml").write_text(text)
    return load_rules(d)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (("customer_value: {weights: {products: 1, loyalty: 2}}\n",), "unknown key 'loyalty'"),
        (("customer_value: {colour: red}\n",), "unknown key 'colour'"),
        (("customer_value: {weights: {products: -1}}\n",), "products"),
        (
            (
                "customer_value: {weights: {products: 0, tier: 0, balance: 0, sessions: 0, "
                "dwell: 0, intent: 0, recency: 0}}\n",
            ),
            "at least one must be above 0",
        ),
        (("customer_value: {}\n", "customer_value: {}\n"), "already set in another file"),
        (("arbitration: {customer_value_weight: -1}\n",), "customer_value_weight"),
    ],
    ids=["unknown_weight", "unknown_key", "negative", "all_zero", "two_files", "bad_weight"],
)
def test_bad_value_settings_are_refused(
    tmp_path: Path, files: tuple[str, ...], message: str
) -> None:
    with pytest.raises(RuleSetError) as info:
        _load(tmp_path, *files)
    assert message in str(info.value), str(info.value)


def test_a_rules_file_sets_the_weights(tmp_path: Path) -> None:
    rs = _load(tmp_path, "customer_value:\n  weights: {products: 0, tier: 0, balance: 0}\n")
    assert score(rs.value, ENGAGED, PRIVATE, NOW) == 57.5


# -- arbitration ---------------------------------------------------------------------------

ARBITRATION = """
offers:
  - {id: mass, title: Cashback card, product: cards, value: 500}
  - {id: premium, title: Private banking, product: private, value: 300}
rules:
  - id: mass_offer
    when: 'true'
    action: {type: offer, offer: mass, slot: hero}
    MASS
  - id: premium_offer
    when: 'true'
    action: {type: offer, offer: premium, slot: hero}
    PREMIUM
"""


def _winner(tmp_path: Path, name: str, text: str) -> tuple[str, dict[str, float]]:
    d = tmp_path / name
    d.mkdir()
    (d / "p.yaml").write_text(text)
    inp = DecisionInput("demo-bank", "a1", "c1", ENGAGED, PRIVATE, [], NOW)
    plan = decide(load_rules(d), inp, NOW, Capacity(), b"k", lambda p: "other")
    (offer,) = plan.ranked
    return offer.rule, offer.factors


def test_the_value_weight_changes_a_ranking_only_when_set(tmp_path: Path) -> None:
    def pack(mass: str = "", premium: str = "", arbitration: str = "") -> str:
        return ARBITRATION.replace("MASS", mass).replace("PREMIUM", premium) + arbitration

    # Off (the default): value 500 beats 300, and the factors are what they always were.
    rule, factors = _winner(tmp_path, "off", pack())
    assert rule == "mass_offer" and set(factors) == {"propensity", "value", "lever", "score"}
    # One weight for every rule scales both alike: same winner, higher score.
    rule, factors = _winner(
        tmp_path, "all", pack(arbitration="arbitration: {customer_value_weight: 2}\n")
    )
    assert rule == "mass_offer"
    assert factors["customer_value_boost"] == pytest.approx(1 + 2 * 0.83)
    assert factors["score"] == pytest.approx(500 * (1 + 2 * 0.83))
    # The premium offer weighs the customer's value (83): 300 x 2.66 > 500.
    rule, _ = _winner(tmp_path, "premium", pack(premium="customer_value_weight: 2"))
    assert rule == "premium_offer"
    # The set's default, with the mass offer opting out: the same.
    rule, _ = _winner(
        tmp_path,
        "opt_out",
        pack(
            mass="customer_value_weight: 0", arbitration="arbitration: {customer_value_weight: 2}\n"
        ),
    )
    assert rule == "premium_offer"


# -- through the engine --------------------------------------------------------------------

PACK = """
calendars:
  - name: open
    timezone: Europe/London
    hours: {mon: "00:00-24:00", tue: "00:00-24:00", wed: "00:00-24:00", thu: "00:00-24:00",
            fri: "00:00-24:00", sat: "00:00-24:00", sun: "00:00-24:00"}
offers:
  - {id: adviser, title: Adviser, product: mortgage, value: 900, channels: [web, callback]}
  - {id: private, title: Private banking, product: private, value: 100, channels: [web]}
segments:
  - id: calculator_users
    when: profile.calc.mortgage.count >= 1
rules:
  - id: call_me
    when: profile.calc.mortgage.count >= 2
    action: {type: callback, offer: adviser, channel: callback}
    policy: {cooldown_s: 3600, calendar: open}
  - id: private_banking
    when: customer.value >= 67
    action: {type: offer, offer: private, slot: side}
  - id: adviser_offer
    when: profile.calc.mortgage.count >= 1
    action: {type: offer, offer: adviser, slot: hero}
"""


async def _engine(make_engine: Any, settings: Settings, rules: Path) -> EngineClient:
    return await make_engine(replace(settings, rules_dir=rules))  # type: ignore[no-any-return]


async def _set_attrs(engine: EngineClient, customer: str, **attrs: Any) -> None:
    async with engine.session.put(
        f"{engine.url}/v1/profiles/{customer}/attributes", json=attrs, headers=engine.api_headers
    ) as r:
        assert r.status == 200, await r.text()


def _landing(**props: str) -> dict[str, Any]:
    return event("page_view", page="/mortgages", ts=int(time.time() * 1000) - 5000, props=props)


async def test_a_rule_reads_customer_value(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, write_pack(tmp_path, PACK))
    await _set_attrs(engine, "c-rich", **PRIVATE)
    await _set_attrs(engine, "c-new", value_tier="standard")
    rules = {}
    for customer in ("c-rich", "c-new"):
        _, answer, _ = await engine.post_events(
            engine.batch([_landing()], identity=engine.token(customer))
        )
        rules[customer] = [d["rule"] for d in answer["decisions"]]
    assert rules == {"c-rich": ["private_banking"], "c-new": []}


async def test_trigger_and_audit_carry_attribution_segments_branch_and_value(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine = await _engine(make_engine, settings, write_pack(tmp_path, PACK))
    await _set_attrs(engine, "c-camp", consent_call=True, branch="b12", value_tier="vip")
    token = engine.token("c-camp")
    first = _landing(
        utm_source="newsletter",
        utm_medium="email",
        utm_campaign="autumn_rates",
        referrer="https://mail.example.com/inbox?q=secret",
    )
    await engine.post_events(engine.batch([first], identity=token))
    landing = _landing(
        utm_source="google",
        utm_medium="cpc",
        utm_campaign="Spring Mortgage",
        referrer="https://www.google.com/search?q=mortgage+rates",
    )
    _, answer, _ = await engine.post_events(engine.batch([landing, calc(), calc()], identity=token))
    (call,) = [d for d in answer["decisions"] if d["action"] == "callback"]

    stream = keys.trigger_stream(keys.trigger_shard(keys.customer_prefix("c-camp")))
    ((_, fields),) = await redis.xrange(stream)
    trigger = decode_fields(fields)
    assert trigger["attribution"] == {
        "campaign": "Spring Mortgage",
        "source": "google",
        "medium": "cpc",
        "referrer": "www.google.com",  # the host only: the query carried search terms
        "first_campaign": "autumn_rates",
        "first_source": "newsletter",
        "first_medium": "email",
        "first_referrer": "mail.example.com",
    }
    assert trigger["segments"] == ["calculator_users"]
    assert trigger["branch"] == "b12"
    value = float(trigger["customer_value"])
    assert 12 <= value < 67  # vip tier counts; no products or balance

    status, audit = await engine.get_json(f"/v1/decisions/{call['id']}", headers=engine.api_headers)
    assert status == 200, audit
    assert audit["attribution"] == trigger["attribution"]
    assert (audit["segments"], audit["branch"], audit["customer_value"]) == (
        ["calculator_users"],
        "b12",
        value,
    )
    assert list(dims_of(audit)) == [
        ("campaign", "spring_mortgage"),
        ("segment", "calculator_users"),
        ("branch", "b12"),
        ("value", "mid" if value >= 34 else "low"),
    ]
    # The batch's decisions (the callback, the adviser offer) were counted under their
    # dimensions (engine/delivery/uplift.py).
    day = dt.datetime.now(dt.UTC).date().isoformat()
    key = keys.uplift_dim_counts("campaign", "spring_mortgage", day, "t")
    assert await redis.pfcount(key) == 2


async def test_an_anonymous_visitor_has_a_value_and_no_branch(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine = await _engine(make_engine, settings, write_pack(tmp_path, PACK))
    _, answer, _ = await engine.post_events(engine.batch([calc()], anonymous_id=new_anon()))
    (offer,) = answer["decisions"]  # the adviser offer: no callback for a stranger
    status, audit = await engine.get_json(
        f"/v1/decisions/{offer['id']}", headers=engine.api_headers
    )
    assert status == 200, audit
    assert audit["branch"] == "" and audit["attribution"] == {}
    assert 0 < audit["customer_value"] <= 40  # engagement only
    assert ("campaign", "(direct)") in dims_of(audit) and ("branch", "(none)") in dims_of(audit)
