"""Arbitration uses the models: score = propensity x value x lever, and the rule's
priority only breaks ties. A propensity comes from the candidate's published model
(mature), its observed rate (immature: the prior) or, with no model, 1.0; every decision
says which, and its audit record holds the feature snapshot it was estimated from.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from conftest import EngineClient, event, write_pack

from engine.decisions.inputs import Capacity, DecisionInput
from engine.decisions.loader import RuleSet, load_rules
from engine.decisions.model import Decision
from engine.decisions.plan import audit_record, decide
from engine.http.state import MODELS, STORE
from engine.ingest.schema import PageViewEvent
from engine.models.registry import LoadedModel, Models, estimate, publish
from engine.models.snapshot import Snapshot

PACK = """
offers:
  - {id: cheap, title: Cheap, product: cards, value: 100, channels: [web]}
  - {id: dear, title: Dear, product: savings, value: 300, channels: [web]}
  - {id: plain, title: Plain, product: loans, value: 100, channels: [web]}
rules:
  - id: cheap_offer
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: cheap, slot: hero}
    priority: 50
  - id: dear_offer
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: dear, slot: hero}
  - id: plain_offer
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: plain, slot: side}
  - id: plain_twin
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: cheap, slot: side}
    priority: 1
"""
NOW = 1_795_000_000_000


def _rules(tmp_path: Path) -> RuleSet:
    return load_rules(write_pack(tmp_path, PACK))


def _input(tier: str = "standard") -> DecisionInput:
    profile: dict[str, Any] = {"counts": {"page_view": 3}, "calc": {}, "pages": []}
    events = [PageViewEvent(id="e1", ts=NOW, page="/cards")]
    return DecisionInput(
        "demo-bank", "anon-1", "cust-1", profile, {"value_tier": tier}, events, NOW
    )


def _snapshot(name: str, *, intercept: float, mature: bool = True, **weights: float) -> Snapshot:
    return Snapshot(
        name=name,
        version=7,
        created_ms=NOW,
        samples=5_000 if mature else 50,
        positives=900 if mature else 5,
        auc=0.8,
        log_loss=0.4,
        mature=mature,
        prior=0.1,
        intercept=intercept,
        weights=weights,
    )


def _models(*snapshots: Snapshot) -> Models:
    return {s.name: LoadedModel(s, s.compile()) for s in snapshots}


def _offers(rs: RuleSet, inp: DecisionInput, models: Models) -> dict[str, Decision]:
    plan = decide(rs, inp, NOW, Capacity(), b"k", lambda p: "cards", models=models)
    return {d.slot or "": d for d in plan.ranked if isinstance(d, Decision)}


def test_without_models_score_is_value_times_lever_and_says_no_model(tmp_path: Path) -> None:
    offers = _offers(_rules(tmp_path), _input(), {})
    hero = offers["hero"]
    assert hero.rule == "dear_offer"  # 300 beats 100 though cheap_offer has priority 50
    assert hero.factors == {"propensity": 1.0, "value": 300.0, "lever": 1.0, "score": 300.0}
    assert hero.model == {"name": "offer:dear", "version": None, "source": "none"}


def test_a_mature_model_s_propensity_decides_who_gets_the_slot(tmp_path: Path) -> None:
    # P(click cheap) ~0.88 for everyone, P(click dear) ~0.12: 0.88 x 100 > 0.12 x 300.
    models = _models(
        _snapshot("offer:cheap", intercept=2.0),
        _snapshot("offer:dear", intercept=-2.0),
    )
    hero = _offers(_rules(tmp_path), _input(), models)["hero"]
    assert hero.rule == "cheap_offer"
    assert hero.model == {"name": "offer:cheap", "version": 7, "source": "model"}
    assert abs(hero.factors["propensity"] - 0.8808) < 1e-4
    assert abs(hero.factors["score"] - hero.factors["propensity"] * 100) < 1e-9


def test_the_model_reads_the_features_of_this_customer(tmp_path: Path) -> None:
    """Who responds depends on the customer: VIPs take the dear offer."""
    models = _models(
        _snapshot("offer:cheap", intercept=0.0),
        _snapshot("offer:dear", intercept=-4.0, **{"value_tier=vip": 6.0}),
    )
    rs = _rules(tmp_path)
    assert _offers(rs, _input("standard"), models)["hero"].rule == "cheap_offer"
    assert _offers(rs, _input("vip"), models)["hero"].rule == "dear_offer"


def test_an_immature_model_falls_back_to_its_observed_rate_and_says_so(tmp_path: Path) -> None:
    # Trusted, the model's 0.99 x 300 would take the hero slot; its prior, 0.1 x 300 = 30,
    # loses to the cheap offer's 1.0 x 100.
    models = _models(_snapshot("offer:dear", intercept=5.0, mature=False))
    assert _offers(_rules(tmp_path), _input(), models)["hero"].rule == "cheap_offer"
    est = estimate(models, "offer:dear", {})
    assert (est.propensity, est.version, est.source) == (0.1, 7, "prior")


def test_priority_only_breaks_ties(tmp_path: Path) -> None:
    # plain_offer and plain_twin both score 100 for the side slot: priority 1 wins.
    side = _offers(_rules(tmp_path), _input(), {})["side"]
    assert side.rule == "plain_twin"


def test_the_audit_record_holds_the_features_and_the_model(tmp_path: Path) -> None:
    rs = _rules(tmp_path)
    plan = decide(rs, _input("vip"), NOW, Capacity(), b"k", lambda p: "cards")
    hero = next(d for d in plan.ranked if isinstance(d, Decision) and d.slot == "hero")
    record = audit_record(plan, hero, [])
    assert record["features"]["value_tier"] == "vip"
    assert record["features"]["count_page_view"] == 3.0
    assert record["model"] == {"name": "offer:dear", "version": None, "source": "none"}
    assert record["factors"]["score"] == 300.0


async def test_a_published_model_reaches_the_live_answer(
    make_engine: Any, settings: Any, tmp_path: Path, redis: aioredis.Redis
) -> None:
    """Publish a model to Valkey; the engine's registry loads it and the next batch's
    offer carries its version and propensity (no restart, no request learns)."""
    from dataclasses import replace

    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, PACK))
    )
    store = engine.extra["app"][STORE]
    await publish(store, _snapshot("offer:cheap", intercept=2.0))
    await publish(store, _snapshot("offer:dear", intercept=-2.0))
    registry = engine.extra["app"][MODELS]
    for _ in range(200):  # the registry polls every second; wait for it, not a fixed time
        if {"offer:cheap", "offer:dear"} <= set(registry.current):
            break
        await asyncio.sleep(0.05)
    status, body, _ = await engine.post_events(engine.batch([event("page_view", page="/cards")]))
    assert status == 200
    hero = next(d for d in body["decisions"] if d.get("slot") == "hero")
    assert hero["rule"] == "cheap_offer"
    assert hero["model"] == {"name": "offer:cheap", "version": 7, "source": "model"}
    assert 0.88 < hero["factors"]["propensity"] < 0.89
