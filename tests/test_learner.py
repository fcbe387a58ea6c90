"""The learner: exact export, learning from outcomes joined to audit features, one
active learner by lease with takeover that loses no outcome, `ringback learn`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import StoreTarget

from engine.core.errors import ConfigError
from engine.core.metrics import Metrics
from engine.delivery.records import write_audit
from engine.learning.learner import GROUP, Learner
from engine.learning.model import PropensityModel
from engine.models.snapshot import decode
from engine.valkey import keys, streams
from engine.valkey.store import Store

CROSSES = [("value_tier", "amount"), ("value_tier", "campaign"), ("amount", "dwell_s"),
           ("dwell_s", "campaign")]  # fmt: skip


async def until(
    cond: Callable[[], bool], timeout_s: float = 60.0, state: Callable[[], Any] = str
) -> None:
    """Wait for `cond` (a deadline only so a broken learner fails instead of hanging)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached: {state()}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def store(redis: Any, store_target: StoreTarget) -> AsyncIterator[Store]:
    s = store_target.store()
    yield s
    await s.close()


def random_features(rng: random.Random) -> dict[str, float | str]:
    x: dict[str, float | str] = {
        "value_tier": rng.choice(["vip", "std", "new"]),
        "amount": rng.choice([rng.gauss(100_000, 20_000), rng.gauss(400_000, 50_000)]),
    }
    if rng.random() < 0.8:
        x["dwell_s"] = rng.expovariate(1 / 60)
    if rng.random() < 0.7:
        x["campaign"] = rng.choice(["mail", "search", "social"])
    if rng.random() < 0.5:
        x["constant"] = 3.0  # std 0: contributes nothing, in river as in the scorer
    return x


def test_exported_snapshot_scores_exactly_as_the_river_pipeline() -> None:
    rng = random.Random(7)
    model = PropensityModel("offer:o1", CROSSES)
    worst = 0.0
    for i in range(3000):
        x = random_features(rng)
        model.learn(x, rng.random() < (0.6 if x["value_tier"] == "vip" else 0.1))
        if i % 250 == 249:
            scorer = model.export(1, 0).compile()
            for _ in range(50):
                probe = random_features(rng)
                worst = max(worst, abs(scorer.predict(probe) - model.predict_one(probe)))
    assert worst < 1e-6
    snap = model.export(3, 123)
    assert (snap.samples, snap.version, snap.mature) == (3000, 3, True)
    assert snap.prior == model.positives / 3000
    assert snap.weights and snap.scale and snap.crosses == CROSSES


def test_a_young_model_already_tells_a_strong_segment_apart() -> None:
    """Diagonal-Newton steps: 300 outcomes (30 % clicks for vip, 5 % for the rest) are
    enough to rank vip clearly above; plain SGD at its best fixed rate barely moves."""
    rng = random.Random(3)
    newton, sgd = PropensityModel("offer:o1"), PropensityModel("offer:o1", optimizer="sgd")
    for i in range(300):
        tier = "vip" if i % 3 == 0 else "standard"
        x: dict[str, float | str] = {"value_tier": tier, "hour": float(i % 24)}
        y = rng.random() < (0.30 if tier == "vip" else 0.05)
        newton.learn(x, y)
        sgd.learn(x, y)

    def gap(m: PropensityModel) -> float:
        vip = m.predict_one({"value_tier": "vip", "hour": 12.0})
        return vip - m.predict_one({"value_tier": "standard", "hour": 12.0})

    assert gap(newton) > 0.15
    # 0.16 against 0.10: the prior (PRIOR_VARIANCE) holds a young weight back a little.
    assert gap(sgd) < 0.65 * gap(newton)


def test_a_young_model_is_not_thrown_off_by_features_that_do_not_matter() -> None:
    """A request carries dozens of features and most say nothing about who clicks. An
    offer model with 300 outcomes (the offer's own campaign and three pages of intent
    matter; 20 numbers and 5 categories are noise) predicts within 0.1 of the hidden
    probability on average: the prior keeps each new weight's first steps small, so the
    noise features stay near zero instead of scattering the estimates."""
    rng = random.Random(1)

    def visitor() -> tuple[dict[str, float | str], float]:
        campaign = rng.choice(["own", "other", "another", None, None])
        pages = rng.choice([1, 2, 3])
        x: dict[str, float | str] = {"intent": float(pages), "weekday": "wed"}
        if campaign:
            x["utm_campaign"] = campaign
        x.update({f"noise_{i}": rng.gauss(0.0, 1.0) for i in range(20)})
        x.update({f"kind_{i}": rng.choice("abcd") for i in range(5)})
        if campaign == "own":
            return x, 0.5 if pages >= 3 else 0.22
        return x, 0.14 if pages >= 3 else 0.06

    model = PropensityModel("offer:o1", [("utm_campaign", "intent")])
    for _ in range(300):
        x, p = visitor()
        model.learn(x, rng.random() < p)
    probes = [visitor() for _ in range(2000)]
    error = sum(abs(model.predict_one(x) - p) for x, p in probes) / len(probes)
    assert error < 0.1, error  # 0.12 with a prior variance of 1


