"""Model snapshots and hot-path scoring (engine/models), against a real valkey-server.

The scorer is checked against the contract of issue 11 written out directly (weight
keys built as strings, as the learner's pipeline names them) on generated snapshots
and feature dicts; the registry through real publishes, polls and a broken snapshot;
`GET /v1/models` through a real engine.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec
import pytest
from conftest import EngineClient, StoreTarget
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from engine.core.metrics import Metrics
from engine.http.answers import ModelsAnswer
from engine.http.state import MODELS
from engine.learning.model import transform
from engine.models.registry import ModelRegistry, publish
from engine.models.snapshot import Z_CLIP, Snapshot, decode, encode
from engine.valkey import keys
from engine.valkey.store import Store

# -- the contract, written out ----------------------------------------------------------


def reference(snap: Snapshot, feats: Mapping[str, float | str]) -> float:
    """Issue 11's transform, as plainly as it reads."""

    def z(name: str, x: float) -> float:
        mean, std = snap.scale.get(name, (0.0, 0.0))
        return max(-Z_CLIP, min(Z_CLIP, (x - mean) / std)) if std != 0 else 0.0

    terms: list[tuple[str, float]] = []
    for name, v in feats.items():
        if isinstance(v, str):
            terms.append((f"{name}={v}", 1.0))
        else:
            terms.append((name, z(name, v)))
    for a, b in snap.crosses:
        if a not in feats or b not in feats:
            continue
        va, vb = feats[a], feats[b]
        if isinstance(va, str) and isinstance(vb, str):
            terms.append((f"{a}={va}&{b}={vb}", 1.0))
        elif isinstance(va, str):
            terms.append((f"{a}={va}&{b}", z(b, float(vb))))
        elif isinstance(vb, str):
            terms.append((f"{a}&{b}={vb}", z(a, va)))
        else:
            terms.append((f"{a}&{b}", z(a, va) * z(b, vb)))
    total = snap.intercept + sum(snap.weights.get(k, 0.0) * v for k, v in terms)
    return 1.0 / (1.0 + math.exp(-total)) if total >= 0 else math.exp(total) / (1 + math.exp(total))


# Few names and values, so generated weights and features meet; values holding "&" and
# "=" make weight keys that read more than one way.
NAMES = ("tier", "amount", "hour", "campaign", "dwell_s")
VALUES = ("vip", "std", "a&hour=x", "k=v", "")
numbers = st.floats(-1e4, 1e4, allow_nan=False)
feature_values = st.one_of(numbers, st.sampled_from(VALUES))


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    scale = draw(
        st.dictionaries(
            st.sampled_from(NAMES),
            st.tuples(st.floats(-100, 100), st.one_of(st.just(0.0), st.floats(0.1, 500))),
            min_size=2,
        )
    )
    crosses = draw(
        st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES)), min_size=1, max_size=6)
    )

    def side(name: str) -> st.SearchStrategy[str]:
        return st.one_of(st.just(name), st.sampled_from([f"{name}={v}" for v in VALUES]))

    # Keys of every shape, each kind drawn on its own so that every kind shows up:
    # numeric features, categorical ones, the crosses' own keys (all four kinds), any
    # pair of sides, noise.
    w = st.floats(-3, 3)
    any_side = st.sampled_from(NAMES).flatmap(side)
    cross_keys = [st.builds(lambda x, y: f"{x}&{y}", side(a), side(b)) for a, b in crosses]
    weights: dict[str, float] = {}
    for keys_ in (
        st.sampled_from(NAMES),
        st.sampled_from([f"{n}={v}" for n in NAMES for v in VALUES]),
        st.one_of(*cross_keys),
        st.builds(lambda x, y: f"{x}&{y}", any_side, any_side),
        st.text(alphabet="ab=&_", max_size=8),
    ):
        weights.update(draw(st.dictionaries(keys_, w, max_size=12)))
    return Snapshot(
        name="offer:gen",
        version=draw(st.integers(1, 10**6)),
        created_ms=draw(st.integers(0, 2**45)),
        samples=500,
        positives=50,
        auc=draw(st.one_of(st.none(), st.floats(0, 1))),
        log_loss=draw(st.one_of(st.none(), st.floats(0, 5))),
        mature=True,
        prior=0.1,
        intercept=draw(st.floats(-3, 3)),
        scale=scale,
        crosses=crosses,
        weights=weights,
    )


_PROPERTY = settings(
    max_examples=120,  # every cross kind and the fallback path are reached well before
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def snap(name: str = "callback:mortgage_call", version: int = 1, **kw: Any) -> Snapshot:
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "created_ms": 1_764_650_000_000 + version,
        "samples": 5123,
        "positives": 800,
        "auc": 0.71,
        "log_loss": 0.41,
        "mature": True,
        "prior": 0.156,
        "intercept": -1.2,
        "scale": {"calc_mortgage_amount": (250_000.0, 100_000.0)},
        "crosses": [("value_tier", "calc_mortgage_amount")],
        "weights": {
            "calc_mortgage_amount": 0.3,
            "value_tier=vip": 0.8,
            "value_tier=vip&calc_mortgage_amount": 0.1,
        },
    }
    fields.update(kw)
    return Snapshot(**fields)


