"""benchmarks/learning_bench.py at a tiny size: the engine's learner learns the synthetic
bank population (a sanity check of learning, not a timing), and the compiled snapshot
scores exactly as the learner predicts."""

from __future__ import annotations

import itertools
import random

from benchmarks.learning_bench import auc, population, run, vw_line, vw_namespaces
from engine.decisions.features import CROSSES


def test_engine_learner_beats_a_constant_predictor_on_the_interaction_population() -> None:
    r = run(1_500, seed=1, test_size=1_000, vw=False, linear=False, tuned_lr=None)
    engine = r["learners"]["engine (PropensityModel)"]
    oracle = r["learners"]["oracle (p_true)"]
    # A constant predictor scores 0.5; the population has signal for the oracle to find.
    assert oracle["test_auc"] > 0.65
    assert engine["test_auc"] > 0.57
    assert engine["progressive_auc"] > 0.55


def test_compiled_snapshot_agrees_with_the_learner_on_the_test_set() -> None:
    r = run(1_500, seed=2, test_size=500, vw=False, linear=False, tuned_lr=None)
    assert r["agreement"] <= 1e-6
    learner = r["learners"]["engine (PropensityModel)"]
    snapshot = r["learners"]["engine snapshot (compiled Scorer)"]
    assert abs(learner["test_auc"] - snapshot["test_auc"]) <= 1e-9


def test_population_features_come_from_the_engine_with_the_crossed_names() -> None:
    xs, ps, ys = population(300, seed=3)
    names = set().union(*xs)
    for a, b in CROSSES:
        assert a in names and b in names, (a, b)
    assert all(0.0 < p < 1.0 for p in ps)
    assert 0 < sum(ys) < len(ys)


def test_auc_equals_the_pairwise_definition_with_ties() -> None:
    rnd = random.Random(5)
    ys = [rnd.random() < 0.3 for _ in range(60)]
    ps = [rnd.choice((0.1, 0.2, 0.2, 0.5, 0.9)) for _ in ys]
    pos = [p for p, y in zip(ps, ys, strict=True) if y]
    neg = [p for p, y in zip(ps, ys, strict=True) if not y]
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, b in itertools.product(pos, neg)]
    assert abs(auc(ys, ps) - sum(pairs) / len(pairs)) < 1e-12


def test_vw_line_puts_each_crossed_feature_in_its_own_namespace() -> None:
    spaces = vw_namespaces([("value_tier", "calc_mortgage_amount"), ("weekday", "hour")])
    line = vw_line(
        {"value_tier": "vip", "calc_mortgage_amount": 250000.0, "hour": 9.0, "branch": "north"},
        spaces,
        True,
    )
    assert line == "1 |a value_tier=vip |b calc_mortgage_amount:250000 |d hour:9 |z branch=north"
