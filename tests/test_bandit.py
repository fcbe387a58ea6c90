"""The offer bandit: web slots go to the highest sampled expected value (contextual
Thompson sampling over the learner's logistic models, a Laplace approximation of their
posterior), so offers whose worth is uncertain get shown and learnt, and each segment
ends up with its own best offer. Draws are deterministic (same inputs, same choice: a
replay decides the same), `factors.propensity` stays the posterior mean and the draw
goes in `factors.sampled`; contacts are never explored.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from conftest import EngineClient, event, write_pack
from prometheus_client.parser import text_string_to_metric_families

from engine.decisions.inputs import Capacity, DecisionInput
from engine.decisions.loader import RuleSet, load_rules
from engine.decisions.model import Decision
from engine.decisions.plan import OFFER_DECISION_WINDOW_MS, Plan, decide, exploration_draw
from engine.http.state import MODELS, STORE
from engine.ingest.schema import Event, PageViewEvent
from engine.learning.model import PropensityModel
from engine.models.registry import LoadedModel, Models, beta_sample, estimate, publish
from engine.models.snapshot import Snapshot, decode, encode

NOW = 1_795_000_000_000
Features = dict[str, float | str]
KEY = b"offer-key"

PACK = """
offers:
  - {id: travel, title: Travel card, product: cards, value: 100, channels: [web]}
  - {id: saver, title: Saver, product: savings, value: 100, channels: [web]}
rules:
  - id: travel_offer
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: travel, slot: hero}
  - id: saver_offer
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: saver, slot: hero}
  - id: mail_me
    when: profile.counts.page_view >= 1
    action: {type: notify, channel: email}