# -- snapshot and scorer ----------------------------------------------------------------


def test_a_snapshot_round_trips_through_its_json_exactly() -> None:
    s = snap(auc=None)
    data = encode(s)
    assert decode(data) == s
    as_json = msgspec.json.decode(data)
    assert as_json["scale"] == {"calc_mortgage_amount": [250_000.0, 100_000.0]}
    assert as_json["crosses"] == [["value_tier", "calc_mortgage_amount"]]
    assert as_json["auc"] is None


def test_a_snapshot_that_is_not_one_is_refused() -> None:
    for bad in (b"{", b"{}", b'{"name": 1}', encode(snap())[:-1], b"\x80\x04pickle"):
        with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
            decode(bad)


@seed(20_251_202)
@_PROPERTY
@given(snapshots(), st.dictionaries(st.sampled_from(NAMES), feature_values))
def test_the_scorer_equals_the_contract_on_any_snapshot_and_features(
    s: Snapshot, feats: dict[str, float | str]
) -> None:
    scorer = decode(encode(s)).compile()
    assert scorer.predict(feats) == pytest.approx(reference(s, feats), abs=1e-9)


def test_the_scorer_scores_the_contract_example() -> None:
    s = snap()
    feats: dict[str, float | str] = {"calc_mortgage_amount": 450_000.0, "value_tier": "vip"}
    # z = 2: -1.2 + 0.3 * 2 + 0.8 + 0.1 * 2
    assert s.compile().predict(feats) == pytest.approx(1 / (1 + math.exp(-0.4)), abs=1e-12)
    assert s.compile().predict({}) == pytest.approx(1 / (1 + math.exp(1.2)), abs=1e-12)


def test_a_value_far_outside_what_the_model_learnt_moves_it_at_most_z_clip_deviations() -> None:
    """Trained within one hour, `hour`'s spread is tiny: the next hours are dozens of
    deviations away. Their z is clipped, so the model says 'later than I know' with
    the weight of Z_CLIP deviations, not of hundreds."""
    s = snap(scale={"hour": (10.0, 0.05)}, crosses=[], weights={"hour": 1.0}, intercept=0.0)
    scorer = s.compile()
    at_23 = scorer.predict({"hour": 23.0})  # z = 260 without the clip
    assert at_23 == pytest.approx(1 / (1 + math.exp(-Z_CLIP)), abs=1e-12)
    assert scorer.predict({"hour": 10.1}) == pytest.approx(1 / (1 + math.exp(-2.0)))
    # The learner's transform says the same (what it learns on is what is scored).
    assert transform({"hour": 23.0}, {"hour": 10.0}, {"hour": 0.0025}, []) == {"hour": Z_CLIP}
    # And the posterior draw's variance stays bounded too.
    assert scorer.sample({"hour": 23.0}, 1.0) < 1.0


def test_a_value_of_the_unexpected_kind_scores_as_the_contract_says() -> None:
    # The weights say `amount` is numeric; a string there is a categorical after all.
    s = snap(
        scale={"amount": (10.0, 2.0)},
        crosses=[("amount", "tier")],
        weights={"amount": 1.0, "amount=high": 2.0, "amount&tier=vip": 0.5},
    )
    for feats in (
        {"amount": "high", "tier": "vip"},
        {"amount": 14.0, "tier": "vip"},
        {"amount": 14.0, "tier": 3.0},
    ):
        assert s.compile().predict(feats) == pytest.approx(reference(s, feats), abs=1e-12)


def test_values_holding_the_separators_score_as_their_joined_key() -> None:
    # "tier=a&hour=x&hour=vip" is tier="a&hour=x" with hour="vip", and also tier="a"
    # with hour="x&hour=vip": the contract looks the string up, so both must score.
    s = snap(
        scale={},
        crosses=[("tier", "hour")],
        weights={"tier=a&hour=x&hour=vip": 1.5, "tier=a=b": 0.25},
    )
    for feats in (
        {"tier": "a&hour=x", "hour": "vip"},
        {"tier": "a", "hour": "x&hour=vip"},
        {"tier": "a=b"},
    ):
        assert s.compile().predict(feats) == pytest.approx(reference(s, feats), abs=1e-12)
        assert s.compile().predict(feats) > 1 / (1 + math.exp(1.2))  # its weight counted


# -- registry -----------------------------------------------------------------------


@pytest.fixture
async def store(store_target: StoreTarget, redis: Any) -> AsyncIterator[Store]:
    s = store_target.store()
    yield s
    await s.close()


@pytest.fixture
async def registry(store: Store) -> AsyncIterator[ModelRegistry]:
    r = ModelRegistry(store, Metrics(), poll_s=0.02)
    r.start()
    yield r
    await r.stop()


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for `condition` (polled); the deadline is only a hang guard."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def _version(registry: ModelRegistry, name: str) -> int | None:
    model = registry.current.get(name)
    return model.snapshot.version if model is not None else None


