"""`ringback simulate --population`: a bank population with hidden response probabilities
drives a real engine through its public API, and what it did is there to learn from."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from conftest import EngineClient, write_pack

from engine.cli.population import simulate_population
from engine.core.metrics import Metrics
from engine.core.settings import Settings
from engine.delivery.records import read_audit
from engine.http.state import STORE
from engine.learning.learner import NEGATIVE, POSITIVE, Learner
from engine.valkey import keys, streams

PACK = """
offers:
  - {id: mortgage_offer, title: Mortgages, product: mortgage, value: 100, channels: [web]}
  - {id: card_offer, title: Cards, product: cards, value: 100, channels: [web]}
  - {id: mortgage_call, title: Adviser call, product: mortgage, value: 900,
     channels: [web, callback]}
rules:
  - id: mortgage_hero
    when: profile.intent.mortgage >= 1
    action: {type: offer, offer: mortgage_offer, slot: hero}
  - id: cards_side
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: card_offer, slot: side}
  - id: mortgage_callback
    when: profile.calc.mortgage.count >= 2
    action: {type: callback, offer: mortgage_call, channel: callback}
"""


async def _outcomes(redis: aioredis.Redis) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for shard in range(keys.TRIGGER_SHARDS):
        entries: Any = await redis.xrange(keys.outcome_stream(shard))
        out += [streams.decode_fields(fields) for _, fields in entries]
    return out


def _auc(scored: list[tuple[float, bool]]) -> float:
    """Probability a random positive outranks a random negative (ties count half)."""
    pos = [p for p, y in scored if y]
    neg = [p for p, y in scored if not y]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.slow
async def test_population_clicks_answers_and_converts_through_the_real_api(
    make_engine: Any, settings: Settings, tmp_path: Path, redis: aioredis.Redis
) -> None:
    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, PACK))
    )
    truth_path = tmp_path / "truth.jsonl"
    report = await simulate_population(
        engine.url,
        engine.credentials,
        40,
        # Bounded by requests, not only time: a loaded machine gets through fewer in
        # 4 s, and the AUC below is then taken on too few decisions to be stable.
        duration_s=30.0,
        max_requests=2000,
        speed=50.0,  # 1-21 simulated days: at most 0.42 s
        seed=7,
        truth_path=truth_path,
        concurrency=6,
    )

    assert report.errors == {}, report.summary()
    assert report.sessions > 20 and report.events > report.sessions
    assert report.decisions["offer"] > 0 and report.decisions["callback"] > 0
    assert report.impressions >= report.decisions["offer"] and report.clicks > 0
    assert report.conversions > 0 and report.conversions_attributed > 0
    assert report.conversions_dropped == 0
    truth = {
        line["decision_id"]: line
        for line in map(orjson.loads, truth_path.read_bytes().splitlines())
    }
    assert len(truth) == report.truth_lines
    assert {t["model"] for t in truth.values()} >= {
        "offer:card_offer",
        "callback:mortgage_callback",
    }
    assert all(0 < t["p_true"] < 1 and isinstance(t["label"], bool) for t in truth.values())

    outcomes = await _outcomes(redis)
    by_outcome: dict[str, set[str]] = {}
    for entry in outcomes:
        by_outcome.setdefault(entry["outcome"], set()).add(entry["decision_id"])
    # Every outcome names a decision the engine answered this population with, except
    # conversions that last-touch credits to a contact the engine recorded as suppressed
    # (no consent, do-not-call): those never reach the page or the contact center.
    for entry in outcomes:
        if entry["decision_id"] not in truth:
            audit = await read_audit(engine.extra["app"][STORE], entry["decision_id"])
            assert audit is not None
            assert (entry["outcome"], bool(audit.get("suppressed"))) == ("converted", True)
    clicked = {d for d, t in truth.items() if t["action"] == "offer" and t["label"]}
    assert by_outcome["clicked"] == clicked
    called = {d for d, t in truth.items() if t["action"] == "callback"}
    converted_on_call = {d for d in called if truth[d]["label"]}
    assert converted_on_call and converted_on_call <= by_outcome["converted"]
    assert by_outcome["no_answer"] | by_outcome["connected"] == called
    page_entries = [e for e in outcomes if e["outcome"] == "clicked"]
    assert all(e["by"] == "page" for e in page_entries)

    # The hidden probabilities explain what the population did.
    oracle = _auc([(t["p_true"], t["label"]) for t in truth.values()])
    assert oracle > 0.65, (oracle, sum(t["label"] for t in truth.values()))

    # And the learner learns from it (off in the suite: run it here), once per decision
    # the population was answered with (a later sale credited to a converted call is
    # not a second sample; a suppressed contact's credited sale is no sample at all).
    labelled = len(
        {e["decision_id"] for e in outcomes if e["outcome"] in POSITIVE + NEGATIVE} & set(truth)
    )
    learner = Learner(
        engine.extra["app"][STORE], Metrics(), publish_every=50, publish_interval_s=0.2
    )
    learner.start()
    try:
        deadline = time.monotonic() + 30  # only so a broken learner fails, not hangs
        while learner.learned < labelled:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    finally:
        await learner.stop()
    assert learner.learned == labelled
    published = set(await redis.hkeys(keys.MODEL_INDEX))
    assert {"offer:card_offer", "callback:mortgage_callback"} <= published


HOLDOUT_PACK = """
offers:
  - {id: savings_call, title: Savings adviser, product: savings, value: 300, channels: [callback]}
rules:
  - id: savings_call
    when: known(customer.value_tier)
    action: {type: callback, offer: savings_call, channel: callback}
    policy: {cooldown_s: 2592000}
    holdout_pct: 50
"""


@pytest.mark.slow
async def test_holdout_members_convert_organically_and_count_in_the_uplift_report(
    make_engine: Any, settings: Settings, tmp_path: Path
) -> None:
    engine: EngineClient = await make_engine(
        replace(settings, rules_dir=write_pack(tmp_path, HOLDOUT_PACK))
    )
    report = await simulate_population(
        engine.url,
        engine.credentials,
        40,
        duration_s=3.0,
        speed=50.0,
        seed=3,
        concurrency=6,
        organic=0.5,  # a standard customer signs for savings on their own half the time
        organic_products=("savings",),
        tag="holdout",
    )
    assert report.errors == {}, report.summary()
    assert report.organic > 0 and report.conversions_dropped == 0

    # Holdout members got a recorded decision and nothing: no call, no outcome.
    held: list[str] = []
    for i in range(40):
        status, body = await engine.get_json(
            f"/v1/customers/sim-holdout-{i:06d}/decisions", headers=engine.api_headers
        )
        if status == 200:
            held += [d["id"] for d in body["decisions"] if d["holdout"]]
    assert held
    status, uplift = await engine.get_json(
        "/v1/reports/uplift?rule=savings_call", headers=engine.api_headers
    )
    assert status == 200, uplift
    # A HyperLogLog cohort: two ids sharing a register (rare at this size) count as one.
    assert abs(uplift["holdout"]["decisions"] - len(held)) <= 1
    # Only organic sales can credit a decision nobody was shown or called about.
    assert 0 < uplift["holdout"]["conversions"] <= report.organic
    assert uplift["treated"]["decisions"] > 0 and uplift["uplift"] is not None


def test_simulate_help_lists_the_population_mode() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine", "simulate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--population" in out.stdout and "--truth" in out.stdout


def test_population_mode_without_credentials_says_where_it_looked(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "simulate",
            "--url",
            "http://127.0.0.1:9",
            "--population",
            "5",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "demo-credentials.json" in out.stderr and "Traceback" not in out.stderr