"""

# Hidden click probabilities: VIPs take the travel card, the others the saver. Over
# everyone the two are close (0.19 vs 0.175), so a bandit blind to the segment can do
# little better than chance.
TRUTH = {
    ("vip", "travel_offer"): 0.30,
    ("vip", "saver_offer"): 0.10,
    ("standard", "travel_offer"): 0.08,
    ("standard", "saver_offer"): 0.25,
}
BEST = {"vip": "travel_offer", "standard": "saver_offer"}
OFFER_RULES = ("travel_offer", "saver_offer")


def _rules(tmp_path: Path) -> RuleSet:
    return load_rules(write_pack(tmp_path, PACK))


def _input(i: int, tier: str, now_ms: int) -> DecisionInput:
    profile: dict[str, Any] = {"counts": {"page_view": 3}, "calc": {}, "pages": []}
    events: list[Event] = [PageViewEvent(id=f"e{i}", ts=now_ms, page="/cards")]
    return DecisionInput(
        "demo-bank", f"anon-{i}", f"cust-{i}", profile, {"value_tier": tier}, events, now_ms
    )


def _decide(rs: RuleSet, inp: DecisionInput, now_ms: int, models: Models) -> Plan:
    return decide(rs, inp, now_ms, Capacity(), KEY, lambda p: "cards", models=models)


def _hero(plan: Plan) -> Decision:
    return next(d for d in plan.ranked if isinstance(d, Decision) and d.slot == "hero")


def _snapshot(**kw: Any) -> Snapshot:
    fields: dict[str, Any] = {
        "name": "offer:travel",
        "version": 1,
        "created_ms": NOW,
        "samples": 5_000,
        "positives": 900,
        "auc": 0.7,
        "log_loss": 0.4,
        "mature": True,
        "prior": 0.18,
        "intercept": -1.0,
        "scale": {"amount": (100.0, 50.0)},
        "crosses": [("tier", "amount")],
        "weights": {"amount": 0.5, "tier=vip": 1.0, "tier=vip&amount": 0.25},
    }
    fields.update(kw)
    return Snapshot(**fields)


def _models(*snapshots: Snapshot) -> Models:
    return {s.name: LoadedModel(s, s.compile()) for s in snapshots}


# -- (a) the scorer's sample -------------------------------------------------------------


def test_sample_at_z_zero_is_predict_and_an_unseen_value_samples_wider() -> None:
    snap = _snapshot(
        variances={"amount": 0.01, "tier=vip": 0.02, "tier=vip&amount": 0.01},
        intercept_variance=0.01,
    )
    scorer = snap.compile()
    seen: Features = {"tier": "vip", "amount": 180.0}
    unseen: Features = {"tier": "gold", "amount": 180.0}  # tier=gold: never seen
    empty: Features = {}
    numeric: Features = {"amount": 20.0}
    for f in (seen, unseen, empty, numeric):
        assert scorer.sample(f, 0.0) == scorer.predict(f)
    spread_seen = scorer.sample(seen, 1.0) - scorer.sample(seen, -1.0)
    spread_unseen = scorer.sample(unseen, 1.0) - scorer.sample(unseen, -1.0)
    assert 0.0 < spread_seen < spread_unseen
    assert scorer.sample(seen, 1.0) > scorer.predict(seen) > scorer.sample(seen, -1.0)
    assert scorer.mean_and_sample(seen, 1.0) == (scorer.predict(seen), scorer.sample(seen, 1.0))
    assert decode(encode(snap)) == snap


def test_a_snapshot_without_variances_samples_its_mean() -> None:
    """Published before exploration existed: decodes, and explores nothing."""
    old = _snapshot()
    raw = encode(old).replace(b',"variances":{},"intercept_variance":null', b"")
    assert b"variances" not in raw
    assert decode(raw) == old
    scorer = old.compile()
    f: Features = {"tier": "vip", "amount": 180.0}
    assert scorer.sample(f, 2.5) == scorer.predict(f)


# -- (b) the learner's precision ---------------------------------------------------------


def _learn(n: int, seed: int = 3) -> PropensityModel:
    rnd = random.Random(seed)
    m = PropensityModel("offer:travel", crosses=[("tier", "amount")])
    for _ in range(n):
        vip = rnd.random() < 0.5
        x: dict[str, float | str] = {"tier": "vip" if vip else "std", "amount": rnd.uniform(0, 200)}
        m.learn(x, rnd.random() < (0.4 if vip else 0.1))
    return m


def test_precision_grows_with_samples_and_the_sampled_spread_shrinks() -> None:
    few, many = _learn(300).export(1, NOW), _learn(3_000).export(1, NOW)
    assert few.intercept_variance is not None and many.intercept_variance is not None
    assert many.intercept_variance < few.intercept_variance < 1.0
    for key in ("tier=vip", "tier=std", "amount", "tier=vip&amount"):
        assert many.variances[key] < few.variances[key] < 1.0, key
    f: Features = {"tier": "vip", "amount": 150.0}
    spread = [s.compile().sample(f, 1.0) - s.compile().sample(f, -1.0) for s in (few, many)]
    assert 0.0 < spread[1] < spread[0]


def test_a_restored_model_keeps_its_precision() -> None:
    snap = _learn(500).export(1, NOW)
    again = PropensityModel.restore(snap).export(2, NOW)
    assert again.intercept_variance is not None and snap.intercept_variance is not None
    assert abs(again.intercept_variance - snap.intercept_variance) < 1e-12
    assert again.variances.keys() == snap.variances.keys()
    assert all(abs(again.variances[k] - v) < 1e-12 for k, v in snap.variances.items())


def test_an_immature_model_explores_from_the_beta_posterior_of_its_rate() -> None:
    young = _snapshot(samples=50, positives=5, prior=0.1, mature=False)
    models = _models(young)
    mean = estimate(models, "offer:travel", {})
    assert (mean.propensity, mean.sampled, mean.source) == (0.1, None, "prior")
    high, low = (estimate(models, "offer:travel", {}, z).sampled for z in (2.0, -2.0))
    assert high == beta_sample(6, 46, 2.0)
    assert low is not None and high is not None and 0.0 < low < 0.1 < high < 1.0
    # No model yet: Beta(1, 1), each offer alike.
    assert estimate({}, "offer:travel", {}, 2.0).sampled == beta_sample(1, 1, 2.0)
    assert estimate({}, "offer:travel", {}).sampled is None


# -- (c) the simulation --------------------------------------------------------------------


def _simulate(rs: RuleSet, impressions: int, seed: int) -> dict[str, Any]:
    """decide -> a click drawn from the hidden probabilities -> learn, publishing every
    200 impressions: the contextual bandit; beside it a context-free Thompson bandit
    (Beta per offer) on the same visitors, and a random policy's expected regret."""
    rnd = random.Random(seed)
    learners = {r: PropensityModel(f"offer:{r.removesuffix('_offer')}") for r in OFFER_RULES}
    models: Models = {}
    regret = blind_regret = random_regret = 0.0
    blind = {r: [0, 0] for r in OFFER_RULES}  # positives, samples
    late: dict[str, list[bool]] = {"vip": [], "standard": []}
    explored = slots = 0
    for i in range(impressions):
        tier = "vip" if rnd.random() < 0.5 else "standard"
        now = NOW + i * 1000
        plan = _decide(rs, _input(i, tier, now), now, models)
        slots += plan.slots
        explored += plan.explored
        chosen = _hero(plan).rule
        best = TRUTH[tier, BEST[tier]]
        regret += best - TRUTH[tier, chosen]
        random_regret += best - sum(TRUTH[tier, r] for r in OFFER_RULES) / 2
        if i >= impressions - 1_000:
            late[tier].append(chosen == BEST[tier])
        clicked = rnd.random() < TRUTH[tier, chosen]
        learners[chosen].learn(plan.features, clicked)
        # The context-free bandit: one Beta per offer, the same kind of draw.
        pick = max(
            OFFER_RULES,
            key=lambda r: beta_sample(
                blind[r][0] + 1, blind[r][1] - blind[r][0] + 1, rnd.gauss(0, 1)
            ),
        )
        blind_regret += best - TRUTH[tier, pick]
        blind[pick][1] += 1
        blind[pick][0] += rnd.random() < TRUTH[tier, pick]
        if (i + 1) % 200 == 0:
            snaps = [m.export(i + 1, now) for m in learners.values() if m.samples]
            models = _models(*snaps)
    return {
        "regret": regret,
        "blind_regret": blind_regret,
        "random_regret": random_regret,
        "late_best_share": {t: sum(v) / len(v) for t, v in late.items()},
        "explored_share": explored / slots,
        "mature": {name: m.snapshot.mature for name, m in models.items()},
    }