def _failures(registry: ModelRegistry) -> float:
    assert registry.metrics is not None
    value = registry.metrics.registry.get_sample_value(
        "ringback_background_task_failures_total", {"task": "model_registry"}
    )
    return value or 0.0


async def test_publish_writes_the_snapshot_then_its_version_in_the_index(
    store: Store, redis: Any
) -> None:
    s = snap(version=7)
    await publish(store, s)
    assert await redis.hgetall(keys.MODEL_INDEX) == {s.name: "7"}
    assert decode(await redis.get(keys.model_snapshot(s.name))) == s
    assert keys.key_slot(keys.MODEL_INDEX) == keys.key_slot(keys.model_snapshot(s.name))


async def test_the_registry_picks_up_each_newly_published_version(
    store: Store, registry: ModelRegistry
) -> None:
    name = "callback:mortgage_call"
    await publish(store, snap(name, 1))
    await until(lambda: _version(registry, name) == 1)
    before = registry.current
    await publish(store, snap(name, 2, intercept=0.5))
    await until(lambda: _version(registry, name) == 2)
    assert before[name].snapshot.version == 1  # swapped whole, never mutated in place
    est = registry.estimate(name, {})
    assert (est.version, est.source, est.mature) == (2, "model", True)
    assert est.propensity == pytest.approx(1 / (1 + math.exp(-0.5)))
    assert registry.metrics is not None
    sample = registry.metrics.registry.get_sample_value
    assert sample("ringback_model_auc", {"model": name}) == pytest.approx(0.71)
    assert sample("ringback_model_log_loss", {"model": name}) == pytest.approx(0.41)
    assert sample("ringback_model_samples", {"model": name}) == 5123


async def test_a_broken_snapshot_is_refused_and_the_previous_version_keeps_serving(
    store: Store, registry: ModelRegistry, redis: Any
) -> None:
    name = "offer:cards_upgrade"
    await publish(store, snap(name, 1))
    await until(lambda: _version(registry, name) == 1)
    failures = _failures(registry)
    await redis.set(keys.model_snapshot(name), '{"name": "offer:cards_upgrade", "version": ')
    await redis.hset(keys.MODEL_INDEX, name, 2)
    await until(lambda: _failures(registry) > failures)
    assert _version(registry, name) == 1
    assert registry.estimate(name, {"value_tier": "vip"}).source == "model"
    await publish(store, snap(name, 3))  # the learner's next publish heals it
    await until(lambda: _version(registry, name) == 3)


async def test_an_immature_model_gives_its_prior_and_a_missing_one_gives_one(
    store: Store, registry: ModelRegistry
) -> None:
    await publish(store, snap("offer:young", 4, samples=50, positives=6, mature=False, prior=0.12))
    await until(lambda: _version(registry, "offer:young") == 4)
    young = registry.estimate("offer:young", {"value_tier": "vip"})
    assert (young.propensity, young.source, young.mature, young.version) == (
        0.12,
        "prior",
        False,
        4,
    )
    none = registry.estimate("offer:never_published", {"value_tier": "vip"})
    assert (none.propensity, none.source, none.version) == (1.0, "none", None)


async def test_a_model_removed_from_the_index_stops_being_served(
    store: Store, registry: ModelRegistry, redis: Any
) -> None:
    await publish(store, snap("offer:a", 1))
    await publish(store, snap("offer:b", 1))
    await until(lambda: set(registry.current) == {"offer:a", "offer:b"})
    await redis.hdel(keys.MODEL_INDEX, "offer:a")
    await until(lambda: set(registry.current) == {"offer:b"})
    assert registry.estimate("offer:a", {}).source == "none"


# -- GET /v1/models -------------------------------------------------------------------


async def test_models_endpoint_needs_the_api_token_and_lists_published_models(
    engine: EngineClient, store_target: StoreTarget
) -> None:
    status, body = await engine.get_json("/v1/models")
    assert status == 401 and body["error"]["code"] == "missing_credentials"
    store = store_target.store()
    try:
        await publish(store, snap("callback:mortgage_call", 3))
        await publish(store, snap("offer:young", 1, mature=False, auc=None, prior=0.05))
    finally:
        await store.close()
    await engine.extra["app"][MODELS].refresh()  # rather than wait for the next poll
    async with engine.session.get(f"{engine.url}/v1/models", headers=engine.api_headers) as r:
        assert r.status == 200
        body = await r.json()
    msgspec.convert(body, ModelsAnswer)  # exactly the declared answer
    assert [m["name"] for m in body["models"]] == ["callback:mortgage_call", "offer:young"]
    first, young = body["models"]
    assert first == {
        "name": "callback:mortgage_call",
        "version": 3,
        "samples": 5123,
        "positives": 800,
        "auc": 0.71,
        "log_loss": 0.41,
        "mature": True,
        "prior": 0.156,
        "updated_at": 1_764_650_000_003,
    }
    assert (young["mature"], young["auc"], young["prior"]) == (False, None, 0.05)
