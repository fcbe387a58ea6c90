"""The event loop's lateness is measured: an operator can tell a worker whose loop is
held up (more workers or cores) from one waiting on Valkey or the network."""

from __future__ import annotations

import asyncio
import time

from engine.cli.runtime import LoopLagRecorder
from engine.core.metrics import Metrics


def _lag(metrics: Metrics, sample: str, le: str | None = None) -> float:
    labels = {"le": le} if le is not None else {}
    value = metrics.registry.get_sample_value(f"ringback_event_loop_lag_seconds_{sample}", labels)
    return value or 0.0


async def test_a_loop_held_up_for_400_ms_shows_as_lag_and_an_idle_one_does_not() -> None:
    metrics = Metrics()
    recorder = LoopLagRecorder(metrics, interval_s=0.05)
    recorder.start()
    try:
        await asyncio.sleep(0.3)  # idle: every timer runs about on time
        idle = _lag(metrics, "count")
        assert idle >= 3
        # On time, but for at most one timer (a shared CI box may deschedule us once).
        assert _lag(metrics, "bucket", "0.1") >= idle - 1
        # What a long callback does to every request of the worker: hold the loop.
        time.sleep(0.4)  # noqa: ASYNC251
        await asyncio.sleep(0.15)
    finally:
        recorder.stop()
    total = _lag(metrics, "count")
    assert total > idle
    # The timer due during the hold (every 50 ms) ran 350-400 ms late.
    assert _lag(metrics, "bucket", "0.25") < total
    assert _lag(metrics, "sum") > 0.25
    stopped = _lag(metrics, "count")
    await asyncio.sleep(0.15)
    assert _lag(metrics, "count") == stopped  # stop() ends the timer