def test_a_model_restored_from_its_snapshot_predicts_as_before() -> None:
    rng = random.Random(3)
    model = PropensityModel("offer:o1", CROSSES)
    for _ in range(500):
        x = random_features(rng)
        model.learn(x, rng.random() < 0.3)
    restored = PropensityModel.restore(model.export(1, 0))
    probes = [random_features(rng) for _ in range(50)]
    assert max(abs(restored.predict_one(p) - model.predict_one(p)) for p in probes) < 1e-9
    assert (restored.samples, restored.positives) == (model.samples, model.positives)


# -- end to end, with a real Valkey -------------------------------------------------------


def high_group(x: dict[str, Any]) -> bool:
    return x["value_tier"] == "vip" and float(x["amount"]) > 250_000


async def write_outcomes(
    store: Store, rng: random.Random, n: int, *, extra: bool = False
) -> list[dict[str, Any]]:
    """`n` decisions of rule `mortgage_call` with audit features and a labelled outcome
    each (p 0.8 for VIPs asking for a large amount, else 0.1), recorded the way
    claims.record_outcome does. With `extra`, entries the learner must skip too."""
    written = []
    for i in range(n):
        decision_id = uuid.uuid4().hex
        x = random_features(rng)
        await write_audit(
            store,
            decision_id,
            {"id": decision_id, "rule": "mortgage_call", "action": "callback", "features": x},
        )
        positive = rng.random() < (0.8 if high_group(x) else 0.1)
        outcome = rng.choice(["converted", "applied"]) if positive else "no_answer"
        await add_outcome(store, decision_id, outcome, shard=i % keys.TRIGGER_SHARDS)
        written.append(x)
    if extra:
        await add_outcome(store, uuid.uuid4().hex, "converted", shard=1)  # no audit
        await add_outcome(store, decision_id, "connected", shard=2)  # not a label
    return written


async def add_outcome(store: Store, decision_id: str, outcome: str, shard: int) -> None:
    entry = {
        "kind": "outcome",
        "decision_id": decision_id,
        "rule": "mortgage_call",
        "channel": "callback",
        "outcome": outcome,
        "by": "agent-1",
        "ts": int(time.time() * 1000),
    }
    fields = streams.encode_fields(entry)
    await store.call("XADD", keys.outcome_stream(shard), "*", *fields, writes=True)


async def pending(store: Store) -> int:
    total = 0
    for i in range(keys.TRIGGER_SHARDS):
        summary = await store.client.xpending(keys.outcome_stream(i), GROUP)
        total += int(summary["pending"])
    return total


async def snapshot(store: Store, name: str) -> Any:
    raw = await store.call("GET", keys.model_snapshot(name))
    return decode(raw)


@pytest.mark.slow  # 4,000 outcomes through Valkey: ~8 s
async def test_learner_learns_a_combination_from_outcomes_joined_to_audit_features(
    store: Store,
) -> None:
    rng = random.Random(11)
    await write_outcomes(store, rng, 4000, extra=True)
    metrics = Metrics()
    learner = Learner(store, metrics, crosses=CROSSES, publish_every=1000, idle_s=0.05)
    started = time.perf_counter()
    learner.start()
    try:
        await until(lambda: learner.learned == 4000 and learner.acked == 4000)
        elapsed_s = time.perf_counter() - started
        await until(lambda: learner.acked == 4002)  # the skipped ones, at the next publish
    finally:
        await learner.stop()
    print(f"learner throughput: {4000 / elapsed_s:.0f} outcomes/s")
    snap = await snapshot(store, "callback:mortgage_call")
    assert snap.samples == 4000 and snap.mature
    assert snap.auc is not None and snap.auc > 0.75
    scorer = snap.compile()
    vip_high = {"value_tier": "vip", "amount": 420_000.0, "dwell_s": 60.0}
    vip_low = {"value_tier": "vip", "amount": 90_000.0, "dwell_s": 60.0}
    std_high = {"value_tier": "std", "amount": 420_000.0, "dwell_s": 60.0}
    assert scorer.predict(vip_high) > 0.5 > max(scorer.predict(vip_low), scorer.predict(std_high))
    assert await pending(store) == 0
    assert metrics.learner_skipped.labels("no_audit")._value.get() == 1
    assert metrics.learner_skipped.labels("not_a_label")._value.get() == 1
    assert await store.call("GET", keys.learner_lease()) is None  # handed on when stopped


