"""Rule hits are counted on the hot path in plain ints and added to
`ringback_rule_hits_total` at most once a second, and always before /metrics renders,
so a scrape is never behind what was decided."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import StoreTarget

from engine.core.metrics import Metrics, render_metrics
from engine.decisions.inputs import DecisionInput
from engine.decisions.loader import load_rules
from engine.delivery.executor import RulesDecider
from engine.ingest.schema import PageViewEvent
from engine.valkey.store import Store

PACK = """
offers:
  - {id: o, title: Offer, product: mortgage, value: 100, channels: [web]}
rules:
  - id: browsing
    when: profile.counts.page_view >= 1
    action: {type: offer, offer: o, slot: hero}
"""


@pytest.fixture
async def store(redis: Any, store_target: StoreTarget) -> AsyncIterator[Store]:
    s = store_target.store()
    yield s
    await s.close()


def _input(i: int) -> DecisionInput:
    now = int(time.time() * 1000)
    return DecisionInput(
        site="demo-bank",
        anonymous_id=f"anon-metrics-{i}",
        customer_id=None,
        profile={"counts": {"page_view": 2}},
        customer={},
        events=[PageViewEvent(id=f"e{i}", ts=now, page="/mortgages")],
        now_ms=now,
    )


async def test_every_hit_is_in_the_next_scrape(store: Store, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PACK)
    rules = load_rules(tmp_path)
    metrics = Metrics()
    decider = RulesDecider(lambda: rules, store, metrics, lambda page: "mortgage")
    for i in range(3):  # well within a second: none is counted yet
        await decider.decide(_input(i))
    assert metrics.rule_hits.labels("browsing")._value.get() < 3  # still held locally
    text = render_metrics(metrics).decode()
    assert 'ringback_rule_hits_total{rule="browsing"} 3.0' in text


async def test_a_worker_that_goes_quiet_still_counts_its_hits(store: Store, tmp_path: Path) -> None:
    """Another worker's /metrics reads this worker's counters (multiprocess): hits must
    not wait for this worker's next decision or scrape."""
    import asyncio

    (tmp_path / "p.yaml").write_text(PACK)
    rules = load_rules(tmp_path)
    metrics = Metrics()
    decider = RulesDecider(lambda: rules, store, metrics, lambda page: "mortgage")
    for i in range(3):
        await decider.decide(_input(100 + i))
    deadline = time.monotonic() + 5.0
    while metrics.rule_hits.labels("browsing")._value.get() < 3:
        assert time.monotonic() < deadline, "hits still held after the worker went quiet"
        await asyncio.sleep(0.05)