def test_the_contextual_bandit_learns_each_segment_s_best_offer(tmp_path: Path) -> None:
    r = _simulate(_rules(tmp_path), 4_000, seed=11)
    assert all(r["mature"].values())
    assert r["regret"] <= 0.5 * r["random_regret"]
    assert r["regret"] < r["blind_regret"]  # the segment is what a blind bandit cannot see
    # At the end both segments get their own best offer (a single best offer for all
    # would be wrong for one of them half the time).
    assert r["late_best_share"]["vip"] >= 0.7
    assert r["late_best_share"]["standard"] >= 0.7
    assert 0.0 < r["explored_share"] < 0.5


# -- (d) replay determinism, (e) the factors ----------------------------------------------


def _learned_models(tmp_path: Path, samples: int = 600) -> tuple[RuleSet, Models]:
    rs = _rules(tmp_path)
    rnd = random.Random(5)
    learners = {r: PropensityModel(f"offer:{r.removesuffix('_offer')}") for r in OFFER_RULES}
    learners["mail_me"] = PropensityModel("callback:mail_me")
    for i in range(samples):
        tier = "vip" if i % 2 else "standard"
        plan = _decide(rs, _input(i, tier, NOW + i * 1000), NOW + i * 1000, {})
        for name, m in learners.items():
            m.learn(plan.features, rnd.random() < TRUTH.get((tier, name), 0.2))
    return rs, _models(*(m.export(1, NOW) for m in learners.values()))


def test_the_same_inputs_give_the_same_sampled_choice(tmp_path: Path) -> None:
    rs, models = _learned_models(tmp_path)
    inp = _input(1, "vip", NOW + 1_234)
    first, again = (_decide(rs, inp, NOW + 1_234, models) for _ in range(2))
    assert _hero(first) == _hero(again)
    assert _hero(first).factors["sampled"] == _hero(again).factors["sampled"]
    # Within the page-offer window the draw is the same; the next window draws afresh.
    window = OFFER_DECISION_WINDOW_MS
    start = NOW + 1_234 - (NOW + 1_234) % window
    assert _hero(_decide(rs, inp, start + window - 1, models)).factors == _hero(first).factors
    later = _hero(_decide(rs, inp, start + window, models))
    assert later.factors["sampled"] != _hero(first).factors["sampled"]
    assert later.factors["propensity"] == _hero(first).factors["propensity"]