async def test_one_learner_holds_the_lease_and_another_takes_over_without_losing_outcomes(
    store: Store, store_target: StoreTarget
) -> None:
    rng = random.Random(5)
    other = store_target.store()
    options: dict[str, Any] = {
        "crosses": CROSSES,
        "lease_ttl_ms": 600,
        "batch": 20,
        "publish_every": 100,
        "publish_interval_s": 3600.0,
        "idle_s": 0.02,
    }
    a = Learner(store, Metrics(), **options)
    b = Learner(other, Metrics(), **options)

    def counts() -> Any:
        return [(x.learned, x.acked, x.holding) for x in (a, b)]

    a.start()
    await until(lambda: a.holding, state=counts)
    b.start()
    try:
        await write_outcomes(store, rng, 100)
        # a published once (100 samples) and acked them all...
        await until(lambda: a.acked == 100, state=counts)
        await write_outcomes(store, rng, 30)
        # ...and learned 30 more it has not published: they stay pending.
        await until(lambda: a.learned == 130, state=counts)
        assert (a.holding, b.holding) == (True, False)
        assert await store.call("GET", keys.learner_lease()) == a.id
        assert await pending(store) == 30
        assert a._task is not None
        a._task.cancel()  # dies mid-stream: no publish, no ack, no release
        with contextlib.suppress(asyncio.CancelledError):
            await a._task
        await until(lambda: b.holding, state=counts)
        await write_outcomes(store, rng, 70)
        await until(lambda: b.learned == 100, state=counts)
        await b.stop()
    finally:
        await b.stop()
        await other.close()
    assert (a.learned, b.learned) == (130, 100)  # b re-learned exactly a's unpublished 30
    assert a.acked + b.acked == 200
    assert await pending(store) == 0
    snap = await snapshot(store, "callback:mortgage_call")
    assert snap.samples == 200 and snap.version == 2  # a: v1 at 100; b: v2 at 100 more


async def test_a_decision_is_learned_once_from_its_first_label(store: Store) -> None:
    """A converted call whose sale is credited to it later, twice over: one sample.
    Also across a publish, when the second label comes in a later batch."""
    metrics = Metrics()
    learner = Learner(
        store,
        metrics,
        crosses=CROSSES,
        batch=20,
        publish_every=1,
        publish_interval_s=3600.0,
        idle_s=0.02,
    )
    rng = random.Random(9)
    decision_id = uuid.uuid4().hex
    await write_audit(
        store,
        decision_id,
        {
            "id": decision_id,
            "rule": "mortgage_call",
            "action": "callback",
            "features": random_features(rng),
        },
    )
    await add_outcome(store, decision_id, "converted", shard=0)
    await add_outcome(store, decision_id, "converted", shard=0)  # the sale, credited
    learner.start()
    try:
        await until(lambda: learner.acked == 2, state=lambda: (learner.learned, learner.acked))
        await add_outcome(store, decision_id, "not_interested", shard=0)  # a later batch
        skipped = metrics.learner_skipped.labels("already_labelled")
        await until(lambda: skipped._value.get() == 2, state=lambda: skipped._value.get())
    finally:
        await learner.stop()
    assert learner.learned == 1
    snap = await snapshot(store, "callback:mortgage_call")
    assert (snap.samples, snap.positives) == (1, 1)


def test_learn_command_has_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine", "learn", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--redis" in out.stdout


async def test_serve_runs_a_learner_unless_configured_off(
    make_engine: Any, settings: Any, redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[learning] learner = true` (the default): the app's learner takes the lease.
    `RINGBACK_LEARNER=0` (set for the whole suite) keeps it off."""
    from dataclasses import replace

    import msgspec

    assert settings.learning.learner is False  # the suite's override
    monkeypatch.setenv("RINGBACK_LEARNER", "1")
    from engine.core.settings import load_settings

    assert load_settings(None, data_dir=settings.data_dir).learning.learner is True
    on = replace(settings, learning=msgspec.structs.replace(settings.learning, learner=True))
    await make_engine(on)
    for _ in range(100):  # the learner's first turn takes the lease; wait for it
        if await redis.get(keys.learner_lease()):
            break
        await asyncio.sleep(0.05)
    assert await redis.get(keys.learner_lease())
    monkeypatch.setenv("RINGBACK_LEARNER", "maybe")
    with pytest.raises(ConfigError, match="RINGBACK_LEARNER"):
        load_settings(None, data_dir=settings.data_dir)


def test_control_group_and_suppressed_decisions_never_train_a_model() -> None:
    """A holdout member's or a suppressed contact's conversion proves value (uplift)
    but nobody was shown or called: it must not teach the model who responds."""
    learner = Learner.__new__(Learner)  # only the pure learning step is exercised
    learner.models, learner.crosses, learner.model_options = {}, [], {}
    learner._dirty = set()
    entry = {"outcome": "converted", "decision_id": "d1", "rule": "r"}
    base = {"features": {"known": 1.0}, "model": {"name": "callback:r"}, "action": "callback"}
    assert learner._learn_one(entry, {**base, "holdout": True}) == "not_treated"
    assert learner._learn_one(entry, {**base, "suppressed": "cooldown_rule"}) == "not_treated"
    assert learner.models == {}
    assert learner._learn_one(entry, {**base, "holdout": False}) == ""
    assert set(learner.models) == {"callback:r"}
