"""Process tuning for a latency-sensitive worker: the garbage collector.

Measured with `benchmarks/callback_bench.py` (RESULTS.md): full (generation 2)
collections paused the event loop for 22-63 ms, ten times in 40 s at ~1,200
batches/s, and those pauses were the p99. After startup nearly every object (modules,
the rule set, the app and its routes) lives as long as the process; `gc.freeze()`
moves them out of the collector's sight, so a full collection scans only what requests
left behind (pauses in the same run: 417 ms in all, longest 63 ms -> 102 ms, 18 ms).
`ringback_gc_pause_seconds` lets operators see what is left.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from engine.metrics import Metrics

__all__ = ["freeze_startup_objects", "observe_gc_pauses"]


def freeze_startup_objects() -> None:
    """Collect once, then exempt every object alive now from future collections."""
    gc.collect()
    gc.freeze()


def observe_gc_pauses(metrics: Metrics) -> Callable[[], None]:
    """Record every collection's duration; returns the function that stops recording."""
    by_generation = [metrics.gc_pause.labels(str(g)) for g in range(3)]
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            by_generation[min(int(info.get("generation", 2)), 2)].observe(
                time.perf_counter() - started[0]
            )

    gc.callbacks.append(callback)
    return lambda: gc.callbacks.remove(callback) if callback in gc.callbacks else None