def test_propensity_is_the_posterior_mean_and_sampled_is_the_draw(tmp_path: Path) -> None:
    rs, models = _learned_models(tmp_path)
    now = NOW + 7_000
    plan = _decide(rs, _input(7, "standard", now), now, models)
    hero = _hero(plan)
    name = hero.model["name"]
    z = exploration_draw(KEY, "cust-7", now, hero.rule)
    mean = estimate(models, name, plan.features)
    drawn = estimate(models, name, plan.features, z)
    assert hero.model["source"] == "model"
    assert hero.factors["propensity"] == mean.propensity == drawn.propensity
    assert hero.factors["sampled"] == drawn.sampled != mean.propensity
    assert hero.factors["score"] == hero.factors["propensity"] * 100.0  # the mean's
    # The contact ranks by its mean and carries no draw: calls are not explored.
    contact = plan.contacts[0].decision
    assert contact.model["source"] == "model"
    assert "sampled" not in contact.factors


def test_an_explored_slot_is_counted_when_the_draw_overturns_the_mean(tmp_path: Path) -> None:
    rs, models = _learned_models(tmp_path, samples=120)  # young: the posteriors overlap
    plans = [
        _decide(rs, _input(i, "vip", NOW + i * 1000), NOW + i * 1000, models) for i in range(300)
    ]
    assert all(p.slots == 1 for p in plans)
    for p in plans:
        hero = _hero(p)
        others = [
            estimate(models, f"offer:{r.removesuffix('_offer')}", p.features).propensity
            for r in OFFER_RULES
            if r != hero.rule
        ]
        assert p.explored == int(hero.factors["propensity"] < max(others))
    assert 0 < sum(p.explored for p in plans) < 300


async def test_the_live_engine_counts_offer_slots_and_the_explored_ones(
    make_engine: Any, settings: Any, tmp_path: Path
) -> None:
    """Two published offer models, the saver's mean a little lower and both very
    uncertain: the saver wins some draws, and each such slot counts as explored."""
    offers_only = PACK.split("  - id: mail_me")[0]
    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, offers_only))
    )
    store = engine.extra["app"][STORE]
    uncertain = {"intercept_variance": 4.0, "weights": {}, "crosses": [], "scale": {}}
    await publish(store, _snapshot(name="offer:travel", intercept=0.0, **uncertain))
    await publish(store, _snapshot(name="offer:saver", intercept=-0.2, **uncertain))
    registry = engine.extra["app"][MODELS]
    for _ in range(200):  # the registry polls every second; wait for it, not a fixed time
        if {"offer:travel", "offer:saver"} <= set(registry.current):
            break
        await asyncio.sleep(0.05)
    heroes = []
    for _ in range(20):
        status, body, _ = await engine.post_events(engine.batch([event("page_view", page="/")]))
        assert status == 200
        heroes.append(next(d for d in body["decisions"] if d.get("slot") == "hero"))
    means = {"travel_offer": 0.5, "saver_offer": 1.0 / (1.0 + math.exp(0.2))}
    assert all(abs(h["factors"]["propensity"] - means[h["rule"]]) < 1e-12 for h in heroes)
    # As Prometheus reads them: the counts are kept locally until the scrape.
    async with aiohttp.ClientSession() as s, s.get(f"{engine.url}/metrics") as r:
        assert r.status == 200
        scraped = {
            sample.name: sample.value
            for family in text_string_to_metric_families(await r.text())
            for sample in family.samples
        }
    assert scraped["ringback_offer_slots_total"] == 20
    explored = sum(h["rule"] == "saver_offer" for h in heroes)
    assert scraped["ringback_offer_explored_total"] == explored
    assert 0 < explored < 20
